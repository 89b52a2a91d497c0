#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2015  # (functions run from traps; `a && b || true` on purpose)
# README: scripts/with-secret-service.sh CMD [ARGS...]
#
# Runs CMD inside a private D-Bus session bus that has a real, unlocked gnome-keyring
# Secret Service on it, in a throwaway HOME, and cleans everything up afterwards.
# Used by scripts/test.sh; also usable by hand and by benches, e.g.
#     scripts/with-secret-service.sh cargo test -p aegis-cli keyring
#     scripts/with-secret-service.sh bash          # interactive shell inside the session
#
# What it does:
#   1. scripts/test-deps.sh (Debian packages + target/pyenv venv), unless the caller already
#      did it and set AEGIS_TEST_DEPS_DONE=1.
#   2. mktemp -d: $tmp/home (HOME) and $tmp/run (XDG_RUNTIME_DIR, mode 0700); CARGO_HOME and
#      RUSTUP_HOME are pinned to the caller's (default $HOME/.cargo, $HOME/.rustup) first.
#   3. env -u DBUS_SESSION_BUS_ADDRESS HOME=$tmp/home XDG_RUNTIME_DIR=$tmp/run dbus-run-session --
#        printf pw | gnome-keyring-daemon --unlock --components=secrets
#      On an empty HOME this creates the "login" keyring (password "pw"), makes it the
#      "default" alias and leaves it unlocked.
#   4. Verifies before running CMD: org.freedesktop.secrets owned on the bus; the "default"
#      alias exists and is unlocked; secret-tool store/lookup/clear of a throwaway item; a
#      Python keyring set/get/delete round trip with the venv's python (SecretService backend).
#   5. Runs CMD with, exported:
#        AEGIS_TEST_SECRET_SERVICE=1   (only if step 4 passed)
#        AEGIS_TEST_PYTHON=<abs path of target/pyenv/bin/python> (unless already set)
#        HOME, XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS of the private session; CI as given.
#      If steps 1-4 fail: with CI=true, exit 1 with a one-line reason; otherwise print a warning
#      and run CMD anyway, without AEGIS_TEST_SECRET_SERVICE (keyring tests then skip).
#   6. On exit (normal, error or INT/TERM/HUP) kills the keyring daemon, the bus daemon (and CMD
#      if still running) by their recorded pids and removes $tmp. Exit status is CMD's.
set -euo pipefail

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
repo_root="$(cd "$(dirname "$self")/.." && pwd)"
tag="with-secret-service"

# Called when the Secret Service cannot be provided. CI: fatal, one line. Otherwise: warn.
ss_unavailable() {
  if [[ "${CI:-}" == true ]]; then
    printf '%s: FATAL: no working Secret Service: %s\n' "$tag" "$*" >&2
    exit 1
  fi
  printf '%s: WARNING: no working Secret Service (%s); running without AEGIS_TEST_SECRET_SERVICE\n' \
    "$tag" "$*" >&2
}

# True if pid is a live process of this session: its environment has our XDG_RUNTIME_DIR
# (every process we start inherits it), so a recycled pid is never touched.
ours() {
  [[ "$1" =~ ^[0-9]+$ ]] && tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" |
    grep -qxF "XDG_RUNTIME_DIR=$tmp/run"
}

