//! The v2 stream: a 99-byte header, then AES-256-GCM chunks (STREAM construction). Normative
//! description with test vectors: `docs/format.md`.
//!
//! ```text
//! header  = magic "AEGIS\0" ‖ version 2 ‖ suite 1 ‖ log2(chunk size) ‖ 0 0 0
//!         ‖ key id (8) ‖ nonce prefix (7) ‖ AES-256-KW(KEK, data key) (40) ‖ HMAC-SHA256 (32)
//! chunk i = AES-256-GCM(payload key, nonce = prefix ‖ BE32(i) ‖ last?1:0, aad = "", data)
//! ```
//!
//! Every file has its own random data key; the master key only wraps it, so rotating the master
//! key rewrites 99 bytes ([`Header::rewrap`]). Memory is bounded by one batch of chunks
//! (about 4 MiB) whatever the file size; batches are sealed and opened on all cores.

use std::io::{self, Read, Write};

use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::fsutil::read_full;
use crate::gcm::{Gcm, NONCE, TAG};
use crate::key::{KEY_LEN, KeyId, SecretKey, fill_random, hkdf_expand};
use crate::keyset::Keyset;

/// The first six bytes of every v2 file.
pub const MAGIC: [u8; 6] = *b"AEGIS\0";
/// Format version byte.
pub const VERSION: u8 = 2;
/// Algorithm suite 1: AES-256-GCM chunks, HKDF-SHA256, AES-256-KW, HMAC-SHA256.
pub const SUITE: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 99;
/// Default log2 of the chunk size (64 KiB).
pub const DEFAULT_CHUNK_LOG2: u8 = 16;
/// Smallest allowed log2 chunk size (4 KiB).
pub const MIN_CHUNK_LOG2: u8 = 12;
/// Largest allowed log2 chunk size (16 MiB).
pub const MAX_CHUNK_LOG2: u8 = 24;

const PREFIX_LEN: usize = 7;
const WRAPPED_LEN: usize = KEY_LEN + 8;
const MAC_LEN: usize = 32;
const MAC_OFFSET: usize = HEADER_LEN - MAC_LEN;
/// Bytes of plaintext processed per batch (the memory bound).
const BATCH_BYTES: usize = 4 << 20;

const INFO_PAYLOAD: &[u8] = b"aegis v2 payload";
const INFO_HEADER: &[u8] = b"aegis v2 header";

/// A parsed v2 header. Parsing checks structure only; [`Header::open`] authenticates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    chunk_log2: u8,
    key_id: KeyId,
    nonce_prefix: [u8; PREFIX_LEN],
    wrapped_key: [u8; WRAPPED_LEN],
    mac: [u8; MAC_LEN],
}

/// Per-file keys recovered from (or created with) a header.
pub(crate) struct FileKeys {
    data_key: SecretKey,
    payload: Gcm,
    mac_key: hmac::Key,
}

impl FileKeys {
    fn derive(data_key: SecretKey, nonce_prefix: &[u8; PREFIX_LEN]) -> Result<Self> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonce_prefix).extract(data_key.expose());
        let mut payload = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_expand(&prk, INFO_PAYLOAD, payload.as_mut());
        let mut mac = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_expand(&prk, INFO_HEADER, mac.as_mut());
        Ok(FileKeys {
            data_key,
            payload: Gcm::new(&payload)?,
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
        })
    }
}

