#!/usr/bin/env bash
# bench/atrest.sh — the at-rest benchmark: aegis against OpenSSL and the old Python path, in one
# run on one machine, ending in a Markdown table of throughput, ratios, peak RSS and targets.
#
# Usage (from anywhere; it cd's to the repo root; needs no input):
#   bash bench/atrest.sh
#   REPS=5 bash bench/atrest.sh                # best of 5 instead of 3 per measurement
#   BENCH_DIR=target/bench-tmp bash bench/atrest.sh   # files on disk instead of /dev/shm
#
# What it measures (GB = 10^9 bytes; throughput = plaintext bytes / wall time; best of $REPS):
#   1. Reference: OpenSSL 3 EVP AES-256-GCM, one thread pinned to CPU 0 (bench/evp_gcm.c), over
#      a 1 MiB and a 256 MiB buffer, encrypt and decrypt; no I/O. `openssl speed -evp
#      aes-256-gcm` (16 KiB blocks) is printed for information only: it reads 20–35% low here.
#   2. The old system: Python `cryptography`, whole file, the same calls as
#      tests/python/python_system.py — read it all, blob = nonce + AESGCM(key).encrypt(nonce,
#      data, None), write blob (and the reverse: read, decrypt(blob[:12], blob[12:]), write) —
#      on a 256 MiB and a 1 GiB file. Timed inside Python around read+crypt+write
#      (interpreter start and import not counted, which favours Python); peak RSS from
#      /usr/bin/time -v.
#   3. The I/O floor: `cat` of the 1 GiB file to a new file and to /dev/null — what the same
#      reads and writes cost with no cryptography at all (file→file can be no faster).
#   4. aegis (release build), each command a fresh process timed wall-clock from outside, peak
#      RSS from /usr/bin/time -v:
#        v2 (default) encrypt/decrypt of the 1 GiB file, file → file (atomic temp file, fsync,
#        rename), and `-o -` with stdout to /dev/null (no output file: the I/O-light figure);
#        each on one core (taskset -c 0, RAYON_NUM_THREADS=1) and on all cores;
#        v2 and v1 (`--format v1`, whole file in memory, as Python) of the 256 MiB file.
#      Every decrypted output is compared with the input once (untimed).
#   5. Rotation: 1000 v2 files of 4 KiB, `aegis key rotate`, then `aegis reencrypt DIR` (header
#      rewrap) timed — once in the work directory and once on disk under target/bench-tmp, where
#      the fsyncs are real.
# Targets (issue "at-rest benchmarks"): v2 ≥ 0.95× the OpenSSL single-core figure on one core
# (≥ 1.6× with both cores); v2 ≥ 2.5× Python's whole-file path; aegis v2 peak RSS ≤ 32 MiB
# whatever the file size (Python's is ≥ 2× the file); rewrap of 1000 v2 files ≤ 1 s.
#
# Notes: files live in /dev/shm when it has room (else target/bench-tmp), so "file I/O" is
# page-cache copying, not disk; the page cache is warm (inputs were just written; nothing is
# dropped — that needs privileges). The machine may be shared: the load average is printed
# before and after. Installs what is missing: apt-get libssl-dev time gcc openssl util-linux
# (root only), Python `cryptography` into the venv target/bench-venv. Builds
# `cargo build --release -p aegis-cli`. Everything it creates is removed on exit, the venv and
# the build excepted. Takes about 4 minutes after the build.
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

REPS="${REPS:-3}"
BIG_MIB=1024
SMALL_MIB=256
REWRAP_N=1000
REWRAP_KIB=4
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
venv="$repo/target/bench-venv"

die() {
  echo "atrest.sh: error: $*" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", ($1) }"; }

[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer (got '$REPS')"
[[ -n "${EPOCHREALTIME:-}" ]] || die "needs bash ≥ 5 (EPOCHREALTIME)"

# ------------------------------------------------------------------------------- dependencies
step "dependencies"
missing=()
[[ -e /usr/include/openssl/evp.h ]] || missing+=(libssl-dev)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v gcc >/dev/null || missing+=(gcc)
command -v openssl >/dev/null || missing+=(openssl)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  [[ "$(id -u)" == 0 ]] || die "missing Debian packages: ${missing[*]} (apt-get install them, or run as root)"
  echo "apt-get install ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
fi
if ! "$venv/bin/python" -c 'import cryptography' 2>/dev/null; then
  echo "creating $venv with cryptography"
  python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv?)"
  "$venv/bin/pip" install -q cryptography || die "pip install cryptography failed"
