#!/usr/bin/env bash
# bench/fl.sh — federated rounds end to end on loopback over TLS 1.3: an `aegis server` process
# and a load-generator process (crates/aegis-server/examples/fl_load.rs) holding N clients, each
# with its own TLS connection and SecAgg+ client. Reports per case: round latency (from the
# server's state.json), server CPU time per round (user+system time of the server process,
# from getrusage, over the whole job divided by the rounds), server and client-process peak RSS.
#
# Usage: bash bench/fl.sh [--quick]
#   cases: 100 clients, m = 1M, 10% dropouts, 3 rounds   (the issue's target: ≤ 2 s per round;
#                                                         Flower 1.42 SecAgg+ ≈ 15 s of server
#                                                         compute per such round, no network)
#          1000 clients, m = 10k, 10% dropouts, 2 rounds  (≥ 1000 concurrent connections)
#   --quick: 20 clients, m = 100k, 1 round; and 1000 clients, m = 1k, 1 round.
# Every client process and the server run on the same 2 cores: the latency includes every
# client's masking (n·(k+1) mask expansions of m words), which on real deployments runs on
# the clients' own machines. Stopped after $TIMEOUT seconds (default 1200).
set -euo pipefail
export LC_ALL=C
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
TIMEOUT="${TIMEOUT:-1200}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

echo "== building (release)"
cargo build --release --locked -q -p aegis-cli -p aegis-server --example fl_load
aegis="$target_dir/release/aegis"
load="$target_dir/release/examples/fl_load"

work="$(mktemp -d -t aegis-flbench.XXXXXX)"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export AEGIS_KEYSTORE=file AEGIS_KEY_FILE="$work/aegis_key.key"
"$aegis" key init >/dev/null


if [[ "${1:-}" == --quick ]]; then
  cases=("20 100000 0.1 1" "1000 1000 0.1 1")
else
  cases=("100 1000000 0.1 3" "1000 10000 0.1 2")
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
rows=()
for c in "${cases[@]}"; do
  read -r n m drop rounds <<<"$c"
  d="$work/case-$n-$m"
  mkdir -p "$d"
  echo "== $n clients, m = $m, dropout $drop, $rounds round(s): setting up"
  "$load" setup --dir "$d" --clients "$n" --params "$m"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # The server runs under a small Python wrapper that records its CPU time and peak RSS
  # (getrusage of the child) when it exits after its last round.
  python3 -c '
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1] + ".out", "w"), stderr=open(sys.argv[1] + ".err", "w"))
r = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"cpu": r.ru_utime + r.ru_stime, "maxrss_kib": r.ru_maxrss, "code": p.returncode}, open(sys.argv[1], "w"))
sys.exit(p.returncode)
' "$d/server.json" "$aegis" server --listen "127.0.0.1:$port" --pki "$d/pki" --state-dir "$d/state" \
    --job bench --rounds "$rounds" --min-clients "$n" --cohort "$n" --gather-grace 30 \
    --dropout-rate "$drop" --max-weight 1000 --model "$d/model.safetensors" \
    --stage-timeout 120 --train-timeout 120 &
  server_pid=$!
  sleep 0.5
  echo "   running"
  timeout "$TIMEOUT" "$load" run --dir "$d" --server "127.0.0.1:$port" --clients "$n" \
    --params "$m" --drop "$drop" --rounds "$rounds" >"$d/load.json" 2>"$d/load.err" || {
    echo "load generator failed:"; tail -5 "$d/load.err"; tail -5 "$d/server.json.err"; exit 1; }
  wait "$server_pid" || { echo "server failed:"; tail -5 "$d/server.json.err"; exit 1; }
  server_pid=""
  stats=$(python3 - "$d/state/jobs/bench/state.json" "$d/load.json" "$d/server.json" "$rounds" <<'PY'
import json, sys
state = json.load(open(sys.argv[1])); load = json.load(open(sys.argv[2]))
server = json.load(open(sys.argv[3]))
cpu = server["cpu"] / int(sys.argv[4])
hwm = server["maxrss_kib"] / 1024
h = state["history"]
lat = [r["seconds"] for r in h]
ok = all(r["completed"] for r in h)
surv = "/".join(f'{r["survived"]}' for r in h)
mb_in = sum(r["bytes_received"] for r in h) / len(h) / 2**20
mb_out = sum(r["bytes_sent"] for r in h) / len(h) / 2**20
ccpu = load["cpu_seconds"] / int(sys.argv[4])
n = load["clients"]
print(f'{min(lat):.2f}|{sum(lat)/len(lat):.2f}|{max(lat):.2f}|{cpu:.2f}|{surv}|{ok}|{h[0]["degree"]}/{h[0]["threshold"]}|{mb_in:.0f}|{mb_out:.0f}|{hwm:.0f}|{load["peak_rss_kib"]/1024:.0f}|{ccpu:.2f}|{1000 * ccpu / n:.0f}')
PY
)
  IFS='|' read -r lmin lmean lmax cpu surv ok kt mbin mbout shwm chwm ccpu cms <<<"$stats"
  echo "   latency min/mean/max $lmin/$lmean/$lmax s; server CPU $cpu s/round; clients CPU $ccpu s/round ($cms ms each); survivors $surv; completed: $ok"
  rows+=("| $n | $m | $drop | $kt | $surv | $lmean ($lmin–$lmax) | $cpu | $ccpu ($cms ms per client) | $mbin / $mbout | $shwm | $chwm |")
done

echo
echo "| clients | m | dropout | k/t | survivors per round | round latency s, mean (min–max) | server CPU s/round | all clients' CPU s/round | MiB in / out per round (server) | server peak RSS MiB | client process peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
