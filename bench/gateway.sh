#!/usr/bin/env bash
# bench/gateway.sh — the gateway benchmark: requests/s and p99 latency of a representative
# authenticated GET over TLS 1.3 keep-alive, `GET /v1/jobs/{id}` with `Authorization: Bearer`
# (docs/api.md), against the AEGIS gateway (`aegis gateway serve`, axum over rustls) and
# against the same endpoint in the old Python system's stack, FastAPI + Uvicorn with an SSL
# context (bench/gateway_peer/app.py), on the same machine in the same run. The issue's
# target: AEGIS ≥ 10× the better FastAPI configuration's requests/s.
#
# Usage: bash bench/gateway.sh [--only fastapi|aegis]
#   DURATION=15  seconds of each measured wrk run (default 15)
#   WARMUP=3     seconds of the wrk warm-up before each measured run (default 3), not counted
#   --only fastapi   skip the AEGIS half (no cargo build; the dev PKI then comes from openssl)
#   --only aegis     skip the FastAPI half (no venv)
#   AEGIS_BIN=path   use this aegis binary instead of building target/release/aegis
#
# What runs, one server at a time, each on 127.0.0.1 with the same dev PKI (`aegis certs init`:
# ECDSA P-256 server certificate for localhost, 127.0.0.1, ::1):
#   FastAPI, uvicorn --workers 1, then --workers 2 (uvloop + httptools, --log-level warning,
#     --no-access-log, --ssl-keyfile/--ssl-certfile); token SHA-256 looked up in SQLite with
#     role, expiry and revocation checks, job + 5 rounds of history from SQLite, job JSON out.
#     Python packages: exact pins in bench/gateway_peer/requirements.txt, installed with pip
#     into target/bench-venv (reinstalled only when that file changes).
#   AEGIS: `aegis server` in queue mode + `aegis gateway serve` (see the aegis_* functions
#     below, the only place that knows the AEGIS command line), a token from
#     `aegis gateway token`, one job created with POST /v1/jobs and run to completion (5
#     rounds) by 3 `aegis client` processes whose --train-cmd returns the model unchanged, so
#     that its GET carries 5 rounds of history like the peer's; the clients are then stopped.
# For each: a check that TLS 1.3 is negotiated (openssl s_client, printed), that the endpoint
# answers 200 with the token and 401 without (or with an unknown token), then
#   wrk -t2 -c64 -d${WARMUP}s  (warm-up)  and  wrk -t2 -c64 -d${DURATION}s --latency
# over HTTPS keep-alive (wrk negotiates TLS 1.3 through OpenSSL). Reported: requests/s, p99
# latency (wrk's --latency distribution), errors (wrk's non-2xx-or-3xx responses — status ≥ 400
# — and socket errors: connect/read/write/timeout), and the CPU seconds (user + system, from
# /proc/PID/stat, summed over the server's processes: uvicorn's supervisor and workers; the
# gateway and the FL server for AEGIS) used during the measured run, also per request. wrk runs
# on the same cores as the server, as in the project's reference numbers for the peer (FastAPI
# + Uvicorn + TLS, 2 cores: ≈2,000 req/s with 1 worker, ≈4,000 with 2). The CPU that other
# processes took meanwhile (the machine's user + system time less the server's and wrk's) is
# printed per run; a row is marked † when it exceeds 5% of the machine: rerun on an idle machine.
# The two response bodies are compared (size, keys, rounds of history) after the runs.
#
# Ends with the markdown table `| server | workers | req/s | p99 ms | errors | server CPU s |`
# and `ratio AEGIS/FastAPI (best): N×` (best error-free run of each). Exits non-zero if any
# command fails (with a message naming it; the logs are then kept and their directory named)
# or if any measured run had errors. Bounded: each wrk run by -d (and `timeout`), every wait
# loop by a count; every server is stopped on exit (trap). About 1.5 minutes after the builds.
set -euo pipefail
# The whole script is one block: bash parses it before running any of it, so editing the file
# during a run (e.g. while the build goes on) cannot change what that run does.
{
export LC_ALL=C
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
ROUNDS=5  # rounds of history in both jobs
CLIENTS=3 # FL clients that run the AEGIS job's rounds
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
aegis="$target_dir/release/aegis"
peer_dir="$repo/bench/gateway_peer"
venv="$repo/target/bench-venv"
WRK=(wrk -t2 -c64)

die() {
  echo "gateway.sh: error: $*" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }

only=""
case "${1:-}" in
  "") ;;
  --only) only="${2:-}"; [[ "$only" == fastapi || "$only" == aegis ]] || die "--only fastapi|aegis" ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (usage: bash bench/gateway.sh [--only fastapi|aegis])" ;;