fi
py="$venv/bin/python"
echo "python $("$py" -c 'import sys, cryptography; print(sys.version.split()[0], "cryptography", cryptography.__version__)')"
openssl version

# ------------------------------------------------------------------------------------- build
step "build"
cargo build --release -p aegis-cli || die "cargo build --release -p aegis-cli failed"
aegis_bin="$target_dir/release/aegis"
[[ -x "$aegis_bin" ]] || die "no binary at $aegis_bin"

# ------------------------------------------------------------------------- work directories
need_kib=$(((3 * BIG_MIB + 4 * SMALL_MIB + 512) * 1024))
avail_kib() { df -Pk "$1" | awk 'NR == 2 { print $4 }'; }
mem_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
base="${BENCH_DIR:-}"
if [[ -z "$base" ]]; then
  # tmpfs uses RAM: leave room for Python's ~3× file-size peak besides the files.
  if [[ -d /dev/shm && -w /dev/shm ]] && (($(avail_kib /dev/shm) > need_kib)) &&
    ((mem_kib > need_kib + 4 * BIG_MIB * 1024)); then
    base=/dev/shm
  else
    base="$repo/target/bench-tmp"
  fi
fi
mkdir -p "$base" "$repo/target/bench-tmp" || die "cannot create $base"
(($(avail_kib "$base") > need_kib)) ||
  die "$base has $(($(avail_kib "$base") / 1024)) MiB free, needs $((need_kib / 1024)) MiB"
work="$(mktemp -d "$base/aegis-atrest.XXXXXX")" || die "mktemp in $base failed"
disk="$(mktemp -d "$repo/target/bench-tmp/aegis-rewrap.XXXXXX")" || die "mktemp failed"
cleanup() { rm -rf -- "$work" "$disk"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

step "machine"
echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores" \
  "($(grep -m1 -wo -e vaes /proc/cpuinfo || echo no) VAES)"
echo "kernel $(uname -r); aegis $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+uncommitted')"
echo "work dir $work ($(df -PT "$work" | awk 'NR == 2 { print $2 }')); rewrap-on-disk dir $disk"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "page cache: warm (inputs were just written; no caches are dropped)"

# --------------------------------------------------------------------------- measurement
# measure OUT CMD...: run CMD $REPS times (stdout to OUT) under /usr/bin/time -v; sets SECS
# (best wall time, seconds) and RSS_KIB (largest peak RSS).
SECS=0
RSS_KIB=0
INNER_SECS=0
# With INNER=1 in its environment, the command prints its own time (seconds) as its first
# line; the best of those goes to INNER_SECS. With RM=PATH, PATH is removed before each
# repetition, untimed (so no run pays for freeing the previous run's output).
measure() {
  local out="$1" t0 t1 dt rss r inner
  shift
  SECS=""
  INNER_SECS=""
  RSS_KIB=0
  for ((r = 0; r < REPS; r++)); do
    [[ -n "${RM:-}" ]] && rm -f -- "$RM"
    t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$work/time.txt" "$@" >"$out" 2>"$work/err.txt" || {
      cat "$work/err.txt" >&2
      die "failed: $*"
    }
    t1=$EPOCHREALTIME
    dt=$(calc "$t1 - $t0" 6)
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")
    [[ -n "$rss" ]] || die "no peak RSS from /usr/bin/time for: $*"
    if ((rss > RSS_KIB)); then RSS_KIB=$rss; fi
    if [[ -z "$SECS" ]] || (($(calc "$dt < $SECS" 0))); then SECS=$dt; fi
    if [[ "${INNER:-}" == 1 ]]; then
      inner=$(head -n 1 "$out")
      [[ "$inner" =~ ^[0-9.]+$ ]] || die "no time printed by: $*"
      if [[ -z "$INNER_SECS" ]] || (($(calc "$inner < $INNER_SECS" 0))); then INNER_SECS=$inner; fi
    fi
  done
}

