#!/usr/bin/env bash
# README: scripts/test-deps.sh — install what the test suite needs, idempotently.
#
#   scripts/test-deps.sh            # from anywhere; paths are relative to the repo root
#
# 1. Debian packages, installed only when missing (checked with `dpkg -s`; `apt-get update`
#    runs only if something must be installed; sudo is used only when not root):
#      gnome-keyring dbus libsecret-tools openssl   (+ python3-venv if `python3 -m venv` fails)
#      postgresql      the server (Debian 12: PostgreSQL 15 in /usr/lib/postgresql/15/bin; also
#                      creates the `postgres` system user), for scripts/with-postgres.sh
#      chromium        headless browser for the gateway dashboard test (/usr/bin/chromium)
#      libnss3-tools   certutil, for scripts/chromium-trust-ca.sh
#      wrk             HTTP load generator for the gateway load test
# 2. A Python venv at target/pyenv with the exact pins of scripts/requirements-test.txt
#    (cryptography, keyring and their dependencies). A stamp file holds the sha256 of the
#    requirements file and the interpreter version; pip runs only when that changes or the
#    venv is missing or broken.
# Prints the absolute path of the venv's python on its last line of stdout
# (everything else goes to stderr). Called by scripts/test.sh and
# scripts/with-secret-service.sh; safe to run by hand.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$repo_root/scripts/requirements-test.txt"
venv="$repo_root/target/pyenv"
stamp="$venv/.aegis-requirements.sha256"
PY="${AEGIS_HOST_PYTHON:-python3}"

log() { printf '[test-deps] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  fi
fi

is_installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

venv_works() {
  local d
  d="$(mktemp -d)"
  if "$PY" -m venv "$d/v" >/dev/null 2>&1 && "$d/v/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$d"
    return 0
  fi
  rm -rf "$d"
  return 1
}

venv_ok() {
  [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1
}

missing=()
for p in gnome-keyring dbus libsecret-tools openssl postgresql chromium libnss3-tools wrk; do
  is_installed "$p" || missing+=("$p")
done
# python3-venv only matters if we will have to create the venv and `python3 -m venv` fails.
if ! venv_ok && ! venv_works; then
  is_installed python3-venv || missing+=(python3-venv)
  # Debian's python3-venv is for /usr/bin/python3; fall back to it if PATH's python3 has no venv.
  PY_FALLBACK=/usr/bin/python3
fi

if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 && ${#sudo_cmd[@]} -eq 0 ]]; then
    log "missing Debian packages (${missing[*]}) and not root without sudo: install them by hand"
    exit 1
  fi
  log "apt-get installing: ${missing[*]}"
  apt_log="$(mktemp)"
  if ! { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update &&
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    rm -f "$apt_log"
    log "apt-get failed (output above)"
    exit 1
  fi
  rm -f "$apt_log"
fi

# ---------------------------------------------------------------- python venv
if ! venv_ok; then
  if [[ -n "${PY_FALLBACK:-}" ]] && ! venv_works; then
    PY="$PY_FALLBACK"
  fi
  log "creating venv $venv with $("$PY" -c 'import sys; print(sys.executable)')"
  rm -rf "$venv"
  mkdir -p "$repo_root/target"
  "$PY" -m venv "$venv" >&2
fi

want="$( { sha256sum <"$req"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
  log "installing Python test requirements into $venv"
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2
  "$venv/bin/python" -c 'import cryptography, keyring' >&2
  printf '%s\n' "$want" >"$stamp"
fi

printf '%s\n' "$venv/bin/python"
