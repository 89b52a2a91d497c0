//! Bring every encrypted file under some directories to the primary key — crash-safe and
//! resumable — and find which files still need which key.
//!
//! * v2 files: only the 99-byte header is rewritten ([`v2::Header::rewrap`]), O(1) per file.
//!   Headers of one directory are rewritten as a batch under a journal
//!   (`.aegis-rewrap.journal`, written atomically before the first header and removed after the
//!   batch is synced): if the machine dies mid-batch, the next run (or scan) finds the journal
//!   and repairs any torn header from it. A process kill cannot tear a 99-byte `pwrite`, and a
//!   file whose header was not yet rewritten is still under a retained key, so at every moment
//!   every file decrypts with the keyset on disk.
//! * v1 files: re-encrypted whole (or migrated to v2 on request) into a temporary file in the
//!   same directory that is fsynced and renamed over the original.
//! * Resumable: the scan is idempotent; files already under the primary are left alone.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, AtomicFile, TEMP_PREFIX};
use crate::key::KeyId;
use crate::keyset::Keyset;
use crate::{v1, v2};

/// Name of the per-directory rewrap journal.
pub const JOURNAL_NAME: &str = ".aegis-rewrap.journal";
const JOURNAL_MAGIC: &[u8; 8] = b"AEGISJ\x00\x01";
/// Prefix of the temporary files `reencrypt` itself writes: under the root lock, any such file
/// is the leftover of a killed run.
const OWN_TEMP_PREFIX: &str = ".aegis-tmp-re-";
/// Other temporary files older than this are leftovers of a dead process.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Re-encryption settings.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Turn v1 blobs into v2 files (the Python system can no longer read them).
    pub migrate_v1: bool,
    /// Only report what would be done.
    pub dry_run: bool,
    /// Paths never touched (the key file and keyset document, when under a root).
    pub exclude: Vec<PathBuf>,
}

/// What a run found and did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Regular files looked at.
    pub scanned: usize,
    /// Already under the primary key.
    pub current: usize,
    /// v2 headers rewrapped (or that would be, in a dry run).
    pub rewrapped: usize,
    /// v1 blobs re-encrypted as v1.
    pub reencrypted_v1: usize,
    /// v1 blobs migrated to v2.
    pub migrated_v1: usize,
    /// Headers repaired from a journal left by an interrupted run.
    pub recovered: usize,
    /// Stale temporary files of an interrupted run removed.
    pub temp_removed: usize,
    /// Files that no available key opens: not AEGIS files, or under a retired/destroyed key.
    pub not_opened: Vec<PathBuf>,
    /// v2 files under a key the keyset cannot use.
    pub unknown_key: Vec<(PathBuf, KeyId)>,
    /// Files that could not be processed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// What one file needs. (No `Debug`: it can hold plaintext.)
enum Class {
    Current,
    /// v2 under another usable key: the rewrapped header, and the old one.
    Rewrap {
        old: [u8; v2::HEADER_LEN],
        new: [u8; v2::HEADER_LEN],
        from: KeyId,
    },
    /// v1 under a usable key (maybe the primary, when migrating): the plaintext.
    V1 {
        plaintext: zeroize::Zeroizing<Vec<u8>>,
        from: KeyId,
        seen: Identity,
    },
    NotOpened,
    UnknownKey(KeyId),
}

/// Which key each file under `roots` needs (v2 by header, v1 by trial decryption).
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Files per key.
    pub by_key: BTreeMap<KeyId, Vec<PathBuf>>,
    /// Files no available key opens.
    pub not_opened: Vec<PathBuf>,
    /// Directories with an unfinished rewrap journal.
    pub journals: Vec<PathBuf>,
    /// Files that could not be read.
    pub failed: Vec<(PathBuf, String)>,
}

struct Listing {
    /// Files grouped by directory.
    by_dir: BTreeMap<PathBuf, Vec<PathBuf>>,
    temps: Vec<PathBuf>,
    journals: Vec<PathBuf>,
    count: usize,
}

