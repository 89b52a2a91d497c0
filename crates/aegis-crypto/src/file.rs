//! Whole-file operations used by the CLI and by re-encryption: encrypt, decrypt, inspect.
//!
//! Outputs that are files are written atomically (see [`crate::fsutil::AtomicFile`]): a failed
//! decryption leaves no output file. Inputs and outputs may also be stdin/stdout.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{AtomicFile, read_full};
use crate::key::{KeyId, SecretKey};
use crate::keyset::Keyset;
use crate::{Format, v1, v2};

/// A source of bytes.
#[derive(Clone, Debug)]
pub enum Input {
    /// Standard input.
    Stdin,
    /// A file.
    Path(PathBuf),
}

/// A destination of bytes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Standard output (decrypted v2 chunks are released as each is authenticated).
    Stdout,
    /// A file, written atomically.
    Path {
        /// Destination.
        path: PathBuf,
        /// Replace an existing file.
        overwrite: bool,
    },
}

/// What a finished operation did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Format of the encrypted side.
    pub format: Format,
    /// Key the encrypted side is (or was) under.
    pub key_id: KeyId,
    /// Plaintext bytes.
    pub plaintext_len: u64,
}

fn open_input(input: &Input) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    Ok(match input {
        Input::Stdin => (Box::new(io::stdin()), None),
        Input::Path(p) => {
            let f = File::open(p).ctx(|| format!("opening {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
    })
}

/// Read all of `input` into a buffer with `room` spare bytes in front and `tail` spare capacity
/// behind, sized from the known length so nothing is regrown or copied twice.
fn read_all(
    input: &mut dyn Read,
    len_hint: Option<u64>,
    room: usize,
    tail: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>> {
    let hint = len_hint.and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
    let mut buf = Vec::with_capacity(room + hint + tail);
    buf.resize(room, 0);
    let n = input
        .read_to_end(&mut buf)
        .ctx(|| "reading input".to_string())?;
    progress(n as u64);
    buf.reserve_exact(tail);
    Ok(buf)
}

/// The reader/sealer/writer pipeline needs two cores to pay; on one (an affinity mask, a small
/// container) the plain streaming path is faster.
fn pipelining_pays() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Counts and reports the bytes read through it.
struct CountingRead<'a, R> {
    inner: R,
    n: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        *self.n += k as u64;
        (self.progress)(k as u64);
        Ok(k)
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        let k = self.inner.read_vectored(bufs)?;
        *self.n += k as u64;
        (self.progress)(k as u64);
        Ok(k)
    }
}

/// Run `f` with a pipeline sink for `out`: a temporary file committed only if `f` succeeds,
/// or (unbuffered) standard output.
fn with_sink<T>(out: &Output, f: impl FnOnce(v2::Sink<&mut File>) -> Result<T>) -> Result<T> {
    match out {
        Output::Stdout => {
            use std::os::fd::AsFd;
            let fd = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ctx(|| "opening standard output".to_string())?;
            let mut file = File::from(fd);
            f(v2::Sink {
                writer: &mut file,
                sync: None,
            })
        }
        Output::Path { path, overwrite } => {
            if !overwrite && path.exists() {
                return Err(Error::Exists(path.clone()));
            }
            let mut tmp = AtomicFile::create(path)?;
            let sync = tmp.file().try_clone().ok();
            let t = f(v2::Sink {
                writer: tmp.file(),
                sync,
            })?;
            tmp.commit(*overwrite)?;
            Ok(t)
        }
    }
}

/// Write `bytes` to `out` (atomically for a file).
fn write_whole(out: &Output, bytes: &[u8]) -> Result<()> {
    with_sink(out, |sink| {
        sink.writer
            .write_all(bytes)
            .ctx(|| "writing output".to_string())
    })
}

/// Encrypt `input` to `output` under `key`. `progress` receives the input bytes consumed.
pub fn encrypt(
    key: &SecretKey,
    input: &Input,
    output: &Output,
    format: Format,
    opts: v2::Options,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let (mut src, len) = open_input(input)?;
    match format {
        Format::V1 => {
            if len.is_some_and(|l| l > v1::MAX_PLAINTEXT) {
                return Err(Error::TooLarge(
                    "v1 blobs carry less than 2 GiB (the Python system's limit); use v2",
                ));
            }
            let mut limited = (&mut src).take(v1::MAX_PLAINTEXT + 1);
            let mut buf = read_all(&mut limited, len, v1::NONCE_LEN, v1::TAG_LEN, progress)?;
            let n = (buf.len() - v1::NONCE_LEN) as u64;
            v1::seal_in_place(key, &mut buf)?;
            write_whole(output, &buf)?;
            Ok(Outcome {
                format,
                key_id: key.id(),
                plaintext_len: n,
            })
        }
        Format::V2 => {
            let n = with_sink(output, |sink| {
                if pipelining_pays() {
                    v2::encrypt_pipelined(src, sink, key, opts, progress).map(|(_, n)| n)
                } else {
                    let mut counted = 0u64;
                    let mut input = CountingRead {
                        inner: src,
                        n: &mut counted,
                        progress,
                    };
                    v2::Encryptor::new(sink.writer, key, opts)?.encrypt_from(&mut input)?;
                    Ok(counted)
                }
            })?;
            Ok(Outcome {
                format,
                key_id: key.id(),
                plaintext_len: n,
            })
        }
    }
}

/// Decrypt `input` (v1 or v2, detected) to `output` with the keyset. On failure nothing is
/// left at a file `output`. `progress` receives the input bytes consumed.
pub fn decrypt(
    keys: &Keyset,
    input: &Input,
    output: &Output,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let (mut src, len) = open_input(input)?;
    let mut head = [0u8; v2::HEADER_LEN];
    let got = read_full(&mut src, &mut head).ctx(|| "reading input".to_string())?;
    progress(got as u64);
    let head = head.get(..got).unwrap_or_default();
    match Format::detect(head) {
        Format::V2 => {
            let header = v2::Header::parse(head)?;
            let file_keys = header.open_with(keys)?;
            let n = with_sink(output, |sink| {
                if pipelining_pays() {
                    v2::decrypt_pipelined(src, &header, &file_keys, sink, true, progress)
                        .map(|(_, n)| n)
                } else {
                    let mut counted = 0u64;
                    let input = CountingRead {
                        inner: src,
                        n: &mut counted,
                        progress,
                    };
                    v2::Decryptor::with_keys(input, header.clone(), file_keys)
                        .decrypt_to(sink.writer)
                }
            })?;
            Ok(Outcome {
                format: Format::V2,
                key_id: header.key_id(),
                plaintext_len: n,
            })
        }
        Format::V1 => {
            if len.is_some_and(|l| l > v1::MAX_BLOB) {
                return Err(Error::Malformed(
                    "larger than any v1 blob, and no v2 header: not an AEGIS file, or a damaged v2 file",
                ));
            }
            let mut src = (&mut src).take(v1::MAX_BLOB + 1 - got as u64);
            let rest = read_all(
                &mut src,
                len.map(|l| l.saturating_sub(got as u64)),
                got,
                0,
                progress,
            )?;
            let mut blob = rest;
            blob.get_mut(..got)
                .ok_or(Error::Malformed("input"))?
                .copy_from_slice(head);
            let (pt, key_id) = v1::open_with_keyset_owned(keys, blob)?;
            write_whole(output, &pt)?;
            Ok(Outcome {
                format: Format::V1,
                key_id,
                plaintext_len: pt.len() as u64,
            })
        }
    }
}

/// What `aegis inspect` shows: no secrets, no key needed.
#[derive(Clone, Debug)]
pub struct Info {
    /// Detected format.
    pub format: Format,
    /// File size.
    pub file_len: u64,
    /// v2: the key named in the header.
    pub key_id: Option<KeyId>,
    /// v2: chunk size.
    pub chunk_size: Option<usize>,
    /// Plaintext size if the file is complete (v1: always file − 28; v2: from the length).
    pub plaintext_len: Option<u64>,
}

/// Describe an encrypted file from its header and length.
pub fn inspect(path: &Path) -> Result<Info> {
    let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let file_len = f
        .metadata()
        .ctx(|| format!("reading {}", path.display()))?
        .len();
    let mut head = [0u8; v2::HEADER_LEN];
    let got = read_full(&mut f, &mut head).ctx(|| format!("reading {}", path.display()))?;
    let head = head.get(..got).unwrap_or_default();
    Ok(match Format::detect(head) {
        Format::V2 => {
            let h = v2::Header::parse(head)?;
            Info {
                format: Format::V2,
                file_len,
                key_id: Some(h.key_id()),
                chunk_size: Some(h.chunk_size()),
                plaintext_len: h.plaintext_len(file_len),
            }
        }
        Format::V1 => Info {
            format: Format::V1,
            file_len,
            key_id: None,
            chunk_size: None,
            plaintext_len: file_len.checked_sub(v1::OVERHEAD as u64),
        },
    })
}
