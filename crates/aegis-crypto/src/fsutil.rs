//! File-system helpers: atomic replacement, private (0600) files, permission checks.
//!
//! Every file AEGIS writes appears whole or not at all: data goes to a temporary file in the
//! destination's directory (named `.aegis-tmp-*`), which is fsynced and then renamed over the
//! destination; the directory is fsynced after the rename.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Prefix of the temporary files AEGIS writes; scans skip them.
pub const TEMP_PREFIX: &str = ".aegis-tmp-";

/// A file being written that replaces `dest` only on [`AtomicFile::commit`]. Dropped without a
/// commit, it leaves no trace.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
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

    /// [`AtomicFile::create`] with a temporary name starting with `prefix` (which should
    /// itself start with [`TEMP_PREFIX`], so scans skip it).
    pub fn create_with_prefix(dest: &Path, prefix: &str) -> Result<Self> {
        let dir = parent_of(dest);
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(dir)
            .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Give the file `mode` (Unix permission bits) before it is committed.
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.tmp
                .as_file()
                .set_permissions(fs::Permissions::from_mode(mode))
                .ctx(|| format!("setting permissions of {}", self.tmp.path().display()))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    }

    /// fsync, rename over the destination (or fail if it exists and `overwrite` is false), fsync
    /// the directory.
    pub fn commit(mut self, overwrite: bool) -> Result<()> {
        self.tmp
            .as_file_mut()
            .flush()
            .ctx(|| format!("writing {}", self.dest.display()))?;
        self.tmp
            .as_file()
            .sync_all()
            .ctx(|| format!("syncing {}", self.dest.display()))?;
        let dest = self.dest.clone();
        let res = if overwrite {
            self.tmp.persist(&dest).map(|_| ())
        } else {
            self.tmp.persist_noclobber(&dest).map(|_| ())
        };
        res.map_err(|e| {
            let kind = e.error.kind();
            let msg = if kind == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} already exists (use --force to replace it)",
                    dest.display()
                )
            } else {
                format!("renaming into {}", dest.display())
            };
            Error::io(msg, e.error)
        })?;
        sync_dir(parent_of(&dest))
    }
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
