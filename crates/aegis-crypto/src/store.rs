//! Where keys live: the OS keyring (Secret Service, Keychain, Credential Manager through the
//! `keyring-core` stores) or the fallback key file, as in the Python system.
//!
//! | item | OS keyring (service `aegis_core`) | key file backend |
//! |---|---|---|
//! | primary key (URL-safe Base64, what the Python system reads and writes) | user `aegis_master_key_v2` | `aegis_key.key` |
//! | keyset document (JSON: every key with status, times, material) | user `aegis_master_key_v2/keyset` | `aegis_key.key.keyset` |
//!
//! The primary entry is authoritative: a key another program (the Python system) put there is
//! adopted as primary and the keyset document is updated to remember it. Updates write the
//! keyset document first and the primary entry second, so a crash between the two leaves the
//! old primary in force with the new key merely retained — no key is ever lost.
//!
//! Lookup order (backend `auto`): the keyring entry, then the file. Any keyring failure other
//! than "no entry" (no D-Bus, no Secret Service, locked) falls back to the file with a one-line
//! warning.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyring_core::{CredentialStore, Entry};
use zeroize::Zeroizing;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::key::SecretKey;
use crate::keyset::{Keyset, StoredKeyset, now_secs};

/// Keyring service name of the Python system.
pub const SERVICE: &str = "aegis_core";
/// Keyring user name of the primary key.
pub const PRIMARY_USER: &str = "aegis_master_key_v2";
/// Default key file name (relative to the working directory, as in the Python system).
pub const DEFAULT_KEY_FILE: &str = "aegis_key.key";
/// The attribute Python `keyring` sets on the items it creates; set on ours too so a later
/// Python `set_password` updates our item instead of adding a duplicate.
const PY_APPLICATION: (&str, &str) = ("application", "Python keyring library");
/// Largest key file accepted (a key is 44 characters).
const MAX_KEY_FILE: u64 = 4096;
/// Largest keyset document accepted.
const MAX_KEYSET_DOC: u64 = 1 << 20;

/// Which store to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The keyring when usable, else the file (lookup: keyring entry, then file).
    #[default]
    Auto,
    /// The OS keyring only; its failures are errors.
    Keyring,
    /// The key file only.
    File,
}

/// Key store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Backend choice.
    pub backend: Backend,
    /// The key file (primary key); the keyset document sits next to it with `.keyset` appended.
    pub key_file: PathBuf,
    /// Accept key files readable by group or others.
    pub allow_loose_permissions: bool,
    /// Keyring service name.
    pub service: String,
    /// Keyring user name of the primary key.
    pub user: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Auto,
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
            allow_loose_permissions: false,
            service: SERVICE.to_string(),
            user: PRIMARY_USER.to_string(),
        }
    }
}

/// Where a keyset lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The OS keyring (service, user of the primary entry).
    Keyring {
        /// Service name.
        service: String,
        /// User name of the primary entry.
        user: String,
    },
    /// The key file.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Keyring { service, user } => write!(f, "OS keyring ({service}/{user})"),
            Location::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

/// The key store: loads and persists keysets.
pub struct KeyStore {
    config: StoreConfig,
    /// This process holds the exclusive keyset lock (so loads may write the document).
    lock_held: std::cell::Cell<bool>,
}

/// Result of looking at the keyring.
enum Probe {
    Found(Keyring, SecretKey),
    /// No primary entry; `orphan`: the keyset document entry exists without it.
    Empty {
        orphan: bool,
    },
    Unusable(String),
}

/// A connected keyring with the two entries.
struct Keyring {
    primary: Entry,
    keyset: Entry,
    service: String,
    user: String,
}

fn keyring_err(e: &keyring_core::Error) -> String {
    // keyring-core's Display never includes secrets except for Ambiguous (which lists entries,
    // not values) and BadEncoding (which we never format); describe those ourselves.
    match e {
        keyring_core::Error::BadEncoding(_) => "stored value is not UTF-8 text".to_string(),
        keyring_core::Error::BadDataFormat(..) => "stored value is malformed".to_string(),
        keyring_core::Error::Ambiguous(v) => format!("{} matching items", v.len()),
        other => {
            let s = other.to_string();
            s.lines().next().unwrap_or_default().to_string()
        }
    }
}