/// Does `prefix` start like a v2 file?
pub fn has_magic(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

impl Header {
    /// Parse the fixed-size header (structure only; no key needed).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Malformed("truncated v2 header"))?;
        let (magic, rest) = b
            .split_first_chunk::<6>()
            .ok_or(Error::Malformed("header"))?;
        if *magic != MAGIC {
            return Err(Error::Malformed("not an AEGIS v2 file (bad magic)"));
        }
        let [version, suite, chunk_log2, r0, r1, r2, rest @ ..] = rest else {
            return Err(Error::Malformed("truncated v2 header"));
        };
        if (*version, *suite) != (VERSION, SUITE) {
            return Err(Error::Unsupported {
                version: *version,
                suite: *suite,
            });
        }
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(chunk_log2) {
            return Err(Error::Malformed("v2 chunk size out of range"));
        }
        if [*r0, *r1, *r2] != [0, 0, 0] {
            return Err(Error::Malformed("v2 reserved bytes are not zero"));
        }
        let (key_id, rest) = rest
            .split_first_chunk::<8>()
            .ok_or(Error::Malformed("header"))?;
        let (prefix, rest) = rest
            .split_first_chunk::<PREFIX_LEN>()
            .ok_or(Error::Malformed("header"))?;
        let (wrapped, rest) = rest
            .split_first_chunk::<WRAPPED_LEN>()
            .ok_or(Error::Malformed("header"))?;
        let mac: [u8; MAC_LEN] = rest.try_into().map_err(|_| Error::Malformed("header"))?;
        Ok(Header {
            chunk_log2: *chunk_log2,
            key_id: KeyId(*key_id),
            nonce_prefix: *prefix,
            wrapped_key: *wrapped,
            mac,
        })
    }

    /// Serialize.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..MAC_OFFSET].copy_from_slice(&self.authenticated_part());
        b[MAC_OFFSET..].copy_from_slice(&self.mac);
        b
    }

    fn authenticated_part(&self) -> [u8; MAC_OFFSET] {
        let mut b = [0u8; MAC_OFFSET];
        let fields: [&[u8]; 7] = [
            &MAGIC,
            &[VERSION, SUITE, self.chunk_log2],
            &[0, 0, 0],
            &self.key_id.0,
            &self.nonce_prefix,
            &self.wrapped_key,
            &[],
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = b.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        b
    }

    /// The master key this file is encrypted under.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        1usize << self.chunk_log2
    }

    /// Plaintext length of a well-formed file of `total_len` bytes (header included), or `None`
    /// if that length cannot be a complete v2 file.
    pub fn plaintext_len(&self, total_len: u64) -> Option<u64> {
        let body = total_len.checked_sub(HEADER_LEN as u64)?;
        let sealed = (self.chunk_size() + TAG) as u64;
        let full = body / sealed;
        let rem = body % sealed;
        match (full, rem) {
            (0, 0) => None,
            (_, 0) => Some(full * self.chunk_size() as u64),
            (0, r) if r == TAG as u64 => Some(0),
            (_, r) if r > TAG as u64 => Some(full * self.chunk_size() as u64 + r - TAG as u64),
            _ => None,
        }
    }

    /// A new header and file keys under `master`.
    fn create(master: &SecretKey, chunk_log2: u8) -> Result<(Self, FileKeys)> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(Error::Malformed("v2 chunk size out of range"));
        }
        let mut prefix = [0u8; PREFIX_LEN];
        fill_random(&mut prefix)?;
        let keys = FileKeys::derive(SecretKey::generate()?, &prefix)?;
        let mut h = Header {
            chunk_log2,
            key_id: master.id(),
            nonce_prefix: prefix,
            wrapped_key: wrap(master, &keys.data_key)?,
            mac: [0; MAC_LEN],
        };
        h.seal_mac(&keys);
        Ok((h, keys))
    }

    fn seal_mac(&mut self, keys: &FileKeys) {
        let tag = hmac::sign(&keys.mac_key, &self.authenticated_part());
        self.mac.copy_from_slice(tag.as_ref());
    }

    /// Unwrap the data key with `master` and authenticate the header.
    pub(crate) fn open(&self, master: &SecretKey) -> Result<FileKeys> {
        if master.id() != self.key_id {
            return Err(Error::UnknownKey {
                key_id: self.key_id,
            });
        }
        let kek = master.kek();
        let kek =
            AesKek::new(&AES_256, kek.as_ref()).map_err(|_| Error::Primitive("AES-KW key"))?;
        let mut dk = Zeroizing::new([0u8; KEY_LEN]);
        kek.unwrap(&self.wrapped_key, dk.as_mut())
            .map_err(|_| Error::Decrypt)?;
        let keys = FileKeys::derive(SecretKey::from_bytes(*dk), &self.nonce_prefix)?;
        hmac::verify(&keys.mac_key, &self.authenticated_part(), &self.mac)
            .map_err(|_| Error::Decrypt)?;
        Ok(keys)
    }

    /// Authenticate with the keyset (the key the header names).
    pub(crate) fn open_with(&self, keys: &Keyset) -> Result<FileKeys> {
        let master = keys.decryption_key(self.key_id).ok_or(Error::UnknownKey {
            key_id: self.key_id,
        })?;
        self.open(master)
    }

    /// The same file under another master key: the data key re-wrapped, nothing else changed
    /// (the chunks stay valid). Authenticates the header with `keys` first.
    pub fn rewrap(&self, keys: &Keyset, new_master: &SecretKey) -> Result<Header> {
        let file = self.open_with(keys)?;
        let mut h = Header {
            chunk_log2: self.chunk_log2,
            key_id: new_master.id(),
            nonce_prefix: self.nonce_prefix,
            wrapped_key: wrap(new_master, &file.data_key)?,
            mac: [0; MAC_LEN],
        };
        h.seal_mac(&file);
        Ok(h)
    }

    /// Check the header with the keyset (unwrap + MAC) without reading any chunk.
    pub fn verify(&self, keys: &Keyset) -> Result<()> {
        self.open_with(keys).map(|_| ())
    }
}

fn wrap(master: &SecretKey, data_key: &SecretKey) -> Result<[u8; WRAPPED_LEN]> {
    let kek = master.kek();
    let kek = AesKek::new(&AES_256, kek.as_ref()).map_err(|_| Error::Primitive("AES-KW key"))?;
    let mut out = [0u8; WRAPPED_LEN];
    kek.wrap(data_key.expose(), &mut out)
        .map_err(|_| Error::Primitive("AES-KW wrap"))?;
    Ok(out)
}

