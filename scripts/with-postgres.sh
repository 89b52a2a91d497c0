#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2046  # (functions run from traps; pid lists split on purpose)
# README: scripts/with-postgres.sh CMD [ARGS...]
#
# Runs CMD with a private, throwaway PostgreSQL server and removes it afterwards.
# Used by scripts/test.sh (inside the Secret Service session); also usable by hand, e.g.
#     scripts/with-postgres.sh cargo test -p aegis-gateway
#     scripts/with-postgres.sh bash -c 'psql "$AEGIS_TEST_POSTGRES_URL"'
#
# What it does:
#   1. Finds the server binaries: $AEGIS_PG_BINDIR if set, else the newest Debian
#      /usr/lib/postgresql/*/bin (package `postgresql`, installed by scripts/test-deps.sh),
#      else initdb/pg_ctl on PATH.
#   2. mktemp -d: $tmp/data (cluster), $tmp/sock (unix socket), $tmp/server.log. As root the
#      server runs as the `postgres` system user (postgres refuses root): $tmp is chowned to it
#      and initdb/pg_ctl run through `runuser -u postgres --`.
#   3. initdb with a superuser `aegis` and a random password; TCP only on 127.0.0.1 at a free
#      port, scram-sha-256 for TCP, trust only on the private unix socket; fsync=off,
#      synchronous_commit=off, full_page_writes=off, max_connections=200.
#   4. Starts it and waits (up to 30 s) until a query over TCP with the password succeeds.
#   5. Runs CMD with
#        AEGIS_TEST_POSTGRES_URL=postgres://aegis:PASSWORD@127.0.0.1:PORT/postgres
#      (a superuser: tests CREATE DATABASE one database each).
#      If the server cannot be started: with CI=true, exit 1 with a one-line reason; otherwise
#      print a warning and run CMD without AEGIS_TEST_POSTGRES_URL (postgres tests then skip).
#   6. On any exit (normal, error, INT/TERM/HUP): CMD is sent TERM if still running (not waited
#      for), the server is stopped (`pg_ctl stop -m immediate`; if that fails its processes are
#      killed by pid) and $tmp is removed. Exit status is CMD's. If this script is SIGKILLed, a
#      watchdog process stops the server and removes $tmp within a second (CMD is then left to
#      whoever killed us).
# Server log while it runs: $tmp/server.log (the path is printed on stderr at start).
set -euo pipefail