esac
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (got '$DURATION')"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (got '$WARMUP')"
for t in curl openssl python3 timeout ps; do
  command -v "$t" >/dev/null || die "needs $t"
done
command -v wrk >/dev/null || die "needs wrk (Debian: apt-get install -y wrk)"

work="$(mktemp -d -t aegis-gwbench.XXXXXX)"
server_pids=() # process-group leaders (each server runs in its own group), stopped on exit
wrk_pid=""     # the running wrk's `timeout`, killed on exit

# Stops the server process group led by $1: SIGTERM, up to 10 s, then SIGKILL.
stop_group() {
  local pid="$1" i
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do # until the leader has exited (a zombie until `wait`)
    [[ "$(ps -o stat= -p "$pid" 2>/dev/null || true)" =~ ^[^Z] ]] || break
    sleep 0.2
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_servers() {
  local p
  for p in "${server_pids[@]}"; do stop_group "$p"; done
  server_pids=()
}
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  local status=$?
  [[ -n "$wrk_pid" ]] && kill "$wrk_pid" 2>/dev/null
  stop_servers
  if ((status == 0)); then
    rm -rf "$work"
  else # keep the servers' logs and wrk's output (and the throwaway dev keys) for a look
    echo "gateway.sh: logs kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in its own process group (job control on for that one job: its pgid is its pid,
# so stop_group reaches uvicorn's workers too) with stdout/stderr to $log; sets started_pid.
start_server() {
  local log="$1"
  shift
  set -m
  "$@" >"$log" 2>&1 </dev/null &
  started_pid=$!
  set +m
  server_pids+=("$started_pid")
  local pgid
  pgid=$(ps -o pgid= -p "$started_pid" | tr -d ' ' || true) # empty if it has already exited
  [[ -z "$pgid" || "$pgid" == "$started_pid" ]] ||
    echo "   warning: $1 is not in its own process group; on exit only it is stopped, not its children" >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (bounded: ~30 s) until URL answers with HTTP status $3 (curl, CA $4, optional header $5);
# fails naming the server whose log is $2 if its process $6 dies first.
wait_http() {
  local url="$1" log="$2" want="$3" ca="$4" header="${5:-}" pid="$6" i code
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "server died while starting (log above: $log)"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$ca" ${header:+-H "$header"} "$url" || true)
    [[ "$code" == "$want" ]] && return 0
    sleep 0.2
  done
  tail -20 "$log" >&2
  die "$url did not answer $want within 30 s (last status '$code'; log above: $log)"
}

# Waits (bounded: ~30 s) until 127.0.0.1:$1 accepts TCP connections.
wait_port() {
  local port="$1" log="$2" pid="$3" i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "server died while starting (log above: $log)"; }
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -20 "$log" >&2
  die "nothing listens on 127.0.0.1:$port after 30 s (log above: $log)"
}

# CPU ticks (utime + stime, /proc/PID/stat) of each process given with all its descendants,
# in the order given, then their sum: "T1 T2 ... SUM".
cpu_ticks() {
  python3 - "$@" <<'PY'
import os, sys
roots, parent, ticks = sys.argv[1:], {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        continue
    parent[pid], ticks[pid] = f[1], int(f[11]) + int(f[12])
total = dict.fromkeys(roots, 0)
for pid in ticks:
    q, depth = pid, 0
    while q in parent and depth < 64:
        if q in total:
            total[q] += ticks[pid]
            break
        q, depth = parent[q], depth + 1
print(*total.values(), sum(total.values()))
PY
}
clk_tck="$(getconf CLK_TCK)"
busy_ticks() { # the machine's CPU ticks in processes (user nice system), and steal ticks
  awk '$1 == "cpu" { print $2 + $3 + $4, $9; exit }' /proc/stat
}

# Prints the protocol and cipher negotiated by openssl s_client with $1 (host:port), forced to
# TLS 1.3 and with the default negotiation (what wrk does); fails unless both are TLS 1.3.
check_tls13() {
  local hostport="$1" ca="$2" out proto
  out=$(timeout 10 openssl s_client -connect "$hostport" -servername localhost -CAfile "$ca" \
    -tls1_3 -brief </dev/null 2>&1) || { echo "$out" >&2; die "TLS 1.3 handshake with $hostport failed"; }
  echo "   openssl s_client -tls1_3: $(grep -E '^(Protocol version|Ciphersuite|Verification):' <<<"$out" | tr '\n' ' ')"
  out=$(timeout 10 openssl s_client -connect "$hostport" -servername localhost -CAfile "$ca" \
    -brief </dev/null 2>&1) || { echo "$out" >&2; die "TLS handshake with $hostport failed"; }
  proto=$(sed -n 's/^Protocol version: //p' <<<"$out")
  echo "   openssl s_client (default negotiation, as wrk): $proto"
  [[ "$proto" == TLSv1.3 ]] || die "$hostport negotiated '$proto' by default, not TLSv1.3"
}

# Checks GET $1 answers 200 with the token $2 and 401 without; saves the body in $3.
check_endpoint() {
  local url="$1" token="$2" body="$3" ca="$4" code
  code=$(curl -s -o "$body" -w '%{http_code}' --max-time 10 --cacert "$ca" -H "Authorization: Bearer $token" "$url") ||
    die "curl $url failed"
  [[ "$code" == 200 ]] || { cat "$body" >&2; echo >&2; die "GET $url with the token answered $code, not 200"; }
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$ca" "$url") || die "curl $url failed"
  [[ "$code" == 401 ]] || die "GET $url without a token answered $code, not 401"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$ca" -H "Authorization: Bearer ${token}x" "$url") ||
    die "curl $url failed"
  [[ "$code" == 401 ]] || die "GET $url with an unknown token answered $code, not 401"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$ca" -H "Authorization: Bearer $token" "${url%/*}/job-000000000000") ||
    die "curl failed"
  [[ "$code" == 404 ]] || echo "   warning: GET ${url%/*}/job-000000000000 answered $code, not 404"
  python3 - "$body" <<'PY' || die "the 200 body of $url is not a job of docs/api.md (above)"
import json, sys
j = json.load(open(sys.argv[1]))
keys = {"id", "name", "owner", "status", "created_at", "rounds_total", "rounds_done", "error", "spec", "history"}
missing = keys - set(j)
print(f"   200 with the token ({len(open(sys.argv[1], 'rb').read())} B body, status {j.get('status')}, "
      f"{len(j.get('history') or [])} rounds of history); 401 without or with an unknown token")
if missing:
    print(f"   missing keys: {sorted(missing)}", file=sys.stderr)
    sys.exit(1)
PY
}

# Runs wrk ($3...) under `timeout $1`, output to $2; in the background and waited for, so that
# a signal to this script stops it at once (cleanup kills it) instead of after -d seconds.
run_wrk() {
  local limit="$1" out="$2" status=0
  shift 2
  timeout "$limit" "${WRK[@]}" "$@" >"$out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || status=$?
  wrk_pid=""
  return "$status"
}

# Runs wrk warm-up + measured run against $2 with the token $3, server processes "${@:4}" as
# LABEL:PID (each counted with its descendants);
# appends a table row for server $1 (workers in $workers_label); sets any_errors.
rows=()
notes=()
any_errors=0
declare -A best_rps=()
bench() {
  local name="$1" url="$2" token="$3"
  shift 3
  local labels=() pids=() a
  for a in "$@"; do labels+=("${a%%:*}"); pids+=("${a#*:}"); done
  local out="$work/wrk-$name-${workers_label// /_}.txt" t0 t1 b0 b1 st0 st1 rps p99 non2xx sock cpu wrk_cpu other steal
  if ((WARMUP > 0)); then
    echo "   warm-up: wrk -t2 -c64 -d${WARMUP}s"
    run_wrk $((WARMUP + 30)) /dev/null -d"${WARMUP}s" -H "Authorization: Bearer $token" "$url" ||
      die "wrk warm-up against $url failed"
  fi
  echo "   measuring: wrk -t2 -c64 -d${DURATION}s --latency (keep-alive)"
  read -r -a t0 < <(cpu_ticks "${pids[@]}")
  read -r b0 st0 < <(busy_ticks)
  times >"$work/times0"
  run_wrk $((DURATION + 30)) "$out" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" "$url" ||
    { cat "$out" >&2; die "wrk against $url failed"; }
  times >"$work/times1"
  read -r b1 st1 < <(busy_ticks)
  read -r -a t1 < <(cpu_ticks "${pids[@]}")
  # server ticks per process tree and in all (the last element)
  local n=${#pids[@]} i split="" dt
  dt=$((t1[n] - t0[n]))
  if ((n > 1)); then
    for ((i = 0; i < n; i++)); do
      split+="${split:+ + }${labels[i]} $(awk -v t=$((t1[i] - t0[i])) -v hz="$clk_tck" 'BEGIN { printf "%.1f", t / hz }') s"
    done
    split=" = $split"
  fi
  sed 's/^/     /' "$out"
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
  p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
               m = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
               printf "%.1f", (m < 0 ? -1 : v * m) }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  non2xx=${non2xx:-0}
  sock=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
  sock=${sock:-0}
  [[ -n "$rps" && -n "$p99" && "$p99" != -1.0 ]] || die "could not parse wrk's output ($out, above)"
  cpu=$(awk -v t=$dt -v hz="$clk_tck" 'BEGIN { printf "%.1f", t / hz }')
  # Everything else that ran meanwhile (a build, another benchmark) took CPU from the server:
  # the machine's busy time (/proc/stat) less the server's and wrk's (this shell's children).
  wrk_cpu=$(awk '{ for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t[FILENAME] += a[1] * 60 + a[2] } }
                 END { print t[ARGV[2]] - t[ARGV[1]] }' \
    <(sed -n 2p "$work/times0") <(sed -n 2p "$work/times1"))
  other=$(awk -v b=$((b1 - b0)) -v s=$dt -v w="$wrk_cpu" -v hz="$clk_tck" \
    'BEGIN { o = (b - s) / hz - w; printf "%.1f", (o < 0 ? 0 : o) }')
  steal=$(awk -v t=$((st1 - st0)) -v hz="$clk_tck" 'BEGIN { printf "%.1f", t / hz }')
  local mark=""
  if awk -v o="$other" -v st="$steal" -v d="$DURATION" -v n="$(nproc)" 'BEGIN { exit !(o + st > 0.05 * d * n) }'; then
    mark=" †"
    notes+=("† $name, $workers_label: other processes (a build, tests?) used $other CPU s and the hypervisor stole $steal s of the $((DURATION * $(nproc))) CPU s the machine had during this run: its numbers may be depressed; rerun on an idle machine")
  fi
  local errors="0"
  if ((non2xx + sock > 0)); then
    any_errors=1
    errors="**$non2xx non-2xx, $sock socket**"
  fi
  local reqs us
  reqs=$(awk '/ requests in / { print $1 }' "$out")
  us=$(awk -v t=$dt -v hz="$clk_tck" -v n="${reqs:-0}" 'BEGIN { printf "%.0f", (n > 0 ? 1e6 * t / hz / n : 0) }')
  echo "   → $rps req/s, p99 $p99 ms, errors: $non2xx non-2xx/3xx, $sock socket; CPU over ${DURATION} s: server $cpu s$split ($us µs per request), wrk $wrk_cpu s, other processes $other s, steal $steal s"
  rows+=("| $name$mark | $workers_label | $rps | $p99 | $errors | $cpu |")
  if ((non2xx + sock == 0)) && ((rps > ${best_rps[$name]:-0})); then best_rps[$name]=$rps; fi
}

# ================================================================== the FastAPI peer
fastapi_venv() {
  local req="$peer_dir/requirements.txt" stamp="$venv/.aegis-requirements.sha256" want have
  if ! [[ -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    mkdir -p "$repo/target"
    python3 -m venv "$venv" || die "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
  fi
  "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    echo "   warning: the pins were resolved on CPython 3.11; this venv has $("$venv/bin/python" -V)"
  want="$( { sha256sum <"$req"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [[ "$want" != "$have" ]]; then
    echo "   pip install --no-deps -r bench/gateway_peer/requirements.txt into $venv"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps -r "$req" ||
      die "pip install -r $req failed"
    "$venv/bin/python" -m pip check --disable-pip-version-check || die "pip check failed: $req is not the full closure"
    printf '%s\n' "$want" >"$stamp"
  fi
  echo "   $("$venv/bin/python" -V); fastapi $("$venv/bin/python" -c 'import fastapi; print(fastapi.__version__)'), uvicorn $("$venv/bin/python" -c 'import uvicorn; print(uvicorn.__version__)'), uvloop $("$venv/bin/python" -c 'import uvloop; print(uvloop.__version__)'), httptools $("$venv/bin/python" -c 'import httptools; print(httptools.__version__)')"
}

fastapi_run() { # $1: number of uvicorn workers; PKI in $pki
  local workers="$1" d="$work/fastapi" port log
  mkdir -p "$d"
  if ! [[ -f "$d/peer.db" ]]; then
    { read -r peer_token && read -r peer_job; } < <("$venv/bin/python" "$peer_dir/app.py" init --db "$d/peer.db" --rounds "$ROUNDS") ||
      die "bench/gateway_peer/app.py init failed"
  fi
  port=$(free_port)
  log="$d/uvicorn-$workers.log"
  step "FastAPI + Uvicorn, $workers worker(s), https://localhost:$port"
  GATEWAY_PEER_DB="$d/peer.db" start_server "$log" "$venv/bin/uvicorn" app:app --app-dir "$peer_dir" \
    --host 127.0.0.1 --port "$port" --ssl-keyfile "$pki/server.key" --ssl-certfile "$pki/server.pem" \
    --workers "$workers" --loop uvloop --http httptools --log-level warning --no-access-log
  local pid=$started_pid
  wait_http "https://localhost:$port/healthz" "$log" 200 "$pki/ca.pem" "" "$pid"
  # with several workers, the supervisor answers once the first one is up: let all start
  ((workers > 1)) && sleep 2
  check_tls13 "127.0.0.1:$port" "$pki/ca.pem"
  local url="https://localhost:$port/v1/jobs/$peer_job"
  check_endpoint "$url" "$peer_token" "$work/fastapi-body.json" "$pki/ca.pem"
  workers_label="$workers"
  bench FastAPI "$url" "$peer_token" "uvicorn:$pid"
  stop_servers
}

# ================================================================== AEGIS
# Everything that knows the AEGIS command line is in these functions. What it relies on:
#   aegis key init                                       (AEGIS_KEYSTORE=file, AEGIS_KEY_FILE)
#   aegis certs init --dir PKI                           (ca.pem, server.pem, server.key)
#   aegis certs issue --dir PKI --admin gateway          (PKI/admins/gateway.pem: gateway → FL server)
#   aegis server --pki PKI --state-dir STATE --listen 127.0.0.1:P1 --admin-listen 127.0.0.1:P2
#                --key-file KEY                          (queue mode: jobs come from the gateway)
#   aegis gateway token --database sqlite:DIR/gw.db --role admin --name bench
#                                                        (prints the token on stdout)
#   aegis gateway serve --database sqlite:DIR/gw.db --pki PKI --listen 127.0.0.1:P3
#                       --fl-admin 127.0.0.1:P2 --mtls off  (admin cert PKI/admins/gateway.*)
#   aegis certs issue --dir PKI --client I;  aegis client --server 127.0.0.1:P1
#     --server-name localhost --pki PKI --id I --train-cmd CMD --work-dir DIR
#     (CMD: $AEGIS_GLOBAL_MODEL → $AEGIS_LOCAL_MODEL, metrics JSON → $AEGIS_METRICS)
#   GET /healthz → 200; POST /v1/jobs → 201 {"id": ...}; GET /v1/jobs/{id} → 200 job, 401 without token
aegis_build() {
  if [[ -n "${AEGIS_BIN:-}" ]]; then
    aegis="$AEGIS_BIN"
    step "AEGIS_BIN=$aegis (no build)"
    [[ -x "$aegis" ]] || die "AEGIS_BIN=$aegis is not executable"
    return
  fi
  step "build (release): cargo build --release --locked -p aegis-cli"
  cargo build --release --locked -q -p aegis-cli || die "cargo build --release --locked -p aegis-cli failed"
  [[ -x "$aegis" ]] || die "no binary at $aegis"
}

aegis_keys_and_pki() { # sets pki; the master key in $work/aegis.key
  export AEGIS_KEYSTORE=file AEGIS_KEY_FILE="$work/aegis.key"
  pki="$work/pki"
  "$aegis" key init >/dev/null || die "aegis key init failed"
  "$aegis" certs init --dir "$pki" >/dev/null || die "aegis certs init --dir $pki failed"
}

aegis_admin_cert() {
  "$aegis" certs issue --dir "$pki" --admin gateway >/dev/null ||
    die "aegis certs issue --dir $pki --admin gateway failed"
}

aegis_start_fl_server() { # sets fl_pid, fl_admin, fl_port
  local d="$work/aegis" log
  mkdir -p "$d/state"
  fl_port=$(free_port)
  fl_admin="127.0.0.1:$(free_port)"
  log="$d/server.log"
  start_server "$log" "$aegis" server --pki "$pki" --state-dir "$d/state" --listen "127.0.0.1:$fl_port" \
    --admin-listen "$fl_admin" --key-file "$AEGIS_KEY_FILE"
  fl_pid=$started_pid
  wait_port "${fl_admin##*:}" "$log" "$fl_pid"
  echo "   aegis server (queue mode): FL 127.0.0.1:$fl_port, admin $fl_admin (log $log)"
}

aegis_token() { # sets aegis_tok
  local out
  out=$("$aegis" gateway token --database "sqlite:$work/aegis/gw.db" --role admin --name bench 2>"$work/aegis/token.err") ||
    { cat "$work/aegis/token.err" >&2; die "aegis gateway token --database sqlite:$work/aegis/gw.db --role admin --name bench failed"; }
  aegis_tok=$(grep -oE 'aegis_[A-Za-z0-9_-]{43}' <<<"$out" | tail -1 || true)
  [[ -n "$aegis_tok" ]] || { echo "$out" >&2; die "aegis gateway token printed no aegis_<43 chars> token (output above)"; }
}

aegis_start_gateway() { # sets gw_pid, gw_port
  local log="$work/aegis/gateway.log"
  gw_port=$(free_port)
  start_server "$log" "$aegis" gateway serve --database "sqlite:$work/aegis/gw.db" --pki "$pki" \
    --listen "127.0.0.1:$gw_port" --fl-admin "$fl_admin" --mtls off
  gw_pid=$started_pid
  wait_http "https://localhost:$gw_port/healthz" "$log" 200 "$pki/ca.pem" "" "$gw_pid"
  echo "   aegis gateway serve: https://localhost:$gw_port (log $log)"
}

aegis_create_job() { # sets aegis_job; retries (bounded) while the FL server is not reachable yet
  local i code body="$work/aegis/create.json"
  for ((i = 0; i < 30; i++)); do
    code=$(curl -s -o "$body" -w '%{http_code}' --max-time 10 --cacert "$pki/ca.pem" \
      -H "Authorization: Bearer $aegis_tok" -H 'content-type: application/json' \
      -d "{\"name\":\"bench\",\"model\":{\"kind\":\"softmax_regression\",\"inputs\":64,\"classes\":10},\"rounds\":$ROUNDS,\"cohort_size\":$CLIENTS,\"min_clients\":$CLIENTS}" \
      "https://localhost:$gw_port/v1/jobs") || die "curl POST /v1/jobs failed"
    [[ "$code" == 502 || "$code" == 503 ]] || break
    sleep 1
  done
  [[ "$code" == 201 ]] || { cat "$body" >&2; echo >&2; die "POST /v1/jobs answered $code, not 201 (body above)"; }
  aegis_job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$body") ||
    die "POST /v1/jobs: no \"id\" in $(cat "$body")"
}

# The job's rounds, so that its GET carries the same 5 rounds of history as the peer's: $CLIENTS
# `aegis client` processes (certificates from the dev CA) whose --train-cmd hands the global
# model back unchanged. Waits (bounded: 180 s) for status completed, then stops the clients.
# Warns (the bench goes on, with a shorter body than the peer's) if the job does not complete.
aegis_run_rounds() {
  local d="$work/aegis" i pids=() status="" done_ body="$work/aegis/job.json"
  cat >"$d/train.sh" <<'SH'
cp "$AEGIS_GLOBAL_MODEL" "$AEGIS_LOCAL_MODEL" &&
  printf '{"num_examples":100,"loss":0.5,"accuracy":0.8}' >"$AEGIS_METRICS"
SH
  for ((i = 1; i <= CLIENTS; i++)); do
    "$aegis" certs issue --dir "$pki" --client "$i" >/dev/null || die "aegis certs issue --dir $pki --client $i failed"
  done
  for ((i = 1; i <= CLIENTS; i++)); do
    mkdir -p "$d/client-$i"
    start_server "$d/client-$i.log" "$aegis" client --server "127.0.0.1:$fl_port" --server-name localhost \
      --pki "$pki" --id "$i" --train-cmd "sh $d/train.sh" --work-dir "$d/client-$i"
    pids+=("$started_pid")
  done
  local end=$((SECONDS + 180))
  while ((SECONDS < end)); do
    curl -s -o "$body" --max-time 5 --cacert "$pki/ca.pem" -H "Authorization: Bearer $aegis_tok" \
      "https://localhost:$gw_port/v1/jobs/$aegis_job" || true
    read -r status done_ < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j.get("status"), j.get("rounds_done"))' "$body" 2>/dev/null || echo "? ?")
    [[ "$status" == running || "$status" == queued || "$status" == "?" ]] || break
    sleep 0.2
  done
  for i in "${pids[@]}"; do stop_group "$i"; done
  server_pids=("$fl_pid" "$gw_pid")
  if [[ "$status" == completed ]]; then
    echo "   job $aegis_job: $done_ rounds done by $CLIENTS aegis client processes (--train-cmd), status completed"
  else
    echo "   warning: job $aegis_job is '$status' after $done_ rounds (client logs: $d/client-*.log); the GET is measured anyway"
    tail -3 "$d"/client-1.log | sed 's/^/     /'
  fi
}

aegis_run() {
  step "AEGIS: aegis server (queue mode) + aegis gateway serve"
  aegis_admin_cert
  aegis_start_fl_server
  aegis_token
  aegis_start_gateway
  aegis_create_job
  aegis_run_rounds
  check_tls13 "127.0.0.1:$gw_port" "$pki/ca.pem"
  local url="https://localhost:$gw_port/v1/jobs/$aegis_job"
  check_endpoint "$url" "$aegis_tok" "$work/aegis-body.json" "$pki/ca.pem"
  workers_label="1 process"
  bench AEGIS "$url" "$aegis_tok" "gateway:$gw_pid" "FL server:$fl_pid"
  stop_servers
}

# openssl dev PKI for --only fastapi (no aegis build): same layout and key type as `aegis certs init`
openssl_pki() {
  pki="$work/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
      -days 30 -subj "/CN=AEGIS bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out server.pem \
      -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n') 2>/dev/null
  ) || die "openssl could not make the dev PKI"
}

# ================================================================== main
step "machine"
echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores; $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(openssl version)"
echo "aegis $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+uncommitted'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ "$only" != fastapi ]]; then
  aegis_build
  aegis_keys_and_pki
else
  openssl_pki
fi

if [[ "$only" != aegis ]]; then
  step "FastAPI peer: venv $venv"
  fastapi_venv
  fastapi_run 1
  fastapi_run 2
fi

if [[ "$only" != fastapi ]]; then
  aegis_run
fi

if [[ -f "$work/aegis-body.json" && -f "$work/fastapi-body.json" ]]; then
  python3 - "$work/fastapi-body.json" "$work/aegis-body.json" <<'PY'
import json, os, sys
f, a = (json.load(open(p)) for p in sys.argv[1:])
fb, ab = (os.path.getsize(p) for p in sys.argv[1:])
print(f"\nresponse bodies: FastAPI {fb} B ({len(f['history'])} rounds of history), AEGIS {ab} B ({len(a['history'])} rounds)")
if set(f) != set(a):
    print(f"warning: top-level keys differ: FastAPI only {sorted(set(f) - set(a))}, AEGIS only {sorted(set(a) - set(f))}")
if len(a["history"]) < len(f["history"]):
    print("note: the AEGIS job has less history than the peer's (no FL clients ran its rounds), so its body is smaller")
PY
fi

echo
echo "wrk -t2 -c64 -d${DURATION}s --latency, HTTPS keep-alive (TLS 1.3), same $(nproc) cores for server and wrk; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | workers | req/s | p99 ms | errors | server CPU s |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
((${#notes[@]} == 0)) || printf '%s\n' "${notes[@]}"
if [[ -n "${best_rps[AEGIS]:-}" && -n "${best_rps[FastAPI]:-}" ]]; then
  awk -v a="${best_rps[AEGIS]}" -v f="${best_rps[FastAPI]}" 'BEGIN {
    r = a / f; printf "ratio AEGIS/FastAPI (best): %.1f×\n", r
    printf "target AEGIS ≥ 10× FastAPI: %s\n", (r >= 10 ? "met" : "NOT met") }'
else
  echo "ratio AEGIS/FastAPI (best): n/a (a server was not run or had errors in every run)"
fi
((any_errors == 0)) || die "a measured run had non-2xx responses or socket errors (errors column)"
exit 0
}
