#!/usr/bin/env python3
"""Independent reference decryptor for the AEGIS at-rest formats.

Written only from docs/format.md (the normative spec), with Python `cryptography` primitives;
it shares no code with the Rust implementation. `crates/aegis-cli/tests/interop.rs` runs it
against the frozen vectors and against files the `aegis` binary writes.

Usage:
    v2_reference.py KEYFILE IN OUT     decrypt IN (v2 stream, or v1 blob: §3) to OUT
    v2_reference.py --key-id KEYFILE   print the key id (§2) of the key in KEYFILE
    v2_reference.py --header IN        print the v2 header fields of IN as JSON (§4.1)

KEYFILE holds a master key in its stored form (§1). On any failure the program prints one
line `v2_reference: error: ...` on stderr, exits with status 1 and leaves OUT absent.
"""

import base64
import binascii
import hmac as std_hmac
import json
import os
import sys
import tempfile

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

# §4.1
MAGIC = b"AEGIS\x00"
VERSION = 0x02
SUITE = 0x01
HEADER_LEN = 99
MAC_OFFSET = 67
TAG_LEN = 16
MIN_CHUNK_LOG2 = 12
MAX_CHUNK_LOG2 = 24
# §3
V1_NONCE_LEN = 12
V1_MIN_LEN = V1_NONCE_LEN + TAG_LEN


class Failure(Exception):
    """A one-line error for the user."""