# Results: one line per row, tab-separated:
#   label impl op bytes cores gbps rss_kib
results="$work/results.tsv"
: >"$results"
record() { # impl op bytes cores secs rss_kib
  local gbps
  gbps=$(calc "$3 / $5 / 1e9" 3)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$gbps" "$6" >>"$results"
  printf '  %-34s %-8s %5s MiB  %-6s %7s GB/s  %6.1f MiB peak RSS  (%.3f s)\n' \
    "$1" "$2" $(($3 >> 20)) "$4" "$gbps" "$(calc "$6 / 1024" 1)" "$5"
}

# --------------------------------------------------------------------------------- inputs
step "inputs"
big="$work/big.bin"
small="$work/small.bin"
big_bytes=$((BIG_MIB << 20))
small_bytes=$((SMALL_MIB << 20))
head -c "$big_bytes" /dev/urandom >"$big" || die "cannot write $big"
head -c "$small_bytes" "$big" >"$small"
echo "random $BIG_MIB MiB and $SMALL_MIB MiB files in $work"

# ------------------------------------------------------------------------------- OpenSSL
step "OpenSSL EVP AES-256-GCM, one core (bench/evp_gcm.c, pinned to CPU 0)"
gcc -O2 -o "$work/evp_gcm" bench/evp_gcm.c -lcrypto || die "compiling bench/evp_gcm.c failed"
declare -A EVP
for size in $((1 << 20)) $((256 << 20)); do
  out=$(taskset -c 0 "$work/evp_gcm" "$size" 1 "$REPS") || die "evp_gcm $size failed"
  while read -r _ op bytes gbps; do
    EVP[$op,$bytes]=$gbps
    printf '  EVP %-4s %4s MiB  %s GB/s\n' "$op" $((bytes >> 20)) "$gbps"
    printf 'OpenSSL EVP loop (C)\t%s\t%s\t1\t%s\t-\n' "$op" "$bytes" "$gbps" >>"$results"
  done <<<"$out"
done
speed=$(taskset -c 0 openssl speed -evp aes-256-gcm -bytes 16384 -seconds 2 -mr 2>/dev/null |
  awk -F: '/^\+F:/ { printf "%.3f", $4 / 1e9 }') || true
echo "  openssl speed -evp aes-256-gcm, 16384-byte blocks, one core: ${speed:-?} GB/s (information only)"
evp_enc=${EVP[enc,$((256 << 20))]}
evp_dec=${EVP[dec,$((256 << 20))]}

# -------------------------------------------------------------------------------- Python
step "Python cryptography, whole file (the old system's path)"
cat >"$work/wholefile.py" <<'EOF'
# The old system's at-rest path: whole file in memory, one AESGCM call, blob = nonce ‖ ct ‖ tag.
import os
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

op, key_path, src, dst = sys.argv[1:5]
with open(key_path, "rb") as f:
    key = f.read()
t0 = time.perf_counter()
with open(src, "rb") as f:
    data = f.read()
if op == "enc":
    nonce = os.urandom(12)
    blob = nonce + AESGCM(key).encrypt(nonce, data, None)
else:
    nonce, ct = data[:12], data[12:]
    blob = AESGCM(key).decrypt(nonce, ct, None)
with open(dst, "wb") as f:
    f.write(blob)