fn chunk_nonce(prefix: &[u8; PREFIX_LEN], counter: u32, last: bool) -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..NONCE - 1].copy_from_slice(&counter.to_be_bytes());
    n[NONCE - 1] = u8::from(last);
    n
}

/// Options for new v2 files.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// log2 of the chunk size, 12..=24.
    pub chunk_log2: u8,
    /// Seal and open the chunks of a batch on all cores (rayon's pool).
    pub parallel: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_log2: DEFAULT_CHUNK_LOG2,
            parallel: true,
        }
    }
}

/// Chunks per batch for a chunk size: about [`BATCH_BYTES`] of plaintext, at least one chunk.
fn slots_for(chunk: usize) -> usize {
    (BATCH_BYTES / chunk).max(1)
}

/// The STREAM layer shared by every reader and writer: seals or opens a batch of chunks laid out
/// in slots of `chunk + TAG` bytes, keeping the chunk counter.
struct ChunkCipher<'k> {
    gcm: &'k Gcm,
    prefix: [u8; PREFIX_LEN],
    chunk: usize,
    parallel: bool,
    /// Index of the next chunk.
    counter: u32,
    /// The last chunk has been sealed or opened.
    done: bool,
}

impl<'k> ChunkCipher<'k> {
    fn new(keys: &'k FileKeys, prefix: [u8; PREFIX_LEN], chunk_log2: u8, parallel: bool) -> Self {
        ChunkCipher {
            gcm: &keys.payload,
            prefix,
            chunk: 1usize << chunk_log2,
            parallel,
            counter: 0,
            done: false,
        }
    }

    fn sealed(&self) -> usize {
        self.chunk + TAG
    }

    /// Reserve `n` chunk indices.
    fn take(&mut self, n: usize, last: bool) -> Result<u32> {
        if self.done {
            return Err(Error::Malformed("data after the last chunk"));
        }
        let first = self.counter;
        let end = u64::from(first) + n as u64;
        let limit = u64::from(u32::MAX) + 1;
        if end > limit || (end == limit && !last) {
            return Err(Error::TooLarge("more than 2^32 chunks"));
        }
        self.counter = first.wrapping_add(n as u32);
        self.done = last;
        Ok(first)
    }

    /// Seal `plain_len` bytes staged in the slots of `region` (a multiple of the chunk size
    /// unless `last`); returns the number of sealed bytes, contiguous from the start of
    /// `region`.
    fn seal(&mut self, region: &mut [u8], plain_len: usize, last: bool) -> Result<usize> {
        let chunk = self.chunk;
        let sealed = self.sealed();
        let n = if last {
            plain_len.div_ceil(chunk).max(1)
        } else {
            if !plain_len.is_multiple_of(chunk) {
                return Err(Error::Malformed("partial chunk before the end"));
            }
            plain_len / chunk
        };
        let first = self.take(n, last)?;
        let (gcm, prefix) = (self.gcm, self.prefix);
        let region = region
            .get_mut(..n * sealed)
            .ok_or(Error::Malformed("batch geometry"))?;
        for_each_slot(region, sealed, self.parallel, |i, slot| {
            let is_last = last && i + 1 == n;
            let len = if is_last {
                plain_len - i * chunk
            } else {
                chunk
            };
            let nonce = chunk_nonce(&prefix, first + i as u32, is_last);
            let (pt, rest) = slot.split_at_mut(len);
            let tag = gcm.seal(nonce, &[], pt)?;
            rest.get_mut(..TAG)
                .ok_or(Error::Malformed("batch geometry"))?
                .copy_from_slice(&tag);
            Ok(())
        })?;
        Ok(plain_len + n * TAG)
    }

    /// Authenticate and decrypt the sealed chunks of `region` in place (`last`: the stream ends
    /// with them). Returns the chunk count and the plaintext length of the final chunk; chunk
    /// `i`'s plaintext is at `i * sealed`.
    fn open(&mut self, region: &mut [u8], last: bool) -> Result<(usize, usize)> {
        let sealed = self.sealed();
        let full = region.len() / sealed;
        let rem = region.len() % sealed;
        let (n, last_len) = if !last {
            if rem != 0 || full == 0 {
                return Err(Error::Malformed("batch geometry"));
            }
            (full, self.chunk)
        } else if rem == 0 {
            if full == 0 {
                return Err(Error::Decrypt); // no final chunk: truncated
            }
            (full, self.chunk)
        } else if rem < TAG {
            return Err(Error::Decrypt); // cut inside a tag
        } else {
            (full + 1, rem - TAG)
        };
        if last && last_len == 0 && (self.counter > 0 || n > 1) {
            // Writers never emit an empty final chunk except for an empty file.
            return Err(Error::Decrypt);
        }
        let first = self.take(n, last)?;
        let (gcm, prefix) = (self.gcm, self.prefix);
        for_each_slot(region, sealed, self.parallel, |i, slot| {
            let is_last = last && i + 1 == n;
            let nonce = chunk_nonce(&prefix, first + i as u32, is_last);
            gcm.open(nonce, &[], slot).map(|_| ())
        })?;
        Ok((n, last_len))
    }
}