fn list(roots: &[PathBuf], exclude: &[PathBuf]) -> Result<Listing> {
    let exclude: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    let mut l = Listing {
        by_dir: BTreeMap::new(),
        temps: Vec::new(),
        journals: Vec::new(),
        count: 0,
    };
    for root in roots {
        if !root.exists() {
            return Err(Error::Keyset(format!("{} does not exist", root.display())));
        }
        for entry in walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| {
                let p = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Error::io(format!("walking {p}"), e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path().to_path_buf();
            let name = entry.file_name().to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                l.temps.push(path);
                continue;
            }
            if name == JOURNAL_NAME {
                l.journals.push(path);
                continue;
            }
            if let Ok(c) = fs::canonicalize(&path)
                && exclude.contains(&c)
            {
                continue;
            }
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            l.by_dir.entry(dir).or_default().push(path);
            l.count += 1;
        }
    }
    Ok(l)
}

/// Open a file we may rewrite, refusing to follow a symbolic link (a file swapped for a link
/// after the listing must not redirect our writes).
fn open_nofollow(path: &Path, write: bool) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(write);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    opts.open(path)
        .ctx(|| format!("opening {}", path.display()))
}

/// What identifies the version of a file we read: if any of it differs when we come back to
/// write, the file was replaced meanwhile and is left alone.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<std::time::SystemTime>,
}

fn identity(meta: &fs::Metadata) -> Identity {
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Identity {
        dev,
        ino,
        len: meta.len(),
        mtime: meta.modified().ok(),
    }
}

fn classify(path: &Path, keys: &Keyset, want_v1_plaintext_for_primary: bool) -> Result<Class> {
    let mut f = open_nofollow(path, false)?;
    let meta = f.metadata().ctx(|| format!("reading {}", path.display()))?;
    let mut head = [0u8; v2::HEADER_LEN];
    let got = fsutil::read_full(&mut f, &mut head).ctx(|| format!("reading {}", path.display()))?;
    let prefix = head.get(..got).unwrap_or_default();
    if v2::has_magic(prefix) {
        let h = v2::Header::parse(prefix)?;
        let primary = keys.primary_id();
        if h.key_id() == primary {
            return Ok(Class::Current);
        }
        if keys.decryption_key(h.key_id()).is_none() {
            return Ok(Class::UnknownKey(h.key_id()));
        }
        let new = h.rewrap(keys, keys.primary())?;
        return Ok(Class::Rewrap {
            old: head,
            new: new.to_bytes(),
            from: h.key_id(),
        });
    }
    // Files that cannot be v1 blobs are not read: too short, or longer than any blob the
    // Python system (or aegis) writes — this also bounds memory by the largest v1 blob.
    if got < v1::OVERHEAD || meta.len() > v1::MAX_BLOB {
        return Ok(Class::NotOpened);
    }
    let mut blob = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    blob.extend_from_slice(prefix);
    (&mut f)
        .take(v1::MAX_BLOB + 1 - got as u64)
        .read_to_end(&mut blob)
        .ctx(|| format!("reading {}", path.display()))?;
    match v1::open_with_keyset(keys, &blob) {
        Ok((pt, from)) => {
            if from == keys.primary_id() && !want_v1_plaintext_for_primary {
                Ok(Class::Current)
            } else {
                Ok(Class::V1 {
                    plaintext: zeroize::Zeroizing::new(pt),
                    from,
                    seen: identity(&meta),
                })
            }
        }
        Err(Error::NoKeyOpens { .. } | Error::Malformed(_)) => Ok(Class::NotOpened),
        Err(e) => Err(e),
    }
}

