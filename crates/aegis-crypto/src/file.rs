//! Whole-file operations used by the CLI and by re-encryption: encrypt, decrypt, inspect.
//!
//! Outputs that are files are written atomically (see [`crate::fsutil::AtomicFile`]): a failed
//! decryption leaves no output file. Inputs and outputs may also be stdin/stdout.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::AtomicFile;
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

/// Counts bytes read through it and reports them.
pub struct Progress<'a, R> {
    inner: R,
    report: &'a mut dyn FnMut(u64),
}

impl<'a, R: Read> Progress<'a, R> {
    /// Wrap `inner`; `report` gets the size of every read.
    pub fn new(inner: R, report: &'a mut dyn FnMut(u64)) -> Self {
        Progress { inner, report }
    }
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

fn open_input(input: &Input) -> Result<Box<dyn Read>> {
    Ok(match input {
        Input::Stdin => Box::new(io::stdin().lock()),
        Input::Path(p) => Box::new(File::open(p).ctx(|| format!("opening {}", p.display()))?),
    })
}

fn read_all(input: &mut dyn Read, room: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; room];
    input
        .read_to_end(&mut buf)
        .ctx(|| format!("reading {what}"))?;
    Ok(buf)
}

/// Write `f`'s output to `out`: a temp file committed only if `f` succeeds, or stdout.
fn with_output<T>(out: &Output, f: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    match out {
        Output::Stdout => {
            let stdout = io::stdout();
            let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
            let t = f(&mut w)?;
            w.flush().ctx(|| "writing to standard output".to_string())?;
            Ok(t)
        }
        Output::Path { path, overwrite } => {
            if !overwrite && path.exists() {
                return Err(Error::io(
                    format!(
                        "{} already exists (use --force to replace it)",
                        path.display()
                    ),
                    io::Error::from(io::ErrorKind::AlreadyExists),
                ));
            }
            let mut tmp = AtomicFile::create(path)?;
            let t = {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
                let t = f(&mut w)?;
                w.flush().ctx(|| format!("writing {}", path.display()))?;
                t
            };
            tmp.commit(*overwrite)?;
            Ok(t)
        }
    }
}

/// Encrypt `input` to `output` under `key`.
pub fn encrypt(
    key: &SecretKey,
    input: &Input,
    output: &Output,
    format: Format,
    opts: v2::Options,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let mut src = Progress::new(open_input(input)?, progress);
    match format {
        Format::V1 => {
            let mut buf = read_all(&mut src, 12, "input")?;
            let n = (buf.len() - 12) as u64;
            v1::seal_in_place(key, &mut buf)?;
            with_output(output, |w| {
                w.write_all(&buf).ctx(|| "writing output".to_string())
            })?;
            Ok(Outcome {
                format,
                key_id: key.id(),
                plaintext_len: n,
            })
        }
        Format::V2 => {
            let mut counted = 0u64;
            with_output(output, |w| {
                let mut counter = CountingRead {
                    inner: &mut src,
                    n: &mut counted,
                };
                v2::Encryptor::new(w, key, opts)?.encrypt_from(&mut counter)?;
                Ok(())
            })?;
            Ok(Outcome {
                format,
                key_id: key.id(),
                plaintext_len: counted,
            })
        }
    }
}

struct CountingRead<'a, R> {
    inner: R,
    n: &'a mut u64,
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        *self.n += k as u64;
        Ok(k)
    }
}

/// Decrypt `input` (v1 or v2, detected) to `output` with the keyset. On failure nothing is
/// left at a file `output`.
pub fn decrypt(
    keys: &Keyset,
    input: &Input,
    output: &Output,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let mut src = Progress::new(open_input(input)?, progress);
    let mut head = [0u8; v2::HEADER_LEN];
    let got = read_up_to(&mut src, &mut head).ctx(|| "reading input".to_string())?;
    let head = head.get(..got).unwrap_or_default();
    match Format::detect(head) {
        Format::V2 => {
            let header = v2::Header::parse(head)?;
            let file_keys = header.open_with(keys)?;
            let key_id = header.key_id();
            let dec = v2::Decryptor::with_keys(&mut src, header, file_keys)?;
            let n = with_output(output, |w| dec.decrypt_to(w))?;
            Ok(Outcome {
                format: Format::V2,
                key_id,
                plaintext_len: n,
            })
        }
        Format::V1 => {
            let mut blob = head.to_vec();
            src.read_to_end(&mut blob)
                .ctx(|| "reading input".to_string())?;
            let (pt, key_id) = v1::open_with_keyset(keys, &blob)?;
            drop(blob);
            let pt = zeroize::Zeroizing::new(pt);
            with_output(output, |w| {
                w.write_all(&pt).ctx(|| "writing output".to_string())
            })?;
            Ok(Outcome {
                format: Format::V1,
                key_id,
                plaintext_len: pt.len() as u64,
            })
        }
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
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
    let got = read_up_to(&mut f, &mut head).ctx(|| format!("reading {}", path.display()))?;
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