# ---------------------------------------------------------------------------------------- §1
def parse_stored_key(text: str) -> bytes:
    """The stored form: URL-safe Base64 (standard alphabet, missing padding and surrounding
    whitespace also accepted) of exactly 32 bytes."""
    t = text.strip()
    if not t:
        raise Failure("key: empty")
    urlsafe = any(c in t for c in "-_")
    standard = any(c in t for c in "+/")
    if urlsafe and standard:
        raise Failure("key: mixes the URL-safe and standard Base64 alphabets")
    t = t.rstrip("=")
    if standard:
        t = t.replace("+", "-").replace("/", "_")
    t += "=" * (-len(t) % 4)
    try:
        raw = base64.b64decode(t.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise Failure(f"key: not valid Base64 ({e})") from None
    if len(raw) != 32:
        raise Failure(f"key: decodes to {len(raw)} bytes, not 32")
    return raw


def read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as e:
        raise Failure(f"{path}: {e.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Failure(f"{path}: key file is not text") from None
    return parse_stored_key(text)


# ---------------------------------------------------------------------------------------- §2
def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand(HKDF-Extract(salt, IKM), info, L) with SHA-256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM)."""
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def key_id(master: bytes) -> bytes:
    """§2: HKDF-Expand(HKDF-Extract(salt = "", IKM = K), "aegis key id", 8)."""
    kid = hkdf_expand(hkdf_extract(b"", master), b"aegis key id", 8)
    # Cross-check the two-step form against the one-shot HKDF (same RFC 5869 computation).
    assert kid == hkdf(b"", master, b"aegis key id", 8)
    return kid


# ---------------------------------------------------------------------------------------- §4.1
def parse_header(header: bytes) -> dict:
    if len(header) < HEADER_LEN:
        raise Failure(f"decryption failed: file too short for a v2 header ({len(header)} bytes)")
    if header[0:6] != MAGIC:
        raise Failure("not a v2 file (no magic)")
    version = header[6]
    if version != VERSION:
        raise Failure(f"unsupported: v2 header version {version}")
    suite = header[7]
    if suite != SUITE:
        raise Failure(f"unsupported: suite {suite}")
    c = header[8]
    if not MIN_CHUNK_LOG2 <= c <= MAX_CHUNK_LOG2:
        raise Failure(f"malformed: chunk log2 {c} outside {MIN_CHUNK_LOG2}..{MAX_CHUNK_LOG2}")
    if header[9:12] != b"\x00\x00\x00":
        raise Failure("malformed: reserved bytes are not zero")
    return {
        "version": version,
        "suite": suite,
        "chunk_log2": c,
        "key_id": header[12:20],
        "nonce_prefix": header[20:27],
        "wrapped_dk": header[27:67],
        "mac": header[67:99],
    }


def open_header(master: bytes, header: bytes) -> tuple:
    """Check the key id, unwrap DK, verify the MAC. Returns (fields, K_pay)."""
    h = parse_header(header)
    if h["key_id"] != key_id(master):
        raise Failure(f"key {h['key_id'].hex()} is not in the keyset")
    kek = hkdf(b"", master, b"aegis v2 key wrap", 32)
    try:
        dk = aes_key_unwrap(kek, h["wrapped_dk"])
    except InvalidUnwrap:
        raise Failure("decryption failed") from None
    if len(dk) != 32:
        raise Failure("decryption failed")
    prk_f = hkdf_extract(h["nonce_prefix"], dk)
    k_pay = hkdf_expand(prk_f, b"aegis v2 payload", 32)
    k_hdr = hkdf_expand(prk_f, b"aegis v2 header", 32)
    # Cross-check: HKDF with salt = P over IKM = DK is the same derivation.
    assert k_hdr == hkdf(h["nonce_prefix"], dk, b"aegis v2 header", 32)
    mac = hmac.HMAC(k_hdr, hashes.SHA256())
    mac.update(header[0:MAC_OFFSET])
    expected = mac.finalize()
    if not std_hmac.compare_digest(expected, h["mac"]):
        raise Failure("decryption failed")
    return h, k_pay


# ---------------------------------------------------------------------------------------- §4.2
def decrypt_v2(master: bytes, fin, fout) -> int:
    header = fin.read(HEADER_LEN)
    h, k_pay = open_header(master, header)
    chunk = 1 << h["chunk_log2"]
    seg = chunk + TAG_LEN
    gcm = AESGCM(k_pay)
    prefix = h["nonce_prefix"]
    total = 0
    i = 0
    cur = fin.read(seg)
    if len(cur) == 0:
        # Nothing after the header: there is no last chunk.
        raise Failure("decryption failed")
    while True:
        if i > 0xFFFFFFFF:
            raise Failure("decryption failed: too many chunks")
        nxt = fin.read(seg) if len(cur) == seg else b""
        last = len(nxt) == 0
        if len(cur) < TAG_LEN:
            raise Failure("decryption failed")
        if not last and len(cur) != seg:
            raise Failure("decryption failed")
        nonce = prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        try:
            pt = gcm.decrypt(nonce, cur, None)
        except InvalidTag:
            raise Failure("decryption failed") from None
        if len(pt) == 0 and not (last and i == 0):
            # Only the single chunk of an empty plaintext may be empty.
            raise Failure("decryption failed: empty chunk")
        fout.write(pt)
        total += len(pt)
        if last:
            return total
        cur = nxt
        i += 1


# ---------------------------------------------------------------------------------------- §3
def decrypt_v1(master: bytes, data: bytes, fout) -> int:
    if len(data) < V1_MIN_LEN:
        raise Failure(f"malformed: v1 blob of {len(data)} bytes (minimum {V1_MIN_LEN})")
    try:
        pt = AESGCM(master).decrypt(data[:V1_NONCE_LEN], data[V1_NONCE_LEN:], None)
    except InvalidTag:
        raise Failure("decryption failed") from None
    fout.write(pt)
    return len(pt)


def decrypt_file(master: bytes, src: str, dst: str) -> int:
    out_dir = os.path.dirname(os.path.abspath(dst))
    try:
        fin = open(src, "rb")
    except OSError as e:
        raise Failure(f"{src}: {e.strerror}") from None
    fd, tmp = tempfile.mkstemp(prefix=".v2ref-", dir=out_dir)
    ok = False
    try:
        with fin, os.fdopen(fd, "wb") as fout:
            start = fin.read(len(MAGIC))
            if start == MAGIC:  # §3: v2 iff the file begins with the magic
                fin.seek(0)
                n = decrypt_v2(master, fin, fout)
            else:
                n = decrypt_v1(master, start + fin.read(), fout)
        os.replace(tmp, dst)
        ok = True
        return n
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def main(argv: list) -> int:
    try:
        if len(argv) == 2 and argv[0] == "--key-id":
            print(key_id(read_key_file(argv[1])).hex())
            return 0
        if len(argv) == 2 and argv[0] == "--header":
            with open(argv[1], "rb") as f:
                h = parse_header(f.read(HEADER_LEN))
            print(json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in h.items()}))
            return 0
        if len(argv) != 3:
            raise Failure("usage: v2_reference.py KEYFILE IN OUT | --key-id KEYFILE | --header IN")
        master = read_key_file(argv[0])
        decrypt_file(master, argv[1], argv[2])
        return 0
    except Failure as e:
        msg = str(e).replace("\n", " ")
        print(f"v2_reference: error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"v2_reference: error: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    except Exception as e:  # anything unexpected is still one line and a failure
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")
        print(f"v2_reference: error: internal: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