/// Run `f` over `(index, slot)` pairs, on all cores when `parallel` and it pays.
fn for_each_slot<F>(slots: &mut [u8], sealed: usize, parallel: bool, f: F) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync + Send,
{
    if parallel && slots.len() >= 4 * sealed {
        slots
            .par_chunks_mut(sealed)
            .enumerate()
            .try_for_each(|(i, s)| f(i, s))
    } else {
        slots
            .chunks_mut(sealed)
            .enumerate()
            .try_for_each(|(i, s)| f(i, s))
    }
}

/// Read into the plaintext areas of consecutive slots (one `readv` for the whole batch where
/// the reader supports it) until `len` bytes or end of input; returns the bytes read.
fn read_into_slots<R: Read + ?Sized>(
    input: &mut R,
    buf: &mut [u8],
    chunk: usize,
    sealed: usize,
    len: usize,
) -> io::Result<usize> {
    let mut got = 0;
    while got < len {
        let mut slices: Vec<io::IoSliceMut<'_>> = Vec::new();
        let mut want = len - got;
        let mut at = got;
        for slot in buf.chunks_mut(sealed).skip(got / chunk) {
            if want == 0 {
                break;
            }
            let off = at % chunk;
            let n = want.min(chunk - off);
            if let Some(area) = slot.get_mut(off..off + n) {
                slices.push(io::IoSliceMut::new(area));
            }
            want -= n;
            at += n;
        }
        match input.read_vectored(&mut slices) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Write the plaintext of `n` opened slots (the last one `last_len` bytes) with `writev`.
fn write_slots<W: Write + ?Sized>(
    out: &mut W,
    buf: &[u8],
    chunk: usize,
    sealed: usize,
    n: usize,
    last_len: usize,
) -> io::Result<u64> {
    let mut slices: Vec<io::IoSlice<'_>> = buf
        .chunks(sealed)
        .take(n)
        .enumerate()
        .map(|(i, slot)| {
            let len = if i + 1 == n { last_len } else { chunk };
            io::IoSlice::new(slot.get(..len).unwrap_or_default())
        })
        .collect();
    let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
    let mut rest = &mut slices[..];
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => io::IoSlice::advance_slices(&mut rest, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Streaming v2 encryption into any `Write`. Call [`Encryptor::finish`] at the end: a stream
/// that is dropped unfinished is detected as truncated by the decryptor.
pub struct Encryptor<W: Write> {
    out: W,
    keys: FileKeys,
    prefix: [u8; PREFIX_LEN],
    chunk_log2: u8,
    parallel: bool,
    counter: u32,
    /// `slots` slots of `chunk + TAG` bytes.
    buf: Vec<u8>,
    /// Plaintext bytes staged (slot-major).
    staged: usize,
    /// A seal or write failed: the stream is broken and refuses further use.
    failed: bool,
}

impl<W: Write> Encryptor<W> {
    /// Write a fresh header under `master` and return the encryptor.
    pub fn new(mut out: W, master: &SecretKey, opts: Options) -> Result<Self> {
        let (header, keys) = Header::create(master, opts.chunk_log2)?;
        out.write_all(&header.to_bytes())
            .map_err(|e| Error::io("writing v2 header", e))?;
        let chunk = 1usize << opts.chunk_log2;
        Ok(Encryptor {
            out,
            keys,
            prefix: header.nonce_prefix,
            chunk_log2: opts.chunk_log2,
            parallel: opts.parallel,
            counter: 0,
            buf: vec![0u8; slots_for(chunk) * (chunk + TAG)],
            staged: 0,
            failed: false,
        })
    }

    fn chunk(&self) -> usize {
        1usize << self.chunk_log2
    }

    fn capacity(&self) -> usize {
        slots_for(self.chunk()) * self.chunk()
    }

    /// Encrypt everything `input` yields, then finish.
    pub fn encrypt_from<R: Read + ?Sized>(mut self, input: &mut R) -> Result<W> {
        let (chunk, sealed, cap) = (self.chunk(), self.chunk() + TAG, self.capacity());
        loop {
            if self.staged == cap {
                // Peek one byte: a full batch is sealed as non-final only if more data follows.
                let mut one = [0u8; 1];
                let n = read_full(input, &mut one).map_err(|e| Error::io("reading input", e))?;
                if n == 0 {
                    break;
                }
                self.seal_staged(false)?;
                self.stage(&one);
                continue;
            }
            let want = cap - self.staged;
            let got = read_into_slots_from(input, &mut self.buf, chunk, sealed, self.staged, cap)
                .map_err(|e| Error::io("reading input", e))?;
            self.staged += got;
            if got < want {
                break;
            }
        }
        self.finish()
    }

    fn stage(&mut self, mut data: &[u8]) {
        let chunk = self.chunk();
        let sealed = chunk + TAG;
        while !data.is_empty() {
            let slot = self.staged / chunk;
            let off = self.staged % chunk;
            let start = slot * sealed + off;
            let n = data.len().min(chunk - off);
            if let (Some(dst), Some(src)) = (self.buf.get_mut(start..start + n), data.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.staged += n;
            data = data.get(n..).unwrap_or_default();
        }
    }

    fn seal_staged(&mut self, last: bool) -> Result<()> {
        if self.failed {
            return Err(Error::Malformed(
                "the stream failed earlier and cannot continue",
            ));
        }
        // Whatever fails below leaves chunks sealed in place or half written: poison first.
        self.failed = true;
        let mut cc = ChunkCipher::new(&self.keys, self.prefix, self.chunk_log2, self.parallel);
        cc.counter = self.counter;
        let n = cc.seal(&mut self.buf, self.staged, last)?;
        self.counter = cc.counter;
        let bytes = self
            .buf
            .get(..n)
            .ok_or(Error::Malformed("batch geometry"))?;
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing encrypted data", e))?;
        self.staged = 0;
        self.failed = false;
        Ok(())
    }

    /// Seal the final chunk, flush, and return the writer.
    pub fn finish(mut self) -> Result<W> {
        self.seal_staged(true)?;
        self.out
            .flush()
            .map_err(|e| Error::io("flushing encrypted data", e))?;
        Ok(self.out)
    }
}

/// [`read_into_slots`] starting at plaintext offset `from` of the batch.
fn read_into_slots_from<R: Read + ?Sized>(
    input: &mut R,
    buf: &mut [u8],
    chunk: usize,
    sealed: usize,
    from: usize,
    to: usize,
) -> io::Result<usize> {
    let start_slot = from / chunk;
    let region = buf.get_mut(start_slot * sealed..).unwrap_or_default();
    let skip = from % chunk;
    if skip == 0 {
        return read_into_slots(input, region, chunk, sealed, to - from);
    }
    // Finish the partly filled slot first, then whole slots.
    let first = region
        .get_mut(skip..chunk)
        .ok_or_else(|| io::Error::other("batch geometry"))?;
    let n = read_full(input, first)?;
    if n < chunk - skip {
        return Ok(n);
    }
    let rest = region.get_mut(sealed..).unwrap_or_default();
    Ok(n + read_into_slots(input, rest, chunk, sealed, to - from - n)?)
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let cap = self.capacity();
        if self.staged == cap && !data.is_empty() {
            self.seal_staged(false).map_err(io::Error::other)?;
        }
        let n = data.len().min(cap - self.staged);
        self.stage(data.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are sealed only when full; flushing the inner writer is all we can do.
        self.out.flush()
    }
}

/// Streaming v2 decryption from any `Read`. Each chunk is authenticated before any of its
/// plaintext is returned; a stream cut at any point (even at a chunk boundary) ends in an error,
/// never in a silent short read. Write to a temporary file and keep it only if every read
/// succeeded.
pub struct Decryptor<R: Read> {
    input: R,
    header: Header,
    keys: FileKeys,
    parallel: bool,
    counter: u32,
    /// `slots` sealed chunks plus one look-ahead byte. Bulk buffers are not zeroized: they
    /// hold the plaintext this reader hands out anyway, and wiping megabytes per stream costs
    /// more than it protects (keys, by contrast, are always zeroized).
    buf: Vec<u8>,
    /// Ciphertext bytes buffered (including a carried look-ahead byte).
    filled: usize,
    /// Opened slots ready to serve: count, plaintext length of the last one.
    ready: (usize, usize),
    /// Next slot to serve and the bytes of it already served.
    cur: usize,
    pos: usize,
    state: DecState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DecState {
    Streaming,
    /// The last chunk has been opened.
    Done,
    Failed,
}

impl<R: Read> Decryptor<R> {
    /// Read and authenticate the header with the key it names.
    pub fn new(mut input: R, keys: &Keyset) -> Result<Self> {
        let mut hb = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut hb).map_err(|e| Error::io("reading v2 header", e))?;
        let header = Header::parse(hb.get(..n).unwrap_or_default())?;
        let file_keys = header.open_with(keys)?;
        Ok(Self::with_keys(input, header, file_keys))
    }

    pub(crate) fn with_keys(input: R, header: Header, keys: FileKeys) -> Self {
        let chunk = header.chunk_size();
        Decryptor {
            input,
            buf: vec![0u8; slots_for(chunk) * (chunk + TAG) + 1],
            header,
            keys,
            parallel: true,
            counter: 0,
            filled: 0,
            ready: (0, 0),
            cur: 0,
            pos: 0,
            state: DecState::Streaming,
        }
    }

    /// Use one core only.
    pub fn sequential(mut self) -> Self {
        self.parallel = false;
        self
    }

    /// The authenticated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn sealed(&self) -> usize {
        self.header.chunk_size() + TAG
    }

    fn slot_len(&self, i: usize) -> usize {
        if i + 1 == self.ready.0 {
            self.ready.1
        } else {
            self.header.chunk_size()
        }
    }

    /// Decrypt the whole stream into `out`; returns the plaintext length.
    pub fn decrypt_to<W: Write + ?Sized>(mut self, out: &mut W) -> Result<u64> {
        let mut total = 0u64;
        loop {
            if self.cur >= self.ready.0 {
                if self.state == DecState::Done {
                    return Ok(total);
                }
                self.next_batch()?;
                continue;
            }
            let (chunk, sealed) = (self.header.chunk_size(), self.sealed());
            let (n, last_len) = self.ready;
            total += write_slots(out, &self.buf, chunk, sealed, n, last_len)
                .map_err(|e| Error::io("writing decrypted data", e))?;
            self.cur = n;
        }
    }

    /// Read, authenticate and decrypt the next batch of chunks.
    fn next_batch(&mut self) -> Result<()> {
        if self.state == DecState::Failed {
            return Err(Error::Decrypt);
        }
        let r = self.next_batch_inner();
        if r.is_err() {
            self.state = DecState::Failed;
            self.ready = (0, 0);
            self.cur = 0;
        }
        r
    }

    fn next_batch_inner(&mut self) -> Result<()> {
        let cap = self.buf.len() - 1;
        // Carry the look-ahead byte of the previous batch.
        if self.filled == cap + 1 {
            let b = self.buf.get(cap).copied().unwrap_or(0);
            if let Some(first) = self.buf.first_mut() {
                *first = b;
            }
            self.filled = 1;
        }
        let dst = self
            .buf
            .get_mut(self.filled..)
            .ok_or(Error::Malformed("batch geometry"))?;
        let n =
            read_full(&mut self.input, dst).map_err(|e| Error::io("reading encrypted data", e))?;
        self.filled += n;
        let at_eof = self.filled <= cap;
        let body = self.filled.min(cap);
        let mut cc = ChunkCipher::new(
            &self.keys,
            self.header.nonce_prefix,
            self.header.chunk_log2,
            self.parallel,
        );
        cc.counter = self.counter;
        let region = self
            .buf
            .get_mut(..body)
            .ok_or(Error::Malformed("batch geometry"))?;
        self.ready = cc.open(region, at_eof)?;
        self.counter = cc.counter;
        self.cur = 0;
        self.pos = 0;
        if at_eof {
            self.state = DecState::Done;
        }
        Ok(())
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cur < self.ready.0 {
                let len = self.slot_len(self.cur);
                if self.pos < len {
                    let start = self.cur * self.sealed() + self.pos;
                    let n = out.len().min(len - self.pos);
                    let src = self
                        .buf
                        .get(start..start + n)
                        .ok_or_else(|| io::Error::other("batch geometry"))?;
                    if let Some(dst) = out.get_mut(..n) {
                        dst.copy_from_slice(src);
                    }
                    self.pos += n;
                    return Ok(n);
                }
                self.cur += 1;
                self.pos = 0;
                continue;
            }
            match self.state {
                DecState::Done => return Ok(0),
                DecState::Failed => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, Error::Decrypt));
                }
                DecState::Streaming => self
                    .next_batch()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            }
        }
    }
}

