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
#               libsecret-tools openssl postgresql chromium libnss3-tools wrk, python3-venv if
#               needed) via apt-get, and the Python venv target/pyenv with
#               scripts/requirements-test.txt (cryptography, keyring, ...). Then finds the tools
#               the gateway tests drive (with CI=true a missing one is fatal, otherwise a warning
#               and those tests skip):
#                 AEGIS_TEST_CHROMIUM=/usr/bin/chromium    (Debian chromium; a preset value wins)
#                 AEGIS_TEST_WRK=<command -v wrk>          (a preset value wins)
#   == session  scripts/with-secret-service.sh: private D-Bus session bus + unlocked
#               gnome-keyring in a temp HOME, verified; inside it scripts/with-postgres.sh: a
#               private throwaway PostgreSQL server (initdb in a temp dir, 127.0.0.1 on a free
#               port, password auth, fsync off). Everything below runs inside both, with
#                 AEGIS_TEST_SECRET_SERVICE=1  (real unlocked Secret Service on the session bus;
#                                               unset if it could not be verified, outside CI)
#                 AEGIS_TEST_POSTGRES_URL=postgres://aegis:PASSWORD@127.0.0.1:PORT/postgres
#                                              (superuser: tests CREATE DATABASE one each; unset if
#                                               the server could not be started, outside CI)
#                 AEGIS_TEST_CHROMIUM, AEGIS_TEST_WRK  (as above)
#                 AEGIS_TEST_PYTHON=<repo>/target/pyenv/bin/python
#                 HOME=<temp home>, CARGO_HOME/RUSTUP_HOME pinned to the real ones, CI as given.
#               (scripts/chromium-trust-ca.sh HOME_DIR CA_PEM makes HOME_DIR's NSS database
#               trust a test CA for `HOME=HOME_DIR $AEGIS_TEST_CHROMIUM --headless ...`.)
#   == fmt      cargo fmt --all -- --check
#   == clippy   cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
#   == test     cargo test --workspace --all-features --locked [ARGS...]
# Stops at the first failing step; exit status is that step's. With CI=true a Secret Service,
# PostgreSQL server, chromium or wrk that cannot be set up is a failure; otherwise it is a
# warning and the tests that need it skip.
# Temp dirs, daemons and the database server are removed on any exit (see
# with-secret-service.sh and with-postgres.sh).
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
  # Tools the gateway tests drive.
  tool_missing() {
    if [[ "${CI:-}" == true ]]; then
      echo "test.sh: FATAL: $*" >&2
      exit 1
    fi
    echo "test.sh: WARNING: $*; the tests that need it skip" >&2
  }
  chromium="${AEGIS_TEST_CHROMIUM:-/usr/bin/chromium}"
  if [[ -x "$chromium" ]]; then
    export AEGIS_TEST_CHROMIUM="$chromium"
  else
    unset AEGIS_TEST_CHROMIUM
    tool_missing "no chromium at $chromium (Debian package chromium)"
  fi
  wrk="${AEGIS_TEST_WRK:-$(command -v wrk || true)}"
  if [[ -n "$wrk" && -x "$wrk" ]]; then
    export AEGIS_TEST_WRK="$wrk"
  else
    unset AEGIS_TEST_WRK
    tool_missing "no wrk on PATH (Debian package wrk)"
  fi

  echo "== session"
  export AEGIS_TEST_DEPS_DONE=1 _AEGIS_TEST_IN_SESSION=1
  exec scripts/with-secret-service.sh scripts/with-postgres.sh bash "$repo_root/scripts/test.sh" "$@"
fi

# ------------------------------------------------------------------ inside the session
unset _AEGIS_TEST_IN_SESSION AEGIS_TEST_DEPS_DONE
pg_shown="<unset>" # (the password is not printed)
[[ -n "${AEGIS_TEST_POSTGRES_URL:-}" ]] && pg_shown="postgres://aegis:***@${AEGIS_TEST_POSTGRES_URL#*@}"
echo "   AEGIS_TEST_SECRET_SERVICE=${AEGIS_TEST_SECRET_SERVICE:-<unset>}" \
  "AEGIS_TEST_PYTHON=${AEGIS_TEST_PYTHON:-<unset>} HOME=$HOME CI=${CI:-<unset>}"
echo "   AEGIS_TEST_POSTGRES_URL=$pg_shown" \
  "AEGIS_TEST_CHROMIUM=${AEGIS_TEST_CHROMIUM:-<unset>} AEGIS_TEST_WRK=${AEGIS_TEST_WRK:-<unset>}"

echo "== fmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== test"
cargo test --workspace --all-features --locked "$@"