impl Keyring {
    fn connect(service: &str, user: &str) -> std::result::Result<Self, String> {
        let store: Arc<CredentialStore> = connect_os_store()?;
        let primary = Entry::new_in_store(&store, service, user).map_err(|e| keyring_err(&e))?;
        let keyset = Entry::new_in_store(&store, service, &format!("{user}/keyset"))
            .map_err(|e| keyring_err(&e))?;
        Ok(Keyring {
            primary,
            keyset,
            service: service.to_string(),
            user: user.to_string(),
        })
    }

    fn location(&self) -> Location {
        Location::Keyring {
            service: self.service.clone(),
            user: self.user.clone(),
        }
    }

    fn name(&self) -> String {
        format!("keyring entry {}/{}", self.service, self.user)
    }

    /// Read an entry's text; `Ok(None)` when there is no such entry. Duplicate items holding the
    /// same value are tolerated (with a warning); differing duplicates are an error.
    fn read(entry: &Entry, what: &str) -> Result<Option<Zeroizing<String>>> {
        match entry.get_password() {
            Ok(s) => Ok(Some(Zeroizing::new(s))),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(keyring_core::Error::Ambiguous(items)) => {
                let mut first: Option<Zeroizing<String>> = None;
                for item in &items {
                    let v = Zeroizing::new(
                        item.get_password()
                            .map_err(|e| Error::Keyring(format!("{what}: {}", keyring_err(&e))))?,
                    );
                    match &first {
                        None => first = Some(v),
                        Some(f) if f.trim() == v.trim() => {}
                        Some(_) => {
                            return Err(Error::KeyringConflict(format!(
                                "{what}: {} items in the Secret Service hold different values; \
                                 delete the stale ones (see `secret-tool search --all service NAME`) and retry",
                                items.len(),
                            )));
                        }
                    }
                }
                tracing::warn!(
                    "{what}: {} duplicate keyring items hold the same value; using it",
                    items.len()
                );
                Ok(first)
            }
            Err(e) => Err(Error::Keyring(format!("{what}: {}", keyring_err(&e)))),
        }
    }

    /// Write an entry (every duplicate, if there are several) and tag it like Python does.
    fn write(entry: &Entry, what: &str, value: &str) -> Result<()> {
        let attrs: HashMap<&str, &str> = HashMap::from([PY_APPLICATION]);
        match entry.set_password(value) {
            Ok(()) => entry
                .update_attributes(&attrs)
                .or_else(|e| match e {
                    keyring_core::Error::NotSupportedByStore(_) => Ok(()),
                    e => Err(e),
                })
                .map_err(|e| Error::Keyring(format!("{what}: {}", keyring_err(&e)))),
            Err(keyring_core::Error::Ambiguous(items)) => {
                for item in &items {
                    item.set_password(value)
                        .map_err(|e| Error::Keyring(format!("{what}: {}", keyring_err(&e))))?;
                }
                Ok(())
            }
            Err(e) => Err(Error::Keyring(format!("{what}: {}", keyring_err(&e)))),
        }
    }
}

