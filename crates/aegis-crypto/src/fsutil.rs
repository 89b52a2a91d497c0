//! File-system helpers: atomic replacement, private (0600) files, permission checks.
//!
//! Every file AEGIS writes appears whole or not at all: data goes to a temporary file in the
//! destination's directory (unnamed on Linux, else `.aegis-tmp-*`), which is fsynced and then
//! put in place of the destination; the directory is fsynced after.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Prefix of the temporary files AEGIS writes; scans skip them.
pub const TEMP_PREFIX: &str = ".aegis-tmp-";

/// A file being written that replaces `dest` only on [`AtomicFile::commit`]. Dropped without a
/// commit, it leaves no trace.
///
/// On Linux the file is created without a name (`O_TMPFILE`) and linked into the directory
/// only at the commit, so even a process killed mid-write leaves nothing behind — no partial
/// plaintext of a decryption in particular. Where the file system does not support that, a
/// named `.aegis-tmp-*` file is used (and scans skip or clean such files).
pub struct AtomicFile {
    tmp: Tmp,
    dest: PathBuf,
    prefix: String,
}

enum Tmp {
    /// An unnamed file and its directory (Linux `O_TMPFILE`).
    #[cfg(target_os = "linux")]
    Anonymous {
        file: File,
        dir: File,
    },
    Named(tempfile::NamedTempFile),
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl AtomicFile {
    /// Start writing a file that will become `dest`. The temporary file has mode 0600.
    pub fn create(dest: &Path) -> Result<Self> {
        Self::create_with_prefix(dest, TEMP_PREFIX)
    }

    /// [`AtomicFile::create`] with a temporary name (where one is needed) starting with
    /// `prefix`, which should itself start with [`TEMP_PREFIX`] so scans skip it.
    pub fn create_with_prefix(dest: &Path, prefix: &str) -> Result<Self> {
        let dir = parent_of(dest);
        #[cfg(target_os = "linux")]
        if let Some(tmp) = anonymous_in(dir) {
            return Ok(AtomicFile {
                tmp,
                dest: dest.to_path_buf(),
                prefix: prefix.to_string(),
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(dir)
            .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(AtomicFile {
            tmp: Tmp::Named(tmp),
            dest: dest.to_path_buf(),
            prefix: prefix.to_string(),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        match &mut self.tmp {
            #[cfg(target_os = "linux")]
            Tmp::Anonymous { file, .. } => file,
            Tmp::Named(t) => t.as_file_mut(),
        }
    }

    /// Give the file `mode` (Unix permission bits) before it is committed.
    pub fn set_mode(&mut self, mode: u32) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dest = self.dest.display().to_string();
            self.file()
                .set_permissions(fs::Permissions::from_mode(mode))
                .ctx(|| format!("setting permissions for {dest}"))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    }

    /// fsync, put the file in place of the destination (or fail if it exists and `overwrite`
    /// is false), fsync the directory.
    pub fn commit(mut self, overwrite: bool) -> Result<()> {
        let dest = self.dest.clone();
        let file = self.file();
        file.flush().ctx(|| format!("writing {}", dest.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", dest.display()))?;
        match self.tmp {
            #[cfg(target_os = "linux")]
            Tmp::Anonymous { file, dir } => {
                link_anonymous(&file, &dir, &dest, &self.prefix, overwrite)?
            }
            Tmp::Named(tmp) => {
                let res = if overwrite {
                    tmp.persist(&dest).map(|_| ())
                } else {
                    tmp.persist_noclobber(&dest).map(|_| ())
                };
                res.map_err(|e| {
                    if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::Exists(dest.clone())
                    } else {
                        Error::io(format!("renaming into {}", dest.display()), e.error)
                    }
                })?;
            }
        }
        sync_dir(parent_of(&dest))
    }
}

/// An unnamed 0600 file in `dir`, or `None` where `O_TMPFILE` is not available.
#[cfg(target_os = "linux")]
fn anonymous_in(dir: &Path) -> Option<Tmp> {
    use rustix::fs::{Mode, OFlags};
    let d = File::open(dir).ok()?;
    let fd = rustix::fs::openat(
        &d,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    Some(Tmp::Anonymous {
        file: File::from(fd),
        dir: d,
    })
}

/// Give the unnamed file its name: `linkat` through `/proc/self/fd` (no privilege needed). To
/// replace an existing file, link under a fresh temporary name and rename that over it.
#[cfg(target_os = "linux")]
fn link_anonymous(
    file: &File,
    dir: &File,
    dest: &Path,
    prefix: &str,
    overwrite: bool,
) -> Result<()> {
    use rustix::fs::{AtFlags, CWD};
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    let name = dest.file_name().ok_or_else(|| {
        Error::io(
            format!("{} names no file", dest.display()),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let link = |to: &std::ffi::OsStr| {
        rustix::fs::linkat(CWD, proc.as_str(), dir, to, AtFlags::SYMLINK_FOLLOW)
    };
    if !overwrite {
        return link(name).map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                Error::Exists(dest.to_path_buf())
            } else {
                Error::io(format!("creating {}", dest.display()), e.into())
            }
        });
    }
    let mut suffix = [0u8; 8];
    crate::key::fill_random(&mut suffix)?;
    let tmp_name = std::ffi::OsString::from(format!("{prefix}{}", hex::encode(suffix)));
    link(&tmp_name).map_err(|e| {
        Error::io(
            format!("creating a file next to {}", dest.display()),
            e.into(),
        )
    })?;
    rustix::fs::renameat(dir, &tmp_name, dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, &tmp_name, AtFlags::empty());
        Error::io(format!("renaming into {}", dest.display()), e.into())
    })
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("syncing directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Create `path` with mode 0600 *at creation* (`O_CREAT|O_EXCL`), write `contents`, fsync.
/// Fails if the file exists.
pub fn create_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    sync_dir(parent_of(path))
}

/// Atomically replace (or create) `path` with a 0600 file holding `contents`: a new file is
/// created 0600 with `O_EXCL` next to it, synced, then renamed over `path`.
pub fn replace_private(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut suffix = [0u8; 8];
    crate::key::fill_random(&mut suffix)?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}-{}", hex::encode(suffix)));
    create_private(&tmp, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("renaming into {}", path.display()), e));
    }
    sync_dir(dir)
}

/// Fill `buf` as far as the reader allows; returns the bytes read (fewer than `buf.len()` only
/// at end of input).
pub fn read_full<R: std::io::Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Refuse a secret file that group or others may access.
pub fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).ctx(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::LoosePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Unix permission bits of an open file (0o600 elsewhere).
pub fn mode_of(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o600
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() -> Result<()> {
        let dir = tempfile::tempdir().ctx(|| "tempdir".into())?;
        let dest = dir.path().join("out");
        {
            let mut f = AtomicFile::create(&dest)?;
            f.file().write_all(b"partial").ctx(|| "w".into())?;
        }
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).ctx(|| "ls".into())?.count(), 0);
        let mut f = AtomicFile::create(&dest)?;
        f.file().write_all(b"whole").ctx(|| "w".into())?;
        f.commit(false)?;
        assert_eq!(fs::read(&dest).ctx(|| "r".into())?, b"whole");
        let f = AtomicFile::create(&dest)?;
        assert!(f.commit(false).is_err(), "no clobber");
        assert_eq!(fs::read(&dest).ctx(|| "r".into())?, b"whole");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_from_birth() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().ctx(|| "tempdir".into())?;
        let p = dir.path().join("k");
        create_private(&p, b"x")?;
        let mode = fs::metadata(&p).ctx(|| "m".into())?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(create_private(&p, b"y").is_err(), "O_EXCL");
        replace_private(&p, b"z")?;
        assert_eq!(fs::read(&p).ctx(|| "r".into())?, b"z");
        check_private(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).ctx(|| "chmod".into())?;
        assert!(matches!(
            check_private(&p),
            Err(Error::LoosePermissions { .. })
        ));
        Ok(())
    }
}