# Kill the pids listed in a file (one per line), politely then firmly. Only our own pids.
kill_recorded() {
  local f="$1" pid alive _
  local -a pids=()
  [[ -f "$f" ]] || return 0
  while read -r pid; do
    ours "$pid" && pids+=("$pid")
  done <"$f"
  ((${#pids[@]})) || return 0
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 30); do
    alive=0
    for pid in "${pids[@]}"; do
      ours "$pid" && alive=1 # a zombie has an empty environ: counts as gone
    done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
}

dbus_call() { # dest path method args...
  local dest="$1" path="$2" method="$3"
  shift 3
  timeout 10 dbus-send --session --print-reply --reply-timeout=5000 --dest="$dest" "$path" "$method" "$@"
}

# ============================================================== inner part (inside the bus)
if [[ "${_AEGIS_SS_INNER:-}" == 1 ]]; then
  tmp="$_AEGIS_SS_TMP"
  unset _AEGIS_SS_INNER _AEGIS_SS_TMP
  pidfile="$tmp/pids"
  cmd_pid=""
  echo "$$" >>"$pidfile"

  inner_cleanup() {
    local rc=$?
    [[ -n "$cmd_pid" ]] && kill -TERM "$cmd_pid" 2>/dev/null || true
    kill_recorded "$tmp/daemon-pids"
    exit "$rc"
  }
  trap inner_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  # The bus daemon dbus-run-session started.
  bus_pid="$(dbus_call org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.DBus 2>/dev/null |
    awk '/uint32/ {print $2}')" || true
  # (dbus-run-session stops the bus itself when we exit; the outer trap kills it only if
  # dbus-run-session is gone, e.g. after a signal.)
  [[ -n "$bus_pid" ]] && echo "$bus_pid" >>"$pidfile"

  verify() {
    local out pid val got
    # --unlock reads the password on stdin; on an empty HOME it creates the "login" keyring
    # with it and sets it as the default collection. It forks a daemon and returns.
    if ! printf pw | gnome-keyring-daemon --unlock --components=secrets >"$tmp/gkd.out" 2>"$tmp/gkd.err"; then
      echo "gnome-keyring-daemon --unlock failed: $(tr '\n' ' ' <"$tmp/gkd.err")"
      return 1
    fi
    # Wait (up to 10 s) for org.freedesktop.secrets to be owned on the bus.
    for _ in $(seq 100); do
      out="$(dbus_call org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null)" || true
      [[ "$out" == *"boolean true"* ]] && break
      sleep 0.1
    done
    if [[ "$out" != *"boolean true"* ]]; then
      echo "org.freedesktop.secrets did not appear on the session bus within 10 s"
      return 1
    fi
    pid="$(dbus_call org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.secrets 2>/dev/null |
      awk '/uint32/ {print $2}')" || true
    if [[ -n "$pid" ]]; then
      echo "$pid" >>"$tmp/daemon-pids"
      echo "$pid" >>"$pidfile"
    fi
    # Default collection exists and is unlocked.
    out="$(dbus_call org.freedesktop.secrets /org/freedesktop/secrets \
      org.freedesktop.Secret.Service.ReadAlias string:default 2>&1)" || {
      echo "ReadAlias(default) failed: $(tr '\n' ' ' <<<"$out")"
      return 1
    }
    local coll
    coll="$(awk '/object path/ {gsub(/"/, "", $3); print $3}' <<<"$out")"
    if [[ -z "$coll" || "$coll" == / ]]; then
      echo "no default collection (alias 'default' unset)"
      return 1
    fi
    out="$(dbus_call org.freedesktop.secrets "$coll" org.freedesktop.DBus.Properties.Get \
      string:org.freedesktop.Secret.Collection string:Locked 2>&1)" || {
      echo "reading Locked of $coll failed: $(tr '\n' ' ' <<<"$out")"
      return 1
    }
    if [[ "$out" != *"boolean false"* ]]; then
      echo "default collection $coll is locked"
      return 1
    fi
    # secret-tool round trip of a throwaway item.
    val="probe-$$-$RANDOM"
    if ! printf '%s' "$val" | timeout 10 secret-tool store --label=aegis-selftest \
      aegis-selftest probe 2>"$tmp/st.err"; then
      echo "secret-tool store failed: $(tr '\n' ' ' <"$tmp/st.err")"
      return 1
    fi
    got="$(timeout 10 secret-tool lookup aegis-selftest probe 2>/dev/null)" || true
    timeout 10 secret-tool clear aegis-selftest probe 2>/dev/null || true
    if [[ "$got" != "$val" ]]; then
      echo "secret-tool lookup returned '$got', expected '$val'"
      return 1
    fi
    if [[ -n "$(timeout 10 secret-tool lookup aegis-selftest probe 2>/dev/null || true)" ]]; then
      echo "secret-tool clear did not remove the probe item"
      return 1
    fi
    # Python keyring round trip (the peer the interop tests use).
    if [[ -z "${AEGIS_TEST_PYTHON:-}" || ! -x "${AEGIS_TEST_PYTHON}" ]]; then
      echo "AEGIS_TEST_PYTHON not set or not executable ('${AEGIS_TEST_PYTHON:-}'): run scripts/test-deps.sh"
      return 1
    fi
    if ! out="$(timeout 30 "$AEGIS_TEST_PYTHON" - 2>&1 <<'PY'
import keyring, keyring.backends.SecretService as ss, sys
kr = keyring.get_keyring()
if not isinstance(kr, ss.Keyring):
    sys.exit(f"python keyring backend is {kr!r}, not SecretService")