print(f"{time.perf_counter() - t0:.6f}")
EOF
head -c 32 /dev/urandom >"$work/py.key"
declare -A PY
py_run() { # op in out bytes
  INNER=1 RM="$3" measure "$work/py.out" "$py" "$work/wholefile.py" "$1" "$work/py.key" "$2" "$3"
  echo "  (process wall incl. interpreter start and import: $SECS s)"
  PY[$1,$4]=$(calc "$4 / $INNER_SECS / 1e9" 3)
  record "Python cryptography (whole file)" "$1" "$4" 1 "$INNER_SECS" "$RSS_KIB"
}
for spec in "$small:$small_bytes" "$big:$big_bytes"; do
  in=${spec%%:*}
  bytes=${spec##*:}
  py_run enc "$in" "$work/py.enc" "$bytes"
  py_run dec "$work/py.enc" "$work/py.dec" "$bytes"
  cmp -s "$in" "$work/py.dec" || die "Python round trip differs"
  rm -f "$work/py.enc" "$work/py.dec"
done

# ------------------------------------------------------------------------------ I/O floor
step "I/O floor: the same files copied with no cryptography (cat)"
RM="$work/copy.bin" measure "$work/copy.bin" cat "$big"
record "cat file→file (no crypto)" copy "$big_bytes" 1 "$SECS" "$RSS_KIB"
rm -f "$work/copy.bin"
measure /dev/null cat "$big"
record "cat file→/dev/null (no crypto)" copy "$big_bytes" 1 "$SECS" "$RSS_KIB"

# --------------------------------------------------------------------------------- aegis
step "aegis $("$aegis_bin" --version | awk '{ print $2 }')"
key="$work/k.key"
export AEGIS_KEYSTORE=file
A=("$aegis_bin" --key-file "$key")
"${A[@]}" key init >/dev/null || die "aegis key init failed"
one=(taskset -c 0 env RAYON_NUM_THREADS=1)
aegis_run() { # label op bytes cores out cmd...
  local label=$1 op=$2 bytes=$3 cores=$4 out=$5
  shift 5
  if [[ $cores == 1 ]]; then
    RM="${RM:-}" measure "$out" "${one[@]}" "$@"
  else
    RM="${RM:-}" measure "$out" "$@"
  fi
  record "$label" "$op" "$bytes" "$cores" "$SECS" "$RSS_KIB"
}
for cores in 1 "$(nproc)"; do
  RM="$work/big.v2" aegis_run "aegis v2 file→file" enc "$big_bytes" "$cores" /dev/null \
    "${A[@]}" encrypt "$big" -o "$work/big.v2" --force
  RM="$work/big.out" aegis_run "aegis v2 file→file" dec "$big_bytes" "$cores" /dev/null \
    "${A[@]}" decrypt "$work/big.v2" -o "$work/big.out" --force
  cmp -s "$big" "$work/big.out" || die "aegis v2 round trip differs"
  rm -f "$work/big.out"
  aegis_run "aegis v2 file→stdout (/dev/null)" enc "$big_bytes" "$cores" /dev/null \
    "${A[@]}" encrypt "$big" -o -
  aegis_run "aegis v2 file→stdout (/dev/null)" dec "$big_bytes" "$cores" /dev/null \
    "${A[@]}" decrypt "$work/big.v2" -o -
done
rm -f "$work/big.v2"
for fmt in v2 v1; do
  RM="$work/small.$fmt" aegis_run "aegis $fmt file→file" enc "$small_bytes" "$(nproc)" \
    /dev/null "${A[@]}" encrypt --format "$fmt" "$small" -o "$work/small.$fmt" --force
  RM="$work/small.out" aegis_run "aegis $fmt file→file" dec "$small_bytes" "$(nproc)" \
    /dev/null "${A[@]}" decrypt "$work/small.$fmt" -o "$work/small.out" --force
  cmp -s "$small" "$work/small.out" || die "aegis $fmt round trip differs"
  rm -f "$work/small.out" "$work/small.$fmt"
done

# ---------------------------------------------------------------------------------- rewrap
step "rewrap: $REWRAP_N v2 files of $REWRAP_KIB KiB, key rotate, aegis reencrypt"
mkdir -p "$work/rewrap"
head -c $((REWRAP_KIB << 10)) /dev/urandom >"$work/4k.bin"
t0=$EPOCHREALTIME
# One process per file (each file gets its own header and data key), $(nproc) at a time.
seq 0 $((REWRAP_N - 1)) |
  xargs -P "$(nproc)" -I{} "${A[@]}" encrypt "$work/4k.bin" -o "$work/rewrap/f{}.enc" \
    2>"$work/prep.err" || {
  grep -v '^encrypted ' "$work/prep.err" >&2
  die "aegis encrypt of the rewrap files failed"
}
n=$(find "$work/rewrap" -name 'f*.enc' | wc -l)
((n == REWRAP_N)) || die "only $n of $REWRAP_N rewrap files were created"
echo "  prepared $REWRAP_N files in $(calc "$EPOCHREALTIME - $t0" 1) s" \
  "($(calc "($EPOCHREALTIME - $t0) * 1000 / $REWRAP_N * $(nproc)" 0) ms per aegis encrypt process)"
cp -r "$work/rewrap" "$disk/rewrap" || die "copy to $disk failed"
sync
"${A[@]}" key rotate >/dev/null || die "aegis key rotate failed"
declare -A RW
REPS_SAVED=$REPS
REPS=1 # a second run would find every file current already
for where in tmp disk; do
  dir="$work/rewrap"
  [[ $where == disk ]] && dir="$disk/rewrap"
  measure "$work/rewrap.out" "${A[@]}" reencrypt "$dir"
  grep -q "$REWRAP_N v2 rewrapped" "$work/rewrap.out" ||
    die "reencrypt did not rewrap $REWRAP_N files: $(cat "$work/rewrap.out")"
  RW[$where]=$SECS
  RW[$where,rss]=$RSS_KIB
  printf '  %-44s %6.3f s  %6.0f files/s  %5.1f MiB peak RSS\n' \
    "reencrypt $dir" "$SECS" "$(calc "$REWRAP_N / $SECS" 0)" "$(calc "$RSS_KIB / 1024" 1)"
done
REPS=$REPS_SAVED
"${A[@]}" decrypt "$disk/rewrap/f0.enc" -o "$work/4k.out" 2>/dev/null ||
  die "decrypting a rewrapped file failed"
cmp -s "$work/4k.bin" "$work/4k.out" || die "rewrapped file decrypts to something else"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# ----------------------------------------------------------------------------------- table
step "summary"
yn() { if (($(calc "$1" 0))); then echo yes; else echo NO; fi; }
echo
echo "Single-core reference: OpenSSL EVP loop over 256 MiB, $evp_enc GB/s enc / $evp_dec GB/s dec" \
  "(openssl speed: ${speed:-?} GB/s). GB = 10^9 B. Best of $REPS. Files in $(df -PT "$work" | awk 'NR == 2 { print $2 }'), page cache warm."
echo
echo "| implementation | op | size | cores | GB/s | × OpenSSL EVP 1 core | × Python | peak RSS MiB | targets |"
echo "|---|---|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r impl op bytes cores gbps rss; do
  size="$((bytes >> 20)) MiB"
  ((bytes >= 1 << 30)) && size="$((bytes >> 30)) GiB"
  ref=$evp_enc
  [[ $op == dec ]] && ref=$evp_dec
  x_evp=$(calc "$gbps / $ref")
  x_py="–"
  [[ -n "${PY[$op,$bytes]:-}" ]] && x_py=$(calc "$gbps / ${PY[$op,$bytes]}")
  rss_mib="–"
  [[ $rss != - ]] && rss_mib=$(calc "$rss / 1024" 1)
  t=()
  case $impl in
    "aegis v2"*)
      if [[ $cores == 1 ]]; then
        t+=("≥0.95×EVP: $(yn "$x_evp >= 0.95")")
      else
        t+=("≥1.6×EVP: $(yn "$x_evp >= 1.6")")
      fi
      [[ $x_py != – ]] && t+=("≥2.5×Py: $(yn "$x_py >= 2.5")")
      t+=("RSS≤32MiB: $(yn "$rss <= 32 * 1024")")
      ;;
    "aegis v1"*)
      t+=("(v1 is whole-file by design, no target)")
      ;;
    Python*)
      t+=("RSS≥2×file (claim): $(yn "$rss * 1024 >= 2 * $bytes")")
      ;;
  esac
  (IFS=';'; echo "| $impl | $op | $size | $cores | $gbps | $x_evp | $x_py | $rss_mib | ${t[*]} |") |
    sed 's/;/; /g'
done <"$results"
for where in tmp disk; do
  s=${RW[$where]}
  fs=$(df -PT "$([[ $where == disk ]] && echo "$disk" || echo "$work")" | awk 'NR == 2 { print $2 }')
  echo "| aegis reencrypt (v2 rewrap) | rewrap | $REWRAP_N × $REWRAP_KIB KiB ($fs) | $(nproc) | $(calc "$REWRAP_N / $s" 0) files/s | – | – | $(calc "${RW[$where,rss]} / 1024" 1) | ≤1 s: $(yn "$s <= 1") ($s s) |"
done
echo
echo "Targets: v2 on 1 core ≥ 0.95× the OpenSSL EVP 1-core figure (256 MiB, same direction), on" \
  "$(nproc) cores ≥ 1.6×; v2 ≥ 2.5× Python's whole-file path at the same size; aegis v2 peak RSS" \
  "≤ 32 MiB; rewrap of $REWRAP_N v2 files ≤ 1 s. Python GB/s is timed inside the interpreter" \
  "(read+crypt+write), everything else is the whole process timed from outside."
