#!/usr/bin/env bash
# bench/secagg.sh — the SecAgg+ benchmark: simulated rounds of aegis-secagg (one server and n
# clients in one process) over a grid of roster sizes, vector lengths, dropout rates and
# graphs, ending in a Markdown table and the issue's target checks.
#
# Usage (from anywhere; it cd's to the repo root; extra arguments go to the example):
#   bash bench/secagg.sh                           # the full table (about 6–7 minutes here)
#   bash bench/secagg.sh --quick                   # n ≤ 100, m = 100k only (about 10 s)
#   bash bench/secagg.sh --only 500,100k,10%,complete   # one cell: n,m,dropout,graph
#   bash bench/secagg.sh --budget-gb 50            # skip cells above 50 GB of client keystream
#   TIMEOUT=3600 bash bench/secagg.sh              # hard stop after an hour instead of 30 min
#
# What it measures (crates/aegis-secagg/examples/secagg_table.rs; release build):
#   n ∈ {10, 100, 500, 1000}, m ∈ {100k, 1M}, dropout ∈ {0, 10%}, graph ∈ {SecAgg+
#   (Params::recommended, Policy::default()), complete (Bonawitz et al.)}. Dropouts go silent at
#   MaskedInputCollection after sharing keys (the expensive case for the server). Columns: k, t,
#   survivors, server time per round, client time (mean, max), bytes up per client, masked
#   upload ÷ (m·b/8), and a lower bound for the server: the mask keystream it must expand
#   ((survivors + survivor–dropped pairs) × (m+1) × 4 B) at the PRG throughput measured in the
#   same run, spread over all cores. The simulator runs the clients one at a time (each may
#   use every core), so per-client times are not inflated by other clients competing for the
#   cores; pass --parallel-clients to run them concurrently (client times under contention).
#
# Bounded in time: the simulator does every client's work too (n × (k+1) masks of m elements),
# so cells above the keystream budget (default 200 GB: this skips the complete graph at
# n = 500, m = 1M and n = 1000) or above 80% of the available memory (n = 1000, m = 1M) are
# listed as skipped. With those defaults the full table takes about 6–7 minutes after the
# build on the 2-core reference machine, of which ~3.5 minutes are the two complete-graph
# n = 500, m = 100k cells. The example prints its own estimate before it starts, and the
# whole run is stopped after $TIMEOUT seconds (default 1800).
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

TIMEOUT="${TIMEOUT:-1800}"
BUDGET_GB="${BUDGET_GB:-200}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

die() {
  echo "secagg.sh: error: $*" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }

[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT must be a positive integer (got '$TIMEOUT')"
[[ -n "${EPOCHREALTIME:-}" ]] || die "needs bash ≥ 5 (EPOCHREALTIME)"
command -v timeout >/dev/null || die "needs timeout (coreutils)"

step "build"
cargo build --release -p aegis-secagg --example secagg_table ||
  die "cargo build --release -p aegis-secagg --example secagg_table failed"
bin="$target_dir/release/examples/secagg_table"
[[ -x "$bin" ]] || die "no binary at $bin"

step "machine"
echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores"
echo "memory available: $(awk '/^MemAvailable:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "kernel $(uname -r); aegis $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+uncommitted')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

step "secagg_table $* (budget ${BUDGET_GB} GB of client keystream per cell, hard stop after ${TIMEOUT} s)"
echo "estimate: the full table takes about 6–7 minutes on 2 cores; the example prints its own plan"
echo "and estimate below, then one progress line per cell on stderr, then the table."
t0=$EPOCHREALTIME
status=0
timeout --foreground "$TIMEOUT" "$bin" --budget-gb "$BUDGET_GB" "$@" || status=$?
if ((status == 124)); then
  die "stopped after $TIMEOUT s (TIMEOUT); the progress lines above hold the cells that finished"
fi
((status == 0)) || die "secagg_table failed with status $status"
echo
echo "wall time: $(awk "BEGIN { printf \"%.0f\", $EPOCHREALTIME - $t0 }") s;" \
  "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