/// Buffers in flight in a pipeline (reader, held-back batch, sealer, writer).
const PIPE_BUFFERS: usize = 4;
/// Bytes written between two background `fdatasync`s of a file output, so the disk writes while
/// we compute and the final fsync has little left to do.
const SYNC_EVERY: usize = 64 << 20;

/// A pipeline batch buffer (not zeroized: see [`Decryptor`]'s buffer).
type Buf = Vec<u8>;

/// Where a pipeline writes: any writer, plus optionally a handle on the output file to sync in
/// the background.
pub struct Sink<W> {
    /// The destination.
    pub writer: W,
    /// A clone of the destination file, `fdatasync`ed every 64 MiB by a helper thread.
    pub sync: Option<std::fs::File>,
}

/// Run `reader → transform (this thread) → writer` over [`PIPE_BUFFERS`] batch buffers of
/// `buf_len` bytes. `read` fills a buffer and returns how many bytes it holds (`full` means a
/// full batch: more may follow); `transform` turns the held-back batch into what `write` needs,
/// told whether it is the last one.
fn pipeline<R, W, T, FR, FT, FW>(
    mut input: R,
    sink: Sink<W>,
    buf_len: usize,
    full: usize,
    read: FR,
    mut transform: FT,
    write: FW,
) -> Result<W>
where
    R: Read + Send,
    W: Write + Send,
    T: Send,
    FR: Fn(&mut R, &mut [u8]) -> io::Result<usize> + Send,
    FT: FnMut(&mut [u8], usize, bool) -> Result<T>,
    FW: Fn(&mut W, &[u8], &T) -> Result<usize> + Send,
{
    use std::sync::mpsc::sync_channel;
    std::thread::scope(|s| {
        let (free_tx, free_rx) = sync_channel::<Buf>(PIPE_BUFFERS);
        for _ in 0..PIPE_BUFFERS {
            free_tx
                .send(vec![0u8; buf_len])
                .map_err(|_| Error::Malformed("pipeline"))?;
        }
        let (filled_tx, filled_rx) = sync_channel::<io::Result<(Buf, usize)>>(PIPE_BUFFERS);
        let (done_tx, done_rx) = sync_channel::<(Buf, T)>(PIPE_BUFFERS);

        s.spawn(move || {
            while let Ok(mut buf) = free_rx.recv() {
                let r = read(&mut input, &mut buf);
                let last = !matches!(r, Ok(n) if n == full);
                if filled_tx.send(r.map(|n| (buf, n))).is_err() || last {
                    break;
                }
            }
        });

        let Sink { mut writer, sync } = sink;
        let writer_thread = s.spawn(move || -> Result<W> {
            let (tick_tx, tick_rx) = sync_channel::<()>(1);
            if let Some(f) = sync {
                s.spawn(move || {
                    for () in tick_rx {
                        // Errors surface in the final fsync of the commit.
                        let _ = f.sync_data();
                    }
                });
            }
            let mut since_sync = 0;
            for (buf, t) in done_rx {
                since_sync += write(&mut writer, &buf, &t)?;
                if since_sync >= SYNC_EVERY {
                    let _ = tick_tx.try_send(());
                    since_sync = 0;
                }
                let _ = free_tx.send(buf);
            }
            writer.flush().map_err(|e| Error::io("writing output", e))?;
            Ok(writer)
        });

        let mut run = || -> Result<()> {
            let mut pending: Option<Buf> = None;
            let mut send = |mut buf: Buf, len: usize, last: bool| -> Result<()> {
                let t = transform(&mut buf, len, last)?;
                done_tx
                    .send((buf, t))
                    .map_err(|_| Error::Malformed("writer stopped"))
            };
            for msg in &filled_rx {
                let (buf, n) = msg.map_err(|e| Error::io("reading input", e))?;
                if n == full {
                    if let Some(p) = pending.take() {
                        send(p, full, false)?;
                    }
                    pending = Some(buf);
                    continue;
                }
                match pending.take() {
                    Some(p) if n == 0 => send(p, full, true)?,
                    Some(p) => {
                        send(p, full, false)?;
                        send(buf, n, true)?;
                    }
                    None => send(buf, n, true)?,
                }
                return Ok(());
            }
            Err(Error::Malformed("input ended without a final batch"))
        };
        let result = run();
        drop(done_tx);
        drop(filled_rx);
        let written = writer_thread
            .join()
            .unwrap_or(Err(Error::Malformed("writer thread panicked")));
        match (result, written) {
            // A writer failure makes the sealer's send fail: report the writer's error.
            (Err(_), Err(e)) | (Ok(()), Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(w)) => Ok(w),
        }
    })
}