tag="with-postgres"
if (($# == 0)); then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

pg_unavailable() {
  if [[ "${CI:-}" == true ]]; then
    printf '%s: FATAL: no PostgreSQL server: %s\n' "$tag" "$*" >&2
    exit 1
  fi
  printf '%s: WARNING: no PostgreSQL server (%s); running without AEGIS_TEST_POSTGRES_URL\n' \
    "$tag" "$*" >&2
}

tmp=""
child=""
watchdog=""
pg_started=0
as_pg=() # prefix that runs a command as the server's owner

# Pid of our postmaster, if it is alive and really ours (its command line names our data dir).
postmaster_pid() {
  local pid
  [[ -n "$tmp" && -f "$tmp/data/postmaster.pid" ]] || return 1
  pid="$(head -n 1 "$tmp/data/postmaster.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$tmp/data" || return 1
  echo "$pid"
}

# True if pid $1 exists and is not a zombie (init may take its time to reap orphans).
alive() {
  local state
  state="$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Pids whose parent is $1 (no procps needed).
children_of() {
  local f
  for f in /proc/[0-9]*/status; do
    grep -qx "PPid:[[:space:]]*$1" "$f" 2>/dev/null && basename "$(dirname "$f")"
  done
  return 0
}

stop_server() {
  local pid _
  ((pg_started)) || return 0
  pid="$(postmaster_pid)" || pid=""
  (cd "$tmp" && timeout -k 5 20 "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w -t 15 stop) \
    >/dev/null 2>&1 || true
  # pg_ctl failed (or the server is not answering): kill the postmaster and its children by pid.
  # (The postmaster is reparented to init; a zombie has an empty cmdline and counts as gone.)
  if [[ -n "$pid" ]] && postmaster_pid >/dev/null; then
    kill -KILL "$pid" $(children_of "$pid") 2>/dev/null || true
    for _ in $(seq 50); do
      postmaster_pid >/dev/null || break
      sleep 0.1
    done
  fi
  pg_started=0
}

cleanup() {
  local rc=$?
  # Ignore further signals (not reset them): a caller that sends TERM to everything it started
  # (with-secret-service.sh does, after its own INT) must not cut the server's shutdown short.
  trap '' INT TERM HUP
  trap - EXIT
  if [[ -n "$watchdog" ]]; then kill -KILL "$watchdog" 2>/dev/null || true; fi
  # CMD gets TERM but is not waited for: the server goes first.
  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi
  stop_server
  [[ -n "$tmp" ]] && rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
  else
    echo $((20000 + RANDOM % 30000))
  fi
}

# Sets up and starts the server; on failure sets $why and returns 1.
start_server() {
  local v d pw port attempt t0 out
  # ---- binaries
  bindir=""
  if [[ -n "${AEGIS_PG_BINDIR:-}" ]]; then
    bindir="$AEGIS_PG_BINDIR"
  else
    # newest major version first
    for v in $(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -rn); do
      if [[ -x "/usr/lib/postgresql/$v/bin/initdb" && -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]]; then
        bindir="/usr/lib/postgresql/$v/bin"
        break
      fi
    done
    if [[ -z "$bindir" ]] && command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
      bindir="$(dirname "$(command -v initdb)")"
    fi
  fi
  if [[ -z "$bindir" || ! -x "$bindir/initdb" || ! -x "$bindir/pg_ctl" || ! -x "$bindir/postgres" ]]; then
    why="initdb/pg_ctl/postgres not found (install Debian package postgresql: scripts/test-deps.sh)"
    return 1
  fi
  psql_bin="$bindir/psql"
  [[ -x "$psql_bin" ]] || psql_bin="$(command -v psql || true)"
  if [[ -z "$psql_bin" ]]; then
    why="psql not found"
    return 1
  fi

  # ---- owner and temp dir
  if [[ "$(id -u)" == 0 ]]; then
    if ! id -u postgres >/dev/null 2>&1; then
      why="running as root and there is no 'postgres' system user to run the server as"
      return 1
    fi
    if command -v runuser >/dev/null 2>&1; then
      as_pg=(runuser -u postgres --)
    else
      as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    fi
  fi
  for d in "${TMPDIR:-/tmp}" /tmp; do
    # (a unix socket path must stay under 108 bytes)
    ((${#d} <= 60)) || continue
    tmp="$(mktemp -d -p "$d" aegis-pg.XXXXXX 2>/dev/null)" || { tmp=""; continue; }
    ((${#as_pg[@]} == 0)) && break
    chown postgres: "$tmp" && chmod 0700 "$tmp" &&
      (cd / && "${as_pg[@]}" test -w "$tmp" -a -x "$tmp") && break
    rm -rf "$tmp"
    tmp=""
  done
  if [[ -z "$tmp" ]]; then
    why="could not create a temp dir usable by the server's user"
    return 1
  fi
  mkdir -m 0700 "$tmp/sock"
  ((${#as_pg[@]})) && chown postgres: "$tmp/sock"

  # ---- cluster
  pw="$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')"
  (umask 077 && printf '%s\n' "$pw" >"$tmp/pwfile")
  ((${#as_pg[@]})) && chown postgres: "$tmp/pwfile"
  if ! (cd "$tmp" && "${as_pg[@]}" "$bindir/initdb" -D "$tmp/data" -U aegis --pwfile="$tmp/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync) \
    >"$tmp/initdb.log" 2>&1; then
    why="initdb failed: $(tail -n 3 "$tmp/initdb.log" | tr '\n' ' ')"
    return 1
  fi
  rm -f "$tmp/pwfile"

  # ---- start (a new port if another process took ours in between)
  t0=$SECONDS
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    cat >"$tmp/data/postgresql.auto.conf" <<EOF
# written by scripts/with-postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$tmp/sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
logging_collector = off
EOF
    ((${#as_pg[@]})) && chown postgres: "$tmp/data/postgresql.auto.conf"
    pg_started=1
    if (cd "$tmp" && "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 30 start) \
      >"$tmp/pg_ctl.log" 2>&1; then
      break
    fi
    stop_server
    if ! grep -q 'could not bind\|Address already in use' "$tmp/server.log" 2>/dev/null || ((attempt == 5)); then
      why="pg_ctl start failed: $(tail -n 3 "$tmp/server.log" "$tmp/pg_ctl.log" 2>/dev/null | grep -v '^==>' | tr '\n' ' ')"
      return 1
    fi
    : >"$tmp/server.log"
  done

  # ---- ready over TCP with the password (up to 30 s from the start)
  url="postgres://aegis:$pw@127.0.0.1:$port/postgres"
  while :; do
    if out="$(PGCONNECT_TIMEOUT=5 "$psql_bin" "$url" -XAtqc 'select 1' 2>&1)" && [[ "$out" == 1 ]]; then
      break
    fi
    if ((SECONDS - t0 > 30)); then
      why="server did not accept a password login on 127.0.0.1:$port within 30 s: $out"
      return 1
    fi
    sleep 0.2
  done
  echo "$tag: PostgreSQL $("$psql_bin" "$url" -XAtqc 'show server_version') on 127.0.0.1:$port ($tmp)" >&2
  return 0
}

unset AEGIS_TEST_POSTGRES_URL
bindir=""
psql_bin=""
url=""
why=""
if start_server; then
  export AEGIS_TEST_POSTGRES_URL="$url"
  # If this script is killed with SIGKILL (no trap runs), a watchdog stops the server and
  # removes $tmp within a second. It ignores INT/TERM/HUP so that a Ctrl-C cannot stop it first.
  (
    trap '' INT TERM HUP
    main=$$
    while alive "$main"; do sleep 1; done
    stop_server
    rm -rf "$tmp"
  ) </dev/null >/dev/null 2>&1 &
  watchdog=$!
  disown "$watchdog" # (no "Killed" job report when cleanup ends it)
else
  stop_server
  pg_unavailable "$why"
fi

# CMD in the background so that a signal to this script is handled at once (the trap then
# stops CMD and the server). Background jobs of a script ignore SIGINT/SIGQUIT:
# --default-signal undoes that.
rc=0
env --default-signal=INT,QUIT "$@" <&0 &
child=$!
wait "$child" || rc=$?
child=""
exit "$rc"