/// Re-encrypt everything under `roots` to the primary key of `keys`. `progress` is called once
/// per file with the file count of the whole run.
pub fn reencrypt(
    keys: &Keyset,
    roots: &[PathBuf],
    opts: &Options,
    progress: &mut dyn FnMut(&Path, usize),
) -> Result<Report> {
    let _locks = lock_roots(roots)?;
    let listing = list(roots, &opts.exclude)?;
    let mut report = Report::default();
    if !opts.dry_run {
        for j in &listing.journals {
            report.recovered += recover_journal(j, keys)?;
        }
        // Temporary files of an interrupted run. Ours go (no other run holds these roots);
        // others only when old: a young one may belong to a live `aegis encrypt` into the tree.
        let stale = std::time::SystemTime::now() - STALE_TEMP_AGE;
        for t in &listing.temps {
            let ours = t
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(OWN_TEMP_PREFIX));
            let old = fs::symlink_metadata(t)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < stale);
            if (ours || old) && fs::remove_file(t).is_ok() {
                report.temp_removed += 1;
            }
        }
    }
    for (dir, files) in &listing.by_dir {
        let mut batch: Vec<(PathBuf, [u8; v2::HEADER_LEN], [u8; v2::HEADER_LEN])> = Vec::new();
        for path in files {
            report.scanned += 1;
            progress(path, listing.count);
            match classify(path, keys, opts.migrate_v1) {
                Ok(Class::Current) => report.current += 1,
                Ok(Class::Rewrap { old, new, from: _ }) => {
                    report.rewrapped += 1;
                    batch.push((path.clone(), old, new));
                }
                Ok(Class::V1 {
                    plaintext,
                    from: _,
                    seen,
                }) => {
                    if opts.migrate_v1 {
                        report.migrated_v1 += 1;
                    } else {
                        report.reencrypted_v1 += 1;
                    }
                    if !opts.dry_run
                        && let Err(e) = rewrite_v1(path, keys, &plaintext, opts.migrate_v1, seen)
                    {
                        report.failed.push((path.clone(), e.to_string()));
                    }
                }
                Ok(Class::NotOpened) => report.not_opened.push(path.clone()),
                Ok(Class::UnknownKey(k)) => report.unknown_key.push((path.clone(), k)),
                Err(e) => report.failed.push((path.clone(), e.to_string())),
            }
        }
        if !opts.dry_run && !batch.is_empty() {
            for (path, why) in rewrap_batch(dir, &batch)? {
                report.rewrapped -= 1;
                report.failed.push((path, why));
            }
        }
    }
    Ok(report)
}

/// One `aegis reencrypt` (or `aegis key retire` scan) per directory tree at a time: an
/// exclusive `flock` on each root directory (no lock file is left behind), released when the
/// returned handles are dropped.
pub fn lock_roots(roots: &[PathBuf]) -> Result<Vec<File>> {
    let mut held = Vec::new();
    for root in roots.iter().filter(|r| r.is_dir()) {
        let d = File::open(root).ctx(|| format!("opening {}", root.display()))?;
        match d.try_lock() {
            Ok(()) => held.push(d),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Keyset(format!(
                    "another `aegis reencrypt` (or key retire) is working on {}; wait for it (the lock goes with the process)",
                    root.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", root.display()), e));
            }
        }
    }
    Ok(held)
}

fn rewrite_v1(
    path: &Path,
    keys: &Keyset,
    plaintext: &[u8],
    migrate: bool,
    seen: Identity,
) -> Result<()> {
    let meta = fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    if identity(&meta) != seen {
        return Err(Error::Keyset(format!(
            "{} changed during the run; left as it is (rerun to process it)",
            path.display()
        )));
    }
    let mut out = AtomicFile::create_with_prefix(path, OWN_TEMP_PREFIX)?;
    out.set_mode(fsutil::mode_of(&meta))?;
    let sealed = if migrate {
        v2::seal(keys.primary(), plaintext, v2::Options::default())?
    } else {
        v1::seal(keys.primary(), plaintext)?
    };
    out.file()
        .write_all(&sealed)
        .ctx(|| format!("writing {}", path.display()))?;
    // Last look before the rename: a file replaced while we encrypted is not overwritten.
    let now = fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    if identity(&now) != seen {
        return Err(Error::Keyset(format!(
            "{} changed during the run; left as it is (rerun to process it)",
            path.display()
        )));
    }
    out.commit(true)
}

fn journal_bytes(batch: &[(PathBuf, [u8; v2::HEADER_LEN], [u8; v2::HEADER_LEN])]) -> Vec<u8> {
    let mut j = JOURNAL_MAGIC.to_vec();
    for (path, old, new) in batch {
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default();
        j.extend_from_slice(&(name.len() as u32).to_be_bytes());
        j.extend_from_slice(&name);
        j.extend_from_slice(old);
        j.extend_from_slice(new);
    }
    j
}

fn write_header(path: &Path, header: &[u8]) -> Result<()> {
    let mut f = open_nofollow(path, true)?;
    f.write_all(header)
        .ctx(|| format!("rewriting the header of {}", path.display()))
}

/// Rewrite one header if the file still starts with the header we classified: read and write
/// through one descriptor opened without following links.
fn swap_header(path: &Path, old: &[u8; v2::HEADER_LEN], new: &[u8; v2::HEADER_LEN]) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = open_nofollow(path, true)?;
    let mut cur = [0u8; v2::HEADER_LEN];
    let n = fsutil::read_full(&mut f, &mut cur).ctx(|| format!("reading {}", path.display()))?;
    if n != v2::HEADER_LEN || cur != *old {
        return Err(Error::Keyset(format!(
            "{} changed during the run; left as it is (rerun to process it)",
            path.display()
        )));
    }
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(new))
        .ctx(|| format!("rewriting the header of {}", path.display()))
}