/// Encrypt `input` into `sink` with a reader thread, sealing on this thread and a writer
/// thread, so reading, sealing and writing overlap. Returns the writer and the plaintext length.
pub fn encrypt_pipelined<R: Read + Send, W: Write + Send>(
    input: R,
    mut sink: Sink<W>,
    master: &SecretKey,
    opts: Options,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, u64)> {
    let (header, keys) = Header::create(master, opts.chunk_log2)?;
    sink.writer
        .write_all(&header.to_bytes())
        .map_err(|e| Error::io("writing v2 header", e))?;
    let chunk = header.chunk_size();
    let sealed = chunk + TAG;
    let slots = slots_for(chunk);
    let mut cc = ChunkCipher::new(&keys, header.nonce_prefix, opts.chunk_log2, opts.parallel);
    let mut total = 0u64;
    let w = pipeline(
        input,
        sink,
        slots * sealed,
        slots * chunk,
        move |r, buf| read_into_slots(r, buf, chunk, sealed, slots * chunk),
        |buf, len, last| {
            total += len as u64;
            progress(len as u64);
            cc.seal(buf, len, last)
        },
        |w, buf, &n| {
            let bytes = buf.get(..n).ok_or(Error::Malformed("batch geometry"))?;
            w.write_all(bytes)
                .map_err(|e| Error::io("writing encrypted data", e))?;
            Ok(n)
        },
    )?;
    Ok((w, total))
}

