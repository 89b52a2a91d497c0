#!/usr/bin/env bash
# README: scripts/chromium-trust-ca.sh HOME_DIR CA_PEM
#
# Makes Chromium (Linux, Debian's package `chromium`) trust CA_PEM as a TLS root when it runs
# with HOME=HOME_DIR: creates the NSS database HOME_DIR/.pki/nssdb (empty password) if it is
# missing and adds CA_PEM as a trusted CA for servers (`certutil -A -t "C,," -n aegis-dev-ca`;
# an existing entry of that nickname is replaced). Needs certutil (Debian package
# libnss3-tools, installed by scripts/test-deps.sh).
#
# Chromium reads this database from $HOME, not from --user-data-dir, so the browser must be
# started with HOME=HOME_DIR. Used by the gateway's dashboard test, e.g.
#     scripts/chromium-trust-ca.sh "$tmp/chome" ca.pem
#     HOME="$tmp/chome" chromium --headless --no-sandbox --disable-gpu --disable-quic \
#       --no-first-run --disable-background-networking --disable-component-update \
#       --disable-sync --user-data-dir="$tmp/profile" --dump-dom https://localhost:PORT/
# Prints nothing on success; on failure one line on stderr and a non-zero exit status.
set -euo pipefail

tag="chromium-trust-ca"
if (($# != 2)); then
  echo "usage: $0 HOME_DIR CA_PEM" >&2
  exit 2
fi
home_dir="$1"
ca_pem="$2"
nick="aegis-dev-ca"

die() {
  printf '%s: %s\n' "$tag" "$*" >&2
  exit 1
}

command -v certutil >/dev/null 2>&1 || die "certutil not found (Debian package libnss3-tools)"
[[ -r "$ca_pem" ]] || die "cannot read CA certificate $ca_pem"
grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_pem" || die "$ca_pem is not a PEM certificate"

db="$home_dir/.pki/nssdb"
mkdir -p "$db"
chmod 0700 "$home_dir/.pki" "$db"
out=""
if [[ ! -f "$db/cert9.db" ]]; then
  out="$(certutil -N -d "sql:$db" --empty-password 2>&1)" || die "certutil -N failed: $out"
fi
# Replace an earlier CA of the same nickname (e.g. a test that runs twice with one HOME).
while certutil -L -d "sql:$db" -n "$nick" >/dev/null 2>&1; do
  out="$(certutil -D -d "sql:$db" -n "$nick" 2>&1)" || die "certutil -D failed: $out"
done
out="$(certutil -A -d "sql:$db" -n "$nick" -t "C,," -a -i "$ca_pem" 2>&1)" ||
  die "certutil -A failed: $out"
# Check it is there and trusted as a CA for TLS servers.
trust="$(certutil -L -d "sql:$db" | awk -v n="$nick" '$1 == n {print $NF}')"
[[ "$trust" == C,,* || "$trust" == CT,,* ]] || die "after certutil -A, trust flags of $nick are '$trust', expected C,,"