/// Sync everything written in the file system holding `dir` (one call per batch instead of one
/// fsync per file).
fn sync_fs_of(dir: &Path) -> Result<()> {
    let d = File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    rustix::fs::syncfs(&d).map_err(|e| Error::io(format!("syncing {}", dir.display()), e.into()))
}

/// Rewrap a directory's batch under its journal; per-file failures are returned, not fatal.
fn rewrap_batch(
    dir: &Path,
    batch: &[(PathBuf, [u8; v2::HEADER_LEN], [u8; v2::HEADER_LEN])],
) -> Result<Vec<(PathBuf, String)>> {
    let journal = dir.join(JOURNAL_NAME);
    let mut j = AtomicFile::create_with_prefix(&journal, OWN_TEMP_PREFIX)?;
    j.file()
        .write_all(&journal_bytes(batch))
        .ctx(|| format!("writing {}", journal.display()))?;
    j.commit(true)?;
    let mut failed = Vec::new();
    for (path, old, new) in batch {
        if let Err(e) = swap_header(path, old, new) {
            failed.push((path.clone(), e.to_string()));
        }
    }
    sync_fs_of(dir)?;
    fs::remove_file(&journal).ctx(|| format!("removing {}", journal.display()))?;
    fsutil::sync_dir(dir)?;
    Ok(failed)
}