/// Decrypt the chunks that follow an authenticated header (`input` positioned after it) into
/// `sink`, pipelined like [`encrypt_pipelined`]. Every chunk is authenticated before its
/// plaintext reaches the writer. Returns the writer and the plaintext length.
pub(crate) fn decrypt_pipelined<R: Read + Send, W: Write + Send>(
    input: R,
    header: &Header,
    keys: &FileKeys,
    sink: Sink<W>,
    parallel: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(W, u64)> {
    let chunk = header.chunk_size();
    let sealed = chunk + TAG;
    let slots = slots_for(chunk);
    let mut cc = ChunkCipher::new(keys, header.nonce_prefix, header.chunk_log2, parallel);
    let total = std::sync::atomic::AtomicU64::new(0);
    let w = pipeline(
        input,
        sink,
        slots * sealed,
        slots * sealed,
        |r, buf| read_full(r, buf),
        |buf, len, last| {
            progress(len as u64);
            let region = buf
                .get_mut(..len)
                .ok_or(Error::Malformed("batch geometry"))?;
            cc.open(region, last)
        },
        |w, buf, &(n, last_len)| {
            let k = write_slots(w, buf, chunk, sealed, n, last_len)
                .map_err(|e| Error::io("writing decrypted data", e))?;
            total.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
            Ok(k as usize)
        },
    )?;
    Ok((w, total.into_inner()))
}

/// Encrypt a byte slice into a v2 blob: each chunk is sealed straight from the input into its
/// place in the output (no staging copy), on all cores when `opts.parallel`.
pub fn seal(master: &SecretKey, plaintext: &[u8], opts: Options) -> Result<Vec<u8>> {
    let (header, keys) = Header::create(master, opts.chunk_log2)?;
    let chunk = header.chunk_size();
    let n = plaintext.len().div_ceil(chunk).max(1);
    if n as u64 > u64::from(u32::MAX) + 1 {
        return Err(Error::TooLarge("more than 2^32 chunks"));
    }
    let mut out = vec![0u8; HEADER_LEN + plaintext.len() + n * TAG];
    let (head, body) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header.to_bytes());
    let (gcm, prefix) = (&keys.payload, header.nonce_prefix);
    let work = |(i, (slot, pt)): (usize, (&mut [u8], &[u8]))| -> Result<()> {
        let nonce = chunk_nonce(&prefix, i as u32, i + 1 == n);
        let (ct, tag) = slot.split_at_mut(pt.len());
        gcm.seal_into(nonce, &[], pt, ct, tag)
    };
    if plaintext.is_empty() {
        work((0, (body, plaintext)))?;
    } else if opts.parallel && n >= 4 {
        body.par_chunks_mut(chunk + TAG)
            .zip(plaintext.par_chunks(chunk))
            .enumerate()
            .try_for_each(work)?;
    } else {
        body.chunks_mut(chunk + TAG)
            .zip(plaintext.chunks(chunk))
            .enumerate()
            .try_for_each(work)?;
    }
    Ok(out)
}