keyring.set_password("aegis-selftest", "py-probe", "v1")
got = keyring.get_password("aegis-selftest", "py-probe")
keyring.delete_password("aegis-selftest", "py-probe")
if got != "v1":
    sys.exit(f"python keyring returned {got!r}")
if keyring.get_password("aegis-selftest", "py-probe") is not None:
    sys.exit("python keyring delete_password did not delete")
PY
    )"; then
      echo "python keyring round trip failed: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
      return 1
    fi
    return 0
  }

  if reason="$(verify)"; then
    export AEGIS_TEST_SECRET_SERVICE=1
  else
    unset AEGIS_TEST_SECRET_SERVICE
    ss_unavailable "$reason"
  fi

  # Run CMD in the background (stdin kept) so that signals reach our traps promptly; bash
  # makes background jobs ignore SIGINT/SIGQUIT, so restore them (Ctrl-C must still work).
  env --default-signal=INT,QUIT "$@" <&0 &
  cmd_pid=$!
  echo "$cmd_pid" >>"$pidfile"
  rc=0
  wait "$cmd_pid" || rc=$?
  cmd_pid=""
  exit "$rc"
fi

# ============================================================== outer part
if (($# == 0)); then
  sed -n '/^# README/,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi

# Pin the toolchain homes before HOME changes, or cargo/rustup look in the temp HOME.
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"

if [[ "${AEGIS_TEST_DEPS_DONE:-}" != 1 ]]; then
  if py="$("$repo_root/scripts/test-deps.sh" | tail -n 1)" && [[ -n "$py" ]]; then
    export AEGIS_TEST_PYTHON="${AEGIS_TEST_PYTHON:-$py}"
  else
    ss_unavailable "scripts/test-deps.sh failed"
  fi
elif [[ -z "${AEGIS_TEST_PYTHON:-}" && -x "$repo_root/target/pyenv/bin/python" ]]; then
  export AEGIS_TEST_PYTHON="$repo_root/target/pyenv/bin/python"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/aegis-ss.XXXXXX")"
mkdir -p "$tmp/home"
mkdir -m 0700 "$tmp/run"
: >"$tmp/pids"
child=""

outer_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  # Everything recorded: inner shell, CMD, keyring daemon, bus daemon; then dbus-run-session.
  kill_recorded "$tmp/pids"
  [[ -n "$child" ]] && { echo "$child" >"$tmp/child"; kill_recorded "$tmp/child"; }
  rm -rf "$tmp"
  exit "$rc"
}
trap outer_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# (background jobs of a script ignore SIGINT/SIGQUIT: --default-signal undoes that)
# shellcheck disable=SC2054
session_env=(env --default-signal=INT,QUIT -u DBUS_SESSION_BUS_ADDRESS -u DBUS_STARTER_ADDRESS -u DBUS_STARTER_BUS_TYPE
  -u GNOME_KEYRING_CONTROL -u PYTHON_KEYRING_BACKEND -u AEGIS_TEST_SECRET_SERVICE
  HOME="$tmp/home" XDG_RUNTIME_DIR="$tmp/run")

rc=0
if ! command -v dbus-run-session >/dev/null || ! command -v gnome-keyring-daemon >/dev/null ||
  ! command -v secret-tool >/dev/null || ! command -v dbus-send >/dev/null; then
  ss_unavailable "dbus-run-session, dbus-send, gnome-keyring-daemon or secret-tool not installed"
  "${session_env[@]}" "$@" <&0 &
  child=$!
  wait "$child" || rc=$?
else
  # dbus-daemon as root always logs "Failed to set fd limit to 65536" (harmless); send its
  # stderr to a file instead of the test log.
  printf '#!/bin/sh\nexec %q "$@" 2>>%q\n' "$(command -v dbus-daemon || echo /usr/bin/dbus-daemon)" \
    "$tmp/dbus-daemon.log" >"$tmp/dbus-daemon"
  chmod +x "$tmp/dbus-daemon"
  "${session_env[@]}" _AEGIS_SS_INNER=1 _AEGIS_SS_TMP="$tmp" \
    dbus-run-session --dbus-daemon="$tmp/dbus-daemon" -- bash "$self" "$@" <&0 &
  child=$!
  wait "$child" || rc=$?
fi
child=""
exit "$rc"
