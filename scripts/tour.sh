#!/usr/bin/env bash
# README: scripts/tour.sh — the main job for now: a short scripted tour of AEGIS encryption at
# rest. Builds `aegis` (release), then in a fresh temporary directory: creates a master key
# (the OS keyring if one is usable, else the 0600 key file aegis_key.key), encrypts a checkpoint
# (v2 stream) and a dataset in the Python system's v1 format, decrypts them, rotates the key,
# re-encrypts the historic files under the new key, retires the old key, and shows the files.
# Usage: scripts/tour.sh [--keep]   (--keep leaves the directory for you to look at)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

keep=0
[[ "${1:-}" == --keep ]] && keep=1

echo "== building aegis (release)"
cargo build --release --locked -q -p aegis-cli
aegis="$repo_root/target/release/aegis"

work="$(mktemp -d -t aegis-tour.XXXXXX)"
if [[ $keep == 0 ]]; then trap 'rm -rf "$work"' EXIT; fi
cd "$work"
# The tour keeps its key in its own directory so it never touches a key you already have.
export AEGIS_KEYSTORE=file AEGIS_KEY_FILE="$work/aegis_key.key"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

mkdir -p data/checkpoints data/datasets
head -c $((48 << 20)) /dev/urandom > model.safetensors
python3 - <<'PY' > dataset.csv
import random
random.seed(7)
print("f0,f1,f2,label")
for _ in range(20000):
    print(",".join(f"{random.random():.6f}" for _ in range(3)) + f",{random.randint(0, 9)}")
PY

step "$aegis" key init
step "$aegis" encrypt model.safetensors -o data/checkpoints/round-001.safetensors.enc
step "$aegis" encrypt --format v1 dataset.csv -o data/datasets/shard-0.csv.enc
step "$aegis" inspect data/checkpoints/round-001.safetensors.enc data/datasets/shard-0.csv.enc
step "$aegis" decrypt data/checkpoints/round-001.safetensors.enc -o restored.safetensors
cmp model.safetensors restored.safetensors && echo "restored.safetensors is identical to the original"

old_id="$("$aegis" key status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')"
step "$aegis" key rotate
step "$aegis" key retire "$old_id" --root data || echo "(refused, as it must be: files still need the old key)"
step "$aegis" reencrypt data
step "$aegis" inspect data/checkpoints/round-001.safetensors.enc
step "$aegis" key retire "$old_id" --root data
step "$aegis" key status
step "$aegis" decrypt data/datasets/shard-0.csv.enc -o restored.csv
cmp dataset.csv restored.csv && echo "restored.csv is identical to the original"

echo
echo "tour finished$( [[ $keep == 1 ]] && echo "; files kept in $work" )"