/// Repair the files named in a rewrap journal left by an interrupted run; returns how many
/// headers had to be rewritten.
pub fn recover_journal(journal: &Path, keys: &Keyset) -> Result<usize> {
    let dir = journal.parent().unwrap_or(Path::new("."));
    let bytes = fs::read(journal).ctx(|| format!("reading {}", journal.display()))?;
    let mut rest = bytes
        .strip_prefix(JOURNAL_MAGIC.as_slice())
        .ok_or(Error::Malformed("rewrap journal: bad magic"))?;
    let mut repaired = 0;
    while !rest.is_empty() {
        let (len, r) = rest
            .split_first_chunk::<4>()
            .ok_or(Error::Malformed("rewrap journal: truncated"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let name = r
            .get(..len)
            .ok_or(Error::Malformed("rewrap journal: truncated"))?;
        let r = r.get(len..).unwrap_or_default();
        let (old, r) = r
            .split_first_chunk::<{ v2::HEADER_LEN }>()
            .ok_or(Error::Malformed("rewrap journal: truncated"))?;
        let (new, r) = r
            .split_first_chunk::<{ v2::HEADER_LEN }>()
            .ok_or(Error::Malformed("rewrap journal: truncated"))?;
        rest = r;
        let name =
            std::str::from_utf8(name).map_err(|_| Error::Malformed("rewrap journal: file name"))?;
        if name.contains('/') || name == ".." || name.is_empty() {
            return Err(Error::Malformed("rewrap journal: file name"));
        }
        let path = dir.join(name);
        let mut cur = [0u8; v2::HEADER_LEN];
        let Ok(mut f) = open_nofollow(&path, false) else {
            continue; // deleted since: nothing to repair
        };
        if f.read_exact(&mut cur).is_err() {
            continue;
        }
        if cur == *new || cur == *old {
            continue;
        }
        // A torn header still has the magic, chunk size and nonce prefix of this file (they
        // are the same in both headers); anything else is a file replaced since: not ours.
        let same_file = cur.get(..9) == old.get(..9) && cur.get(20..27) == old.get(20..27);
        if !same_file {
            continue;
        }
        // Torn header: restore one that authenticates with the keyset, preferring the new one.
        let pick = [new, old]
            .into_iter()
            .find(|h| v2::Header::parse(*h).and_then(|h| h.verify(keys)).is_ok());
        match pick {
            Some(h) => {
                write_header(&path, h)?;
                repaired += 1;
            }
            None => {
                return Err(Error::Keyset(format!(
                    "{}: header torn by an interrupted rewrap and neither journaled header opens with this keyset",
                    path.display()
                )));
            }
        }
    }
    sync_fs_of(dir)?;
    fs::remove_file(journal).ctx(|| format!("removing {}", journal.display()))?;
    fsutil::sync_dir(dir)?;
    Ok(repaired)
}

/// Which key every file under `roots` needs. Read-only.
pub fn scan(keys: &Keyset, roots: &[PathBuf], exclude: &[PathBuf]) -> Result<Usage> {
    let listing = list(roots, exclude)?;
    let mut usage = Usage {
        journals: listing.journals,
        ..Usage::default()
    };
    for path in listing.by_dir.into_values().flatten() {
        match classify(&path, keys, false) {
            Ok(Class::Current) => usage
                .by_key
                .entry(keys.primary_id())
                .or_default()
                .push(path),
            Ok(Class::Rewrap { from, .. } | Class::V1 { from, .. }) => {
                usage.by_key.entry(from).or_default().push(path)
            }
            Ok(Class::UnknownKey(k)) => usage.by_key.entry(k).or_default().push(path),
            Ok(Class::NotOpened) => usage.not_opened.push(path),
            Err(e) => usage.failed.push((path, e.to_string())),
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    type H = [u8; v2::HEADER_LEN];

    /// The header `path` has now, and the one a rewrap to `keys`'s primary gives it.
    fn headers(path: &Path, keys: &Keyset) -> (H, H) {
        let old: H = fs::read(path).unwrap()[..v2::HEADER_LEN]
            .try_into()
            .unwrap();
        let new = v2::Header::parse(&old)
            .unwrap()
            .rewrap(keys, keys.primary())
            .unwrap()
            .to_bytes();
        (old, new)
    }

    fn run_on(dir: &Path, keys: &Keyset) -> Report {
        reencrypt(
            keys,
            &[dir.to_path_buf()],
            &Options::default(),
            &mut |_, _| {},
        )
        .unwrap()
    }

    fn v2_file(dir: &Path, name: &str, keys: &Keyset, pt: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(
            &p,
            v2::seal(keys.primary(), pt, v2::Options::default()).unwrap(),
        )
        .unwrap();
        p
    }

    #[test]
    fn torn_header_is_repaired_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Keyset::generate().unwrap();
        let a = v2_file(dir.path(), "a", &keys, b"alpha");
        let b = v2_file(dir.path(), "b", &keys, b"beta");
        keys.rotate().unwrap();
        let (old_a, new_a) = headers(&a, &keys);
        let (old_b, new_b) = headers(&b, &keys);
        // A power cut in the middle of the batch: the journal is there, `a` has a torn header
        // (half new, half old), `b` was not written yet.
        let batch = vec![(a.clone(), old_a, new_a), (b.clone(), old_b, new_b)];
        fs::write(dir.path().join(JOURNAL_NAME), journal_bytes(&batch)).unwrap();
        let mut torn = new_a;
        torn[50..].copy_from_slice(&old_a[50..]);
        write_header(&a, &torn).unwrap();
        assert!(crate::open(&keys, &fs::read(&a).unwrap()).is_err());

        let usage = scan(&keys, &[dir.path().to_path_buf()], &[]).unwrap();
        assert_eq!(
            usage.journals.len(),
            1,
            "scan reports the unfinished journal"
        );

        let report = run_on(dir.path(), &keys);
        assert_eq!(report.recovered, 1);
        assert!(!dir.path().join(JOURNAL_NAME).exists());
        assert_eq!(
            crate::open(&keys, &fs::read(&a).unwrap()).unwrap(),
            b"alpha"
        );
        assert_eq!(crate::open(&keys, &fs::read(&b).unwrap()).unwrap(), b"beta");
        let usage = scan(&keys, &[dir.path().to_path_buf()], &[]).unwrap();
        assert_eq!(
            usage.by_key.keys().copied().collect::<Vec<_>>(),
            vec![keys.primary_id()]
        );
    }

    #[test]
    fn a_header_swap_never_writes_over_a_replaced_file_or_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Keyset::generate().unwrap();
        let a = v2_file(dir.path(), "a", &keys, b"alpha");
        keys.rotate().unwrap();
        let (old, new) = headers(&a, &keys);
        // The file was replaced after it was classified: left alone.
        let replaced = v2_file(dir.path(), "a", &keys, b"newer content");
        let before = fs::read(&replaced).unwrap();
        assert!(swap_header(&a, &old, &new).is_err());
        assert_eq!(fs::read(&a).unwrap(), before);
        // A file swapped for a symbolic link: the write does not follow it.
        #[cfg(unix)]
        {
            let target = dir.path().join("target");
            fs::write(&target, old).unwrap();
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(swap_header(&link, &old, &new).is_err());
            assert_eq!(fs::read(&target).unwrap(), old);
        }
        // Unchanged: swapped.
        let b = v2_file(dir.path(), "b", &keys, b"beta");
        let mut ks2 = keys.clone();
        ks2.rotate().unwrap();
        let (old_b, new_b) = headers(&b, &ks2);
        swap_header(&b, &old_b, &new_b).unwrap();
        assert_eq!(crate::open(&ks2, &fs::read(&b).unwrap()).unwrap(), b"beta");
    }

    #[test]
    fn journal_recovery_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Keyset::generate().unwrap();
        let a = v2_file(dir.path(), "a", &keys, b"alpha");
        keys.rotate().unwrap();
        let (old, new) = headers(&a, &keys);
        fs::write(
            dir.path().join(JOURNAL_NAME),
            journal_bytes(&[(a.clone(), old, new)]),
        )
        .unwrap();
        // After the crash someone wrote a new file under the same name.
        v2_file(dir.path(), "a", &keys, b"replacement");
        let before = fs::read(&a).unwrap();
        assert_eq!(
            recover_journal(&dir.path().join(JOURNAL_NAME), &keys).unwrap(),
            0
        );
        assert_eq!(fs::read(&a).unwrap(), before);
        assert_eq!(crate::open(&keys, &before).unwrap(), b"replacement");
    }

    #[test]
    fn journal_with_a_path_escape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyset::generate().unwrap();
        let batch = vec![(
            PathBuf::from("x"),
            [0u8; v2::HEADER_LEN],
            [0u8; v2::HEADER_LEN],
        )];
        let mut j = journal_bytes(&batch);
        // Replace the name "x" by "/": a journal can only name files of its own directory.
        j[12] = b'/';
        let jp = dir.path().join(JOURNAL_NAME);
        fs::write(&jp, j).unwrap();
        assert!(matches!(
            recover_journal(&jp, &keys),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn stale_temp_files_are_removed_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyset::generate().unwrap();
        v2_file(dir.path(), "a", &keys, b"alpha");
        fs::write(dir.path().join(".aegis-tmp-abc"), b"partial").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(dir.path().join(".aegis-tmp-abc"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A young temporary file may belong to a live process: it stays.
        fs::write(dir.path().join(".aegis-tmp-live"), b"in use").unwrap();
        let report = run_on(dir.path(), &keys);
        assert_eq!(
            (report.scanned, report.current, report.temp_removed),
            (1, 1, 1)
        );
        assert!(!dir.path().join(".aegis-tmp-abc").exists());
        assert!(dir.path().join(".aegis-tmp-live").exists());
    }
}
