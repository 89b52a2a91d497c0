#!/usr/bin/env bash
# README: scripts/test.sh — THE test command (CI runs it through .ci/run with CI=true).
#
# Usage (from anywhere; it cd's to the repo root):
#   scripts/test.sh                      # fmt check, clippy -D warnings, all tests
#   scripts/test.sh -- --nocapture       # extra args go to `cargo test --workspace --all-features --locked`
#   scripts/test.sh keyring              # ... e.g. a test-name filter
#   scripts/test.sh -p aegis-crypto -- --test-threads=1
#
# Steps:
#   == deps     scripts/test-deps.sh: missing Debian packages (gnome-keyring dbus
#               libsecret-tools openssl, python3-venv if needed) via apt-get, and the Python
#               venv target/pyenv with scripts/requirements-test.txt (cryptography, keyring).
#   == session  scripts/with-secret-service.sh: private D-Bus session bus + unlocked
#               gnome-keyring in a temp HOME, verified; everything below runs inside it with
#                 AEGIS_TEST_SECRET_SERVICE=1  (real unlocked Secret Service on the session bus;
#                                               unset if it could not be verified, outside CI)
#                 AEGIS_TEST_PYTHON=<repo>/target/pyenv/bin/python
#                 HOME=<temp home>, CARGO_HOME/RUSTUP_HOME pinned to the real ones, CI as given.
#   == fmt      cargo fmt --all -- --check
#   == clippy   cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
#   == test     cargo test --workspace --all-features --locked [ARGS...]
# Stops at the first failing step; exit status is that step's. With CI=true a Secret Service
# that cannot be set up is a failure; otherwise it is a warning and keyring tests skip.
# Temp dir and daemons are removed on any exit (see with-secret-service.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ "${_AEGIS_TEST_IN_SESSION:-}" != 1 ]]; then
  # ---------------------------------------------------------------- outside the session
  # Pin the toolchain homes before with-secret-service.sh changes HOME.
  export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
  export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"

  echo "== deps"
  if py="$(scripts/test-deps.sh | tail -n 1)" && [[ -n "$py" ]]; then
    export AEGIS_TEST_PYTHON="$py"
  elif [[ "${CI:-}" == true ]]; then
    echo "test.sh: FATAL: scripts/test-deps.sh failed" >&2
    exit 1
  else
    echo "test.sh: WARNING: scripts/test-deps.sh failed; continuing" >&2
  fi
  echo "== session"
  export AEGIS_TEST_DEPS_DONE=1 _AEGIS_TEST_IN_SESSION=1
  exec scripts/with-secret-service.sh bash "$repo_root/scripts/test.sh" "$@"
fi

# ------------------------------------------------------------------ inside the session
unset _AEGIS_TEST_IN_SESSION AEGIS_TEST_DEPS_DONE
echo "   AEGIS_TEST_SECRET_SERVICE=${AEGIS_TEST_SECRET_SERVICE:-<unset>}" \
  "AEGIS_TEST_PYTHON=${AEGIS_TEST_PYTHON:-<unset>} HOME=$HOME CI=${CI:-<unset>}"

echo "== fmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== test"
cargo test --workspace --all-features --locked "$@"
