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
    /// Seal and open batches on all cores (rayon's pool).
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

/// Batch geometry shared by the encryptor and the decryptor.
struct Batch {
    chunk: usize,
    slots: usize,
    /// `slots` sealed chunks, each `chunk + TAG` bytes, plus one look-ahead byte.
    buf: Vec<u8>,
}

impl Batch {
    fn new(chunk_log2: u8) -> Self {
        let chunk = 1usize << chunk_log2;
        let slots = (BATCH_BYTES / chunk).max(1);
        Batch {
            chunk,
            slots,
            buf: vec![0u8; slots * (chunk + TAG) + 1],
        }
    }
    fn sealed(&self) -> usize {
        self.chunk + TAG
    }
    fn capacity(&self) -> usize {
        self.slots * self.sealed()
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

/// Streaming v2 encryption into any `Write`. Call [`Encryptor::finish`] at the end: a stream
/// that is dropped unfinished is detected as truncated by the decryptor.
pub struct Encryptor<W: Write> {
    out: W,
    keys: FileKeys,
    prefix: [u8; PREFIX_LEN],
    batch: Batch,
    parallel: bool,
    /// Plaintext bytes staged in the batch (slot-major, each slot `chunk` bytes used).
    staged: usize,
    counter: u32,
}

impl<W: Write> Encryptor<W> {
    /// Write a fresh header under `master` and return the encryptor.
    pub fn new(mut out: W, master: &SecretKey, opts: Options) -> Result<Self> {
        let (header, keys) = Header::create(master, opts.chunk_log2)?;
        out.write_all(&header.to_bytes())
            .map_err(|e| Error::io("writing v2 header", e))?;
        Ok(Encryptor {
            out,
            keys,
            prefix: header.nonce_prefix,
            batch: Batch::new(opts.chunk_log2),
            parallel: opts.parallel,
            staged: 0,
            counter: 0,
        })
    }

    /// Encrypt everything `input` yields, then finish.
    pub fn encrypt_from<R: Read>(mut self, input: &mut R) -> Result<W> {
        loop {
            let room = self.batch.slots * self.batch.chunk - self.staged;
            if room == 0 {
                // Peek one byte: a full batch is sealed as non-final only if more data follows.
                let mut one = [0u8; 1];
                let n = read_full(input, &mut one).map_err(|e| Error::io("reading input", e))?;
                if n == 0 {
                    break;
                }
                self.seal_batch(false)?;
                self.stage(&one);
                continue;
            }
            // Read straight into the slot's plaintext area.
            let slot = self.staged / self.batch.chunk;
            let off = self.staged % self.batch.chunk;
            let start = slot * self.batch.sealed() + off;
            let want = self.batch.chunk - off;
            let dst = self
                .batch
                .buf
                .get_mut(start..start + want)
                .ok_or(Error::Malformed("batch geometry"))?;
            let n = read_full(input, dst).map_err(|e| Error::io("reading input", e))?;
            self.staged += n;
            if n < want {
                break;
            }
        }
        self.finish()
    }

    fn stage(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let slot = self.staged / self.batch.chunk;
            let off = self.staged % self.batch.chunk;
            let start = slot * self.batch.sealed() + off;
            let n = data.len().min(self.batch.chunk - off);
            if let (Some(dst), Some(src)) =
                (self.batch.buf.get_mut(start..start + n), data.get(..n))
            {
                dst.copy_from_slice(src);
            }
            self.staged += n;
            data = data.get(n..).unwrap_or_default();
        }
    }

    /// Seal the staged chunks and write them. `last`: the final chunk of the stream.
    fn seal_batch(&mut self, last: bool) -> Result<()> {
        let chunk = self.batch.chunk;
        let sealed = self.batch.sealed();
        let n_chunks = if last {
            self.staged.div_ceil(chunk).max(1)
        } else {
            self.staged / chunk
        };
        let first = self.counter;
        let end = u64::from(first) + n_chunks as u64;
        if end > u64::from(u32::MAX) + 1 || (end == u64::from(u32::MAX) + 1 && !last) {
            return Err(Error::TooLarge("more than 2^32 chunks"));
        }
        let staged = self.staged;
        let prefix = self.prefix;
        let gcm = &self.keys.payload;
        let region = self
            .batch
            .buf
            .get_mut(..n_chunks * sealed)
            .ok_or(Error::Malformed("batch geometry"))?;
        for_each_slot(region, sealed, self.parallel, |i, slot| {
            let is_last = last && i + 1 == n_chunks;
            let len = if is_last { staged - i * chunk } else { chunk };
            let nonce = chunk_nonce(&prefix, first + i as u32, is_last);
            let (pt, rest) = slot.split_at_mut(len);
            let tag = gcm.seal(nonce, &[], pt)?;
            rest.get_mut(..TAG)
                .ok_or(Error::Malformed("batch geometry"))?
                .copy_from_slice(&tag);
            Ok(())
        })?;
        let out_len = if last {
            (n_chunks - 1) * sealed + (staged - (n_chunks - 1) * chunk) + TAG
        } else {
            n_chunks * sealed
        };
        let bytes = self
            .batch
            .buf
            .get(..out_len)
            .ok_or(Error::Malformed("batch geometry"))?;
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing encrypted data", e))?;
        self.counter = first.wrapping_add(n_chunks as u32);
        self.staged = 0;
        Ok(())
    }

    /// Seal the final chunk, flush, and return the writer.
    pub fn finish(mut self) -> Result<W> {
        self.seal_batch(true)?;
        self.out
            .flush()
            .map_err(|e| Error::io("flushing encrypted data", e))?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let cap = self.batch.slots * self.batch.chunk;
        if self.staged == cap && !data.is_empty() {
            self.seal_batch(false).map_err(io::Error::other)?;
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

/// Fill `buf` as far as the reader allows; returns bytes read (< len only at EOF).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streaming v2 decryption from any `Read`. Each chunk is authenticated before any of its
/// plaintext is returned; a stream cut at any point (even at a chunk boundary) ends in an error,
/// never in a silent short read. Write to a temporary file and keep it only if every read
/// succeeded.
pub struct Decryptor<R: Read> {
    input: R,
    header: Header,
    keys: FileKeys,
    batch: Batch,
    parallel: bool,
    /// Ciphertext bytes buffered (including a carried look-ahead byte).
    filled: usize,
    /// Plaintext ready: slots `[cur, n_ready)`, with `pos` bytes of slot `cur` already served.
    ready: Vec<usize>,
    cur: usize,
    pos: usize,
    counter: u32,
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
        Self::with_keys(input, header, file_keys)
    }

    pub(crate) fn with_keys(input: R, header: Header, keys: FileKeys) -> Result<Self> {
        Ok(Decryptor {
            input,
            batch: Batch::new(header.chunk_log2),
            header,
            keys,
            parallel: true,
            filled: 0,
            ready: Vec::new(),
            cur: 0,
            pos: 0,
            counter: 0,
            state: DecState::Streaming,
        })
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

    /// Decrypt the whole stream into `out`; returns the plaintext length.
    pub fn decrypt_to<W: Write + ?Sized>(mut self, out: &mut W) -> Result<u64> {
        let mut total = 0u64;
        loop {
            if self.cur >= self.ready.len() {
                if self.state == DecState::Done {
                    return Ok(total);
                }
                self.next_batch()?;
                continue;
            }
            let sealed = self.batch.sealed();
            // Write every ready slot of this batch.
            for i in self.cur..self.ready.len() {
                let len = self.ready.get(i).copied().unwrap_or(0);
                let start = i * sealed;
                let pt = self
                    .batch
                    .buf
                    .get(start..start + len)
                    .ok_or(Error::Malformed("batch geometry"))?;
                out.write_all(pt)
                    .map_err(|e| Error::io("writing decrypted data", e))?;
                total += len as u64;
            }
            self.cur = self.ready.len();
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
            self.ready.clear();
            self.cur = 0;
        }
        r
    }

    fn next_batch_inner(&mut self) -> Result<()> {
        let cap = self.batch.capacity();
        // Carry the look-ahead byte of the previous batch.
        if self.filled == cap + 1 {
            let b = self.batch.buf.get(cap).copied().unwrap_or(0);
            if let Some(first) = self.batch.buf.first_mut() {
                *first = b;
            }
            self.filled = 1;
        }
        let dst = self
            .batch
            .buf
            .get_mut(self.filled..cap + 1)
            .ok_or(Error::Malformed("batch geometry"))?;
        let n =
            read_full(&mut self.input, dst).map_err(|e| Error::io("reading encrypted data", e))?;
        self.filled += n;
        let sealed = self.batch.sealed();
        let chunk = self.batch.chunk;
        let at_eof = self.filled <= cap;
        let body = self.filled.min(cap);
        let (n_chunks, last_len) = if at_eof {
            let full = body / sealed;
            let rem = body % sealed;
            if rem == 0 {
                if full == 0 {
                    return Err(Error::Decrypt); // no final chunk: truncated
                }
                (full, chunk)
            } else if rem < TAG {
                return Err(Error::Decrypt); // a cut inside a tag
            } else {
                (full + 1, rem - TAG)
            }
        } else {
            (self.batch.slots, chunk)
        };
        if at_eof && last_len == 0 && (self.counter > 0 || n_chunks > 1) {
            // Writers never emit an empty final chunk except for an empty file.
            return Err(Error::Decrypt);
        }
        if u64::from(self.counter) + n_chunks as u64 > u64::from(u32::MAX) + 1 {
            return Err(Error::TooLarge("more than 2^32 chunks"));
        }
        let first = self.counter;
        let prefix = self.header.nonce_prefix;
        let gcm = &self.keys.payload;
        let region_len = if at_eof { body } else { n_chunks * sealed };
        let region = self
            .batch
            .buf
            .get_mut(..region_len)
            .ok_or(Error::Malformed("batch geometry"))?;
        for_each_slot(region, sealed, self.parallel, |i, slot| {
            let is_last = at_eof && i + 1 == n_chunks;
            let nonce = chunk_nonce(&prefix, first + i as u32, is_last);
            gcm.open(nonce, &[], slot).map(|_| ())
        })?;
        self.ready.clear();
        self.ready.resize(n_chunks, chunk);
        if let Some(l) = self.ready.last_mut() {
            *l = last_len;
        }
        self.cur = 0;
        self.pos = 0;
        self.counter = first.wrapping_add(n_chunks as u32);
        if at_eof {
            self.state = DecState::Done;
        }
        Ok(())
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(&len) = self.ready.get(self.cur) {
                if self.pos < len {
                    let start = self.cur * self.batch.sealed() + self.pos;
                    let n = out.len().min(len - self.pos);
                    let src = self
                        .batch
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

/// Encrypt a byte slice into a v2 blob.
pub fn seal(master: &SecretKey, plaintext: &[u8], opts: Options) -> Result<Vec<u8>> {
    let out = Vec::with_capacity(HEADER_LEN + plaintext.len() + plaintext.len() / 1024 + TAG);
    let mut input = plaintext;
    Encryptor::new(out, master, opts)?.encrypt_from(&mut input)
}

/// Decrypt a v2 blob.
pub fn open(keys: &Keyset, blob: &[u8]) -> Result<Vec<u8>> {
    let mut input = blob;
    let mut out = Vec::with_capacity(blob.len());
    Decryptor::new(&mut input, keys)?.decrypt_to(&mut out)?;
    Ok(out)
}