/// The platform's credential store.
fn connect_os_store() -> std::result::Result<Arc<CredentialStore>, String> {
    #[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd"))]
    {
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        {
            return Err("no D-Bus session bus".to_string());
        }
        let s = zbus_secret_service_keyring_store::Store::new().map_err(|e| keyring_err(&e))?;
        Ok(s)
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd")))]
    {
        Err("no OS keyring support is compiled in for this platform".to_string())
    }
}

impl KeyStore {
    /// A store with these settings (no I/O yet).
    pub fn new(config: StoreConfig) -> Self {
        KeyStore {
            config,
            lock_held: std::cell::Cell::new(false),
        }
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn keyset_file(&self) -> PathBuf {
        let mut p = self.config.key_file.clone().into_os_string();
        p.push(".keyset");
        PathBuf::from(p)
    }

    fn probe_keyring(&self) -> Result<Probe> {
        let kr = match Keyring::connect(&self.config.service, &self.config.user) {
            Ok(k) => k,
            Err(why) => return Ok(Probe::Unusable(why)),
        };
        let name = kr.name();
        match Keyring::read(&kr.primary, &name) {
            Ok(Some(text)) => {
                let key = SecretKey::from_base64(&text, &name)?;
                Ok(Probe::Found(kr, key))
            }
            Ok(None) => {
                let doc = format!("{name}/keyset");
                let orphan = matches!(Keyring::read(&kr.keyset, &doc), Ok(Some(_)) | Err(_));
                Ok(Probe::Empty { orphan })
            }
            // Only an unreachable keyring falls back; differing duplicates are a real problem.
            Err(Error::Keyring(why)) => Ok(Probe::Unusable(why)),
            Err(e) => Err(e),
        }
    }

    /// Load the keyset, following the lookup order. Fails with a clear message when no key
    /// exists anywhere (run `aegis key init`).
    pub fn load(&self) -> Result<(Keyset, Location)> {
        let mut keyring_problem = None;
        if self.config.backend != Backend::File {
            match self.probe_keyring()? {
                Probe::Found(kr, key) => {
                    let mut ks = self.load_keyring_keyset(&kr, key)?;
                    if self.config.backend == Backend::Auto {
                        self.adopt_shadowed_file_key(&mut ks, &kr.location());
                    }
                    return Ok((ks, kr.location()));
                }
                Probe::Empty { orphan: true } => {
                    return Err(self.orphan_error());
                }
                Probe::Empty { .. } if self.config.backend == Backend::Keyring => {
                    return Err(Error::Keyset(format!(
                        "no key in keyring entry {}/{}; run `aegis key init`",
                        self.config.service, self.config.user
                    )));
                }
                Probe::Unusable(why) if self.config.backend == Backend::Keyring => {
                    return Err(Error::Keyring(why));
                }
                Probe::Empty { .. } => {}
                Probe::Unusable(why) => keyring_problem = Some(why),
            }
        }
        let path = &self.config.key_file;
        if !path.exists() {
            return Err(Error::Keyset(
                match (self.config.backend, keyring_problem) {
                    (Backend::File, _) => {
                        format!("no key file {}; run `aegis key init`", path.display())
                    }
                    (_, Some(why)) => format!(
                        "no key found: no key file {}, and the OS keyring could not be read ({why}); \
                     if the key is in the keyring make it reachable, else run `aegis key init`",
                        path.display()
                    ),
                    (_, None) => format!(
                        "no key found (neither keyring entry {}/{} nor key file {}); run `aegis key init`",
                        self.config.service,
                        self.config.user,
                        path.display()
                    ),
                },
            ));
        }
        if let Some(why) = keyring_problem {
            tracing::warn!(
                "OS keyring unusable ({why}); using key file {}",
                path.display()
            );
        }
        let key = self.read_key_file(path)?;
        let ks = self.load_file_keyset(key)?;
        Ok((ks, Location::File(path.clone())))
    }

    fn read_secret_file(&self, path: &Path, limit: u64) -> Result<Zeroizing<String>> {
        let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let meta = f.metadata().ctx(|| format!("reading {}", path.display()))?;
        if !self.config.allow_loose_permissions {
            let mode = fsutil::mode_of(&meta);
            if mode & 0o077 != 0 {
                return Err(Error::LoosePermissions {
                    path: path.to_path_buf(),
                    mode: mode & 0o777,
                });
            }
        }
        if meta.len() > limit {
            return Err(Error::CorruptKey {
                location: path.display().to_string(),
                reason: "file is far too large to be a key",
            });
        }
        let mut buf = Zeroizing::new(Vec::new());
        (&mut f)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("reading {}", path.display()))?;
        if buf.len() as u64 > limit {
            return Err(Error::CorruptKey {
                location: path.display().to_string(),
                reason: "file is far too large to be a key",
            });
        }
        let text = std::str::from_utf8(&buf).map_err(|_| Error::CorruptKey {
            location: path.display().to_string(),
            reason: "not text",
        })?;
        Ok(Zeroizing::new(text.to_string()))
    }

    fn read_key_file(&self, path: &Path) -> Result<SecretKey> {
        let text = self.read_secret_file(path, MAX_KEY_FILE)?;
        SecretKey::from_base64(&text, &path.display().to_string())
    }

    fn parse_doc(text: &str, location: &str) -> Result<StoredKeyset> {
        serde_json::from_str(text).map_err(|_| Error::CorruptKey {
            location: location.to_string(),
            reason: "keyset document is not valid",
        })
    }

    fn load_file_keyset(&self, primary: SecretKey) -> Result<Keyset> {
        let doc_path = self.keyset_file();
        if !doc_path.exists() {
            let ks = Keyset::new(primary, None);
            self.remember_adopted(&ks, &Location::File(self.config.key_file.clone()));
            return Ok(ks);
        }
        let loc = doc_path.display().to_string();
        let text = self.read_secret_file(&doc_path, MAX_KEYSET_DOC)?;
        let doc = Self::parse_doc(&text, &loc)?;
        let adopted = !doc_mentions(&doc, &primary);
        let ks = Keyset::from_stored(doc, primary, &loc)?;
        if adopted {
            self.remember_adopted(&ks, &Location::File(self.config.key_file.clone()));
        }
        Ok(ks)
    }

    fn load_keyring_keyset(&self, kr: &Keyring, primary: SecretKey) -> Result<Keyset> {
        let what = format!("keyring entry {}/{}/keyset", kr.service, kr.user);
        match Keyring::read(&kr.keyset, &what)? {
            None => {
                let ks = Keyset::new(primary, None);
                self.remember_adopted(&ks, &kr.location());
                Ok(ks)
            }
            Some(text) => {
                let doc = Self::parse_doc(&text, &what)?;
                let adopted = !doc_mentions(&doc, &primary);
                let ks = Keyset::from_stored(doc, primary, &what)?;
                if adopted {
                    self.remember_adopted(&ks, &kr.location());
                }
                Ok(ks)
            }
        }
    }

    /// In auto mode a key file can exist beside a keyring key (created while the keyring was
    /// unreachable). Its key must not be shadowed silently: it is added to the keyring keyset
    /// as retained (so its files still decrypt) with a warning.
    fn adopt_shadowed_file_key(&self, ks: &mut Keyset, loc: &Location) {
        let path = &self.config.key_file;
        if !path.exists() {
            return;
        }
        match self.read_key_file(path) {
            Ok(key) if ks.entry(key.id()).is_none() => {
                let id = key.id();
                ks.retain(key);
                tracing::warn!(
                    "key file {} holds key {id}, which the keyring keyset lacked; added it as retained",
                    path.display()
                );
                self.remember_adopted(ks, loc);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "ignoring key file {} beside the keyring key: {e}",
                path.display()
            ),
        }
    }

    /// A primary key that another program wrote is recorded in the keyset document, so that a
    /// later overwrite of the primary entry cannot lose it. Best effort: a failure is a warning.
    fn remember_adopted(&self, ks: &Keyset, loc: &Location) {
        let held = self.lock_held.get();
        let _guard = if held {
            None
        } else {
            match self.try_lock_now() {
                Some(g) => Some(g),
                // Another process is changing the keyset; it will record the key itself.
                None => return,
            }
        };
        if let Err(e) = self.write_doc(ks, loc) {
            tracing::warn!("could not record the keyset in {loc}: {e}");
        }
    }

    fn write_doc(&self, ks: &Keyset, loc: &Location) -> Result<()> {
        let doc = Zeroizing::new(
            serde_json::to_string_pretty(&ks.to_stored())
                .map_err(|_| Error::Malformed("keyset serialization"))?,
        );
        match loc {
            Location::File(_) => fsutil::replace_private(&self.keyset_file(), doc.as_bytes()),
            Location::Keyring { service, user } => {
                let kr = Keyring::connect(service, user).map_err(Error::Keyring)?;
                Keyring::write(
                    &kr.keyset,
                    &format!("keyring entry {service}/{user}/keyset"),
                    &doc,
                )
            }
        }
    }

    fn write_primary(&self, ks: &Keyset, loc: &Location) -> Result<()> {
        let text = ks.primary().to_base64();
        match loc {
            Location::File(p) => fsutil::replace_private(p, text.as_bytes()),
            Location::Keyring { service, user } => {
                let kr = Keyring::connect(service, user).map_err(Error::Keyring)?;
                Keyring::write(&kr.primary, &kr.name(), &text)
            }
        }
    }

    /// Create a new keyset with a fresh primary key. Refuses if a key already exists in the
    /// keyring entry or the key file (a corrupt key file counts: it is never overwritten).
    pub fn init(&self) -> Result<(Keyset, Location)> {
        let _lock = self.lock(LockMode::Exclusive)?;
        let path = self.config.key_file.clone();
        let existing = [path.clone(), self.keyset_file()]
            .into_iter()
            .find(|p| p.exists());
        let mut use_keyring = false;
        if self.config.backend != Backend::File {
            match self.probe_keyring()? {
                Probe::Found(kr, _) => {
                    return Err(Error::Keyset(format!(
                        "a key already exists in {}; nothing was changed",
                        kr.location()
                    )));
                }
                Probe::Empty { orphan: true } => return Err(self.orphan_error()),
                Probe::Empty { .. } => use_keyring = true,
                Probe::Unusable(why) if self.config.backend == Backend::Keyring => {
                    return Err(Error::Keyring(why));
                }
                Probe::Unusable(why) => {
                    tracing::warn!(
                        "OS keyring unusable ({why}); using key file {}",
                        path.display()
                    );
                }
            }
        }
        if let Some(p) = existing.filter(|_| self.config.backend != Backend::Keyring) {
            return Err(Error::Keyset(format!(
                "{} already exists; nothing was changed",
                p.display()
            )));
        }
        let ks = Keyset::generate()?;
        if use_keyring {
            let loc = Location::Keyring {
                service: self.config.service.clone(),
                user: self.config.user.clone(),
            };
            // Primary entry first: a crash before the document leaves a key that loads (the
            // document is rebuilt from it), never a document without its primary.
            match self.write_primary(&ks, &loc) {
                Ok(()) => {
                    if let Err(e) = self.write_doc(&ks, &loc) {
                        tracing::warn!(
                            "keyset document not written yet ({e}); the next command writes it"
                        );
                    }
                    return Ok((ks, loc));
                }
                Err(e) if self.config.backend == Backend::Auto => {
                    tracing::warn!(
                        "could not store the key in the OS keyring ({e}); using key file {}",
                        path.display()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        // The key file is created 0600 with O_EXCL, before the document: a crash in between
        // leaves a key file that loads (the document is rebuilt from it).
        fsutil::create_private(&path, ks.primary().to_base64().as_bytes())?;
        let doc = Zeroizing::new(
            serde_json::to_string_pretty(&ks.to_stored())
                .map_err(|_| Error::Malformed("keyset serialization"))?,
        );
        fsutil::create_private(&self.keyset_file(), doc.as_bytes())?;
        Ok((ks, Location::File(path)))
    }

    fn orphan_error(&self) -> Error {
        Error::Keyset(format!(
            "the OS keyring holds the keyset document {svc}/{user}/keyset but no primary key \
             entry {svc}/{user}; restore the primary key there (its Base64 text) — refusing to \
             create a new keyset over the old keys",
            svc = self.config.service,
            user = self.config.user
        ))
    }

    /// Persist a keyset whose primary may have changed (rotation): the document first, then
    /// the primary entry. Prefer [`KeyStore::update`], which also excludes concurrent writers.
    pub fn save(&self, ks: &Keyset, loc: &Location) -> Result<()> {
        self.write_doc(ks, loc)?;
        self.write_primary(ks, loc)
    }

    /// Load, change and save the keyset while holding the store's exclusive lock, so two
    /// `aegis` processes changing keys at once cannot lose each other's keys.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Keyset) -> Result<T>,
    ) -> Result<(T, Keyset, Location)> {
        let lock = self.lock(LockMode::Exclusive)?;
        self.update_held(&lock, f)
    }

    /// [`KeyStore::update`] under an exclusive lock the caller already holds (to keep the
    /// keyset fixed across a longer check, as `aegis key retire` does).
    pub fn update_held<T>(
        &self,
        lock: &KeysetLock<'_>,
        f: impl FnOnce(&mut Keyset) -> Result<T>,
    ) -> Result<(T, Keyset, Location)> {
        if !lock.exclusive {
            return Err(Error::Keyset(
                "changing keys needs the exclusive keyset lock".into(),
            ));
        }
        let (mut ks, loc) = self.load()?;
        let t = f(&mut ks)?;
        self.save(&ks, &loc)?;
        Ok((t, ks, loc))
    }

    /// Where the keyset lock lives: next to the key file for the file backend (whose
    /// directory must be writable anyway); for the keyring, in the per-user runtime directory
    /// (`$XDG_RUNTIME_DIR/aegis/`), else in the temporary directory under the user's id.
    fn lock_path(&self) -> PathBuf {
        let keyring_name = || {
            let clean = |s: &str| {
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect::<String>()
            };
            format!(
                "{}-{}.lock",
                clean(&self.config.service),
                clean(&self.config.user)
            )
        };
        let file_lock = || {
            let mut p = self.config.key_file.clone().into_os_string();
            p.push(".lock");
            PathBuf::from(p)
        };
        if self.config.backend == Backend::File || self.config.key_file.exists() {
            return file_lock();
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("aegis").join(keyring_name()),
            None => {
                #[cfg(unix)]
                let uid = rustix::process::getuid().as_raw();
                #[cfg(not(unix))]
                let uid = 0;
                std::env::temp_dir()
                    .join(format!("aegis-{uid}"))
                    .join(keyring_name())
            }
        }
    }

    fn open_lock_file(&self) -> Result<(File, PathBuf)> {
        let path = self.lock_path();
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            let mut b = fs::DirBuilder::new();
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.recursive(true)
                .create(dir)
                .ctx(|| format!("creating {}", dir.display()))?;
        }
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts
            .open(&path)
            .ctx(|| format!("opening the keyset lock {}", path.display()))?;
        Ok((f, path))
    }

    /// Take the keyset lock (`flock`): exclusive to change keys, shared for long work that
    /// relies on the keyset staying as it is (`aegis reencrypt`). Waits up to 10 s.
    pub fn lock(&self, mode: LockMode) -> Result<KeysetLock<'_>> {
        let (f, path) = match self.open_lock_file() {
            Ok(x) => x,
            // Reading under a key directory we cannot write to: nobody who shares our access
            // can change the keys there either, so a shared lock is not needed.
            Err(e) if mode == LockMode::Shared => {
                tracing::debug!("no shared keyset lock: {e}");
                return Ok(KeysetLock {
                    _file: None,
                    store: self,
                    exclusive: false,
                });
            }
            Err(e) => return Err(e),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = match mode {
                LockMode::Exclusive => f.try_lock(),
                LockMode::Shared => f.try_lock_shared(),
            };
            match r {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Keyset(format!(
                        "the keyset is in use by another aegis process (a key change or a reencrypt; lock {}); try again when it ends",
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", path.display()), e));
                }
            }
        }
        if mode == LockMode::Exclusive {
            self.remove_stale_temps();
            self.lock_held.set(true);
        }
        Ok(KeysetLock {
            _file: Some(f),
            store: self,
            exclusive: mode == LockMode::Exclusive,
        })
    }

    fn try_lock_now(&self) -> Option<KeysetLock<'_>> {
        let (f, _) = self.open_lock_file().ok()?;
        f.try_lock().ok()?;
        self.lock_held.set(true);
        Some(KeysetLock {
            _file: Some(f),
            store: self,
            exclusive: true,
        })
    }

    /// A creation/change time for status output: ISO 8601 UTC and the age.
    pub fn describe_time(secs: Option<u64>) -> String {
        match secs {
            None => "unknown".to_string(),
            Some(s) => {
                let age = now_secs().saturating_sub(s);
                format!("{} ({} ago)", utc_iso8601(s), human_age(age))
            }
        }
    }

    /// Under the exclusive lock, temporary copies of the key file or keyset document left by
    /// a killed process are ours to remove (they hold key material).
    fn remove_stale_temps(&self) {
        let kf = &self.config.key_file;
        let dir = match kf.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let Some(name) = kf.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        let prefix = format!("{}{name}", fsutil::TEMP_PREFIX);
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// How [`KeyStore::lock`] locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Changing keys.
    Exclusive,
    /// Working under the keyset as it is (many at once).
    Shared,
}

/// A held keyset lock; released when dropped.
pub struct KeysetLock<'a> {
    _file: Option<File>,
    store: &'a KeyStore,
    exclusive: bool,
}

impl Drop for KeysetLock<'_> {
    fn drop(&mut self) {
        if self.exclusive {
            self.store.lock_held.set(false);
        }
    }
}

fn doc_mentions(doc: &StoredKeyset, key: &SecretKey) -> bool {
    doc.contains(key.id())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, H. Hinnant's civil_from_days).
pub fn utc_iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Remove a file if it exists (tests and tooling).
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::utc_iso8601;

    #[test]
    fn iso_dates() {
        assert_eq!(utc_iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_iso8601(1_795_906_637), "2026-11-28T22:57:17Z");
    }
}
