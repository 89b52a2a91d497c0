#!/usr/bin/env python3
"""Stand-in for the older Python system, for the interop tests of the `aegis` CLI.

It does what the Python system does, the way it does it: the master key is 32 random bytes
stored as `base64.urlsafe_b64encode` text, in the OS keyring through `keyring`
(service `aegis_core`, user `aegis_master_key_v2` by default) or in a key file created with
mode 0600; data is `AESGCM(key).encrypt(nonce, data, None)` with the 12-byte nonce prepended.

Usage (KEYSRC is `--key-file PATH` or `--keyring SERVICE [--user USER]`):
    python_system.py new-key-file PATH              create PATH (O_CREAT|O_EXCL, 0600)
    python_system.py new-key-text                   print a new key in its stored form
    python_system.py encrypt KEYSRC IN OUT          v1 blob: nonce ‖ ct ‖ tag
    python_system.py decrypt KEYSRC IN OUT
    python_system.py key-id KEYSRC                  key id per docs/format.md §2
    python_system.py keyring-set SERVICE USER VALUE keyring.set_password; VALUE `-` = new key,
                                                    printed on stdout
    python_system.py keyring-get SERVICE USER       keyring.get_password (exit 3 if none)
    python_system.py keyring-delete SERVICE USER    keyring.delete_password
    python_system.py keyring-items SERVICE          JSON list of every Secret Service item
                                                    whose attribute service=SERVICE, in every
                                                    collection: attributes, label, secret
    python_system.py keyring-clear SERVICE          delete all those items; prints the count

Errors: one line on stderr, exit status 1 (3: keyring-get found nothing).
"""

import argparse
import base64
import json
import os
import sys
from contextlib import closing

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import v2_reference  # noqa: E402  (key id of §2, shared with the reference decryptor)

DEFAULT_USER = "aegis_master_key_v2"


def new_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def load_key(args) -> bytes:
    if args.key_file is not None:
        with open(args.key_file, "rb") as f:
            return base64.urlsafe_b64decode(f.read())
    import keyring

    text = keyring.get_password(args.keyring, args.user)
    if text is None:
        raise SystemExit(f"python_system: error: no key in keyring {args.keyring}/{args.user}")
    return base64.urlsafe_b64decode(text)


def cmd_new_key_file(args) -> None:
    fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(new_key_text().encode("ascii"))


def cmd_new_key_text(args) -> None:
    print(new_key_text())


def cmd_encrypt(args) -> None:
    key = load_key(args)
    with open(args.input, "rb") as f:
        data = f.read()
    nonce = os.urandom(12)
    blob = nonce + AESGCM(key).encrypt(nonce, data, None)
    with open(args.output, "wb") as f:
        f.write(blob)


def cmd_decrypt(args) -> None:
    key = load_key(args)
    with open(args.input, "rb") as f:
        blob = f.read()
    data = AESGCM(key).decrypt(blob[:12], blob[12:], None)
    with open(args.output, "wb") as f:
        f.write(data)


def cmd_key_id(args) -> None:
    print(v2_reference.key_id(load_key(args)).hex())


def cmd_keyring_set(args) -> None:
    import keyring

    value = new_key_text() if args.value == "-" else args.value
    keyring.set_password(args.service, args.user, value)
    if args.value == "-":
        print(value)


def cmd_keyring_get(args) -> None:
    import keyring

    value = keyring.get_password(args.service, args.user)
    if value is None:
        print(f"python_system: no item {args.service}/{args.user}", file=sys.stderr)
        raise SystemExit(3)
    print(value)


def cmd_keyring_delete(args) -> None:
    import keyring

    keyring.delete_password(args.service, args.user)


def service_items(conn, service: str):
    import secretstorage

    for coll in secretstorage.get_all_collections(conn):
        if coll.is_locked():
            coll.unlock()
        for item in coll.search_items({"service": service}):
            yield coll, item


def cmd_keyring_items(args) -> None:
    import secretstorage

    out = []
    with closing(secretstorage.dbus_init()) as conn:
        for coll, item in service_items(conn, args.service):
            out.append(
                {
                    "collection": coll.collection_path,
                    "label": item.get_label(),
                    "attributes": item.get_attributes(),
                    "secret": item.get_secret().decode("utf-8", "replace"),
                }
            )
    print(json.dumps(out))


def cmd_keyring_clear(args) -> None:
    import secretstorage

    with closing(secretstorage.dbus_init()) as conn:
        items = [item for _, item in service_items(conn, args.service)]
        for item in items:
            item.delete()
    print(len(items))


def main() -> int:
    p = argparse.ArgumentParser(prog="python_system.py")
    sub = p.add_subparsers(dest="cmd", required=True)

    def keysrc(sp):
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--key-file")
        g.add_argument("--keyring", metavar="SERVICE")
        sp.add_argument("--user", default=DEFAULT_USER)

    sp = sub.add_parser("new-key-file")
    sp.add_argument("path")
    sp.set_defaults(fn=cmd_new_key_file)
    sub.add_parser("new-key-text").set_defaults(fn=cmd_new_key_text)
    for name, fn in (("encrypt", cmd_encrypt), ("decrypt", cmd_decrypt)):
        sp = sub.add_parser(name)
        keysrc(sp)
        sp.add_argument("input")
        sp.add_argument("output")
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("key-id")
    keysrc(sp)
    sp.set_defaults(fn=cmd_key_id)
    sp = sub.add_parser("keyring-set")
    sp.add_argument("service")
    sp.add_argument("user")
    sp.add_argument("value")
    sp.set_defaults(fn=cmd_keyring_set)
    for name, fn in (("keyring-get", cmd_keyring_get), ("keyring-delete", cmd_keyring_delete)):
        sp = sub.add_parser(name)
        sp.add_argument("service")
        sp.add_argument("user")
        sp.set_defaults(fn=fn)
    for name, fn in (("keyring-items", cmd_keyring_items), ("keyring-clear", cmd_keyring_clear)):
        sp = sub.add_parser(name)
        sp.add_argument("service")
        sp.set_defaults(fn=fn)

    args = p.parse_args()
    try:
        args.fn(args)
    except SystemExit:
        raise
    except Exception as e:  # one line, whatever it is
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")
        print(f"python_system: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
