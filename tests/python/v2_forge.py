#!/usr/bin/env python3
"""Reference v2 *encryptor*, written only from docs/format.md §4, and a forger of files that
break one rule of the spec while carrying a valid header MAC and valid chunk tags (so that only
the rule itself can make a reader refuse them).

Usage:
    v2_forge.py KEYFILE IN OUT [--chunk-log2 C] [--version V] [--suite S] [--reserved HEX6]
                [--empty-last] [--key-id HEX16]

Without options it writes a conforming v2 file (C = 16). Rule-breaking options:
    --chunk-log2 C   any value 0..255 (the spec allows 12..24)
    --version V      header version byte (spec: 2)
    --suite S        suite byte (spec: 1)
    --reserved HEX6  the 3 reserved bytes (spec: 000000)
    --empty-last     after the last full chunk, add an empty chunk sealed as the last one (the
                     spec allows an empty chunk only when the whole plaintext is empty); IN must
                     be non-empty with a length that is a multiple of the chunk size
    --key-id HEX16   key id field (spec: the id of the master key); the MAC is still valid
"""

import argparse
import os
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import v2_reference as ref  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(prog="v2_forge.py")
    p.add_argument("keyfile")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--chunk-log2", type=int, default=16)
    p.add_argument("--version", type=int, default=ref.VERSION)
    p.add_argument("--suite", type=int, default=ref.SUITE)
    p.add_argument("--reserved", default="000000")
    p.add_argument("--empty-last", action="store_true")
    p.add_argument("--key-id")
    a = p.parse_args()

    master = ref.read_key_file(a.keyfile)
    with open(a.input, "rb") as f:
        data = f.read()
    c = a.chunk_log2
    # Chunk size for cutting the plaintext; a forged out-of-range c still needs some size.
    size = 1 << min(max(c, 1), 24)

    dk = os.urandom(32)
    prefix = os.urandom(7)
    kek = ref.hkdf(b"", master, b"aegis v2 key wrap", 32)
    kid = bytes.fromhex(a.key_id) if a.key_id else ref.key_id(master)
    reserved = bytes.fromhex(a.reserved)
    assert len(kid) == 8 and len(reserved) == 3
    head = (
        ref.MAGIC
        + bytes([a.version, a.suite, c])
        + reserved
        + kid
        + prefix
        + aes_key_wrap(kek, dk)
    )
    assert len(head) == ref.MAC_OFFSET
    prk_f = ref.hkdf_extract(prefix, dk)
    k_pay = ref.hkdf_expand(prk_f, b"aegis v2 payload", 32)
    k_hdr = ref.hkdf_expand(prk_f, b"aegis v2 header", 32)
    mac = hmac.HMAC(k_hdr, hashes.SHA256())
    mac.update(head)
    header = head + mac.finalize()
    assert len(header) == ref.HEADER_LEN

    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    if a.empty_last:
        if not data or len(data) % size:
            print("v2_forge: error: --empty-last needs a non-empty multiple of the chunk size",
                  file=sys.stderr)
            return 1
        chunks.append(b"")
    gcm = AESGCM(k_pay)
    with open(a.output, "wb") as f:
        f.write(header)
        for i, chunk in enumerate(chunks):
            flag = b"\x01" if i == len(chunks) - 1 else b"\x00"
            f.write(gcm.encrypt(prefix + i.to_bytes(4, "big") + flag, chunk, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