/// Decrypt a v2 blob: each chunk is opened straight from the blob into its place in the output,
/// on all cores. On failure no plaintext is returned (the buffer is zeroized).
pub fn open(keys: &Keyset, blob: &[u8]) -> Result<Vec<u8>> {
    let header = Header::parse(blob)?;
    let file = header.open_with(keys)?;
    let len = header
        .plaintext_len(blob.len() as u64)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or(Error::Decrypt)?; // a length no complete file can have: truncated or extended
    let chunk = header.chunk_size();
    let n = len.div_ceil(chunk).max(1);
    if n as u64 > u64::from(u32::MAX) + 1 {
        return Err(Error::TooLarge("more than 2^32 chunks"));
    }
    let body = blob.get(HEADER_LEN..).ok_or(Error::Decrypt)?;
    let mut out = vec![0u8; len];
    let (gcm, prefix) = (&file.payload, header.nonce_prefix);
    let work = |(i, (slot, pt)): (usize, (&[u8], &mut [u8]))| -> Result<()> {
        let nonce = chunk_nonce(&prefix, i as u32, i + 1 == n);
        let (ct, tag) = slot.split_at(pt.len());
        gcm.open_detached(nonce, &[], ct, tag, pt)
    };
    let r = if len == 0 {
        work((0, (body, &mut out[..])))
    } else if n >= 4 {
        body.par_chunks(chunk + TAG)
            .zip(out.par_chunks_mut(chunk))
            .enumerate()
            .try_for_each(work)
    } else {
        body.chunks(chunk + TAG)
            .zip(out.chunks_mut(chunk))
            .enumerate()
            .try_for_each(work)
    };
    if let Err(e) = r {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(e);
    }
    Ok(out)
}
