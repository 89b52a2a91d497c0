//! A keyset: every master key AEGIS knows, one of them primary.
//!
//! | status      | encrypts | decrypts | material kept |
//! |-------------|----------|----------|---------------|
//! | `primary`   | yes      | yes      | yes           |
//! | `retained`  | no       | yes      | yes           |
//! | `retired`   | no       | no       | yes (can be reinstated) |
//! | `destroyed` | no       | no       | no (crypto-shredded)    |
//!
//! The keyset is plain data; [`crate::store`] persists it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::{KeyId, SecretKey};

/// Lifecycle state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// The key new data is encrypted under.
    Primary,
    /// Decrypt-only: files written under it still open.
    Retained,
    /// No longer used, material kept so the decision can be undone.
    Retired,
    /// Material erased.
    Destroyed,
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyStatus::Primary => "primary",
            KeyStatus::Retained => "retained",
            KeyStatus::Retired => "retired",
            KeyStatus::Destroyed => "destroyed",
        })
    }
}

/// One key of a keyset.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// Derived from the key material.
    pub id: KeyId,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// Creation time, seconds since the Unix epoch (`None` for keys adopted from elsewhere).
    pub created: Option<u64>,
    /// Last status change, seconds since the Unix epoch.
    pub changed: Option<u64>,
    material: Option<SecretKey>,
}

impl KeyEntry {
    /// The key material, unless destroyed.
    pub fn material(&self) -> Option<&SecretKey> {
        self.material.as_ref()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A set of master keys with exactly one primary.
#[derive(Clone, Debug)]
pub struct Keyset {
    /// Primary first; the others newest first.
    entries: Vec<KeyEntry>,
}

impl Keyset {
    /// A keyset of one primary key. `created` is `None` for a key that existed before AEGIS saw it.
    pub fn new(primary: SecretKey, created: Option<u64>) -> Self {
        Keyset {
            entries: vec![KeyEntry {
                id: primary.id(),
                status: KeyStatus::Primary,
                created,
                changed: created,
                material: Some(primary),
            }],
        }
    }

    /// A keyset with one fresh random primary key.
    pub fn generate() -> Result<Self> {
        Ok(Self::new(SecretKey::generate()?, Some(now_secs())))
    }

    /// The primary key.
    pub fn primary(&self) -> &SecretKey {
        // Invariant: entries[0] is the primary and has material (checked by every constructor
        // and mutation).
        match self.entries.first().and_then(|e| e.material.as_ref()) {
            Some(k) => k,
            None => unreachable_invariant(),
        }
    }

    /// The primary key's id.
    pub fn primary_id(&self) -> KeyId {
        self.primary().id()
    }

    /// All entries, primary first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The entry for `id`.
    pub fn entry(&self, id: KeyId) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The key `id` if it may decrypt (primary or retained).
    pub fn decryption_key(&self, id: KeyId) -> Option<&SecretKey> {
        self.entries
            .iter()
            .find(|e| e.id == id && matches!(e.status, KeyStatus::Primary | KeyStatus::Retained))
            .and_then(|e| e.material.as_ref())
    }

    /// Keys that may decrypt, primary first.
    pub fn decryption_keys(&self) -> impl Iterator<Item = &SecretKey> {
        self.entries
            .iter()
            .filter(|e| matches!(e.status, KeyStatus::Primary | KeyStatus::Retained))
            .filter_map(|e| e.material.as_ref())
    }

    /// Make a fresh key the primary; the old primary becomes retained. Returns the new id.
    pub fn rotate(&mut self) -> Result<KeyId> {
        self.promote(SecretKey::generate()?, Some(now_secs()))
    }

    /// Make `key` the primary (adding it if new); the old primary becomes retained.
    pub fn promote(&mut self, key: SecretKey, created: Option<u64>) -> Result<KeyId> {
        let id = key.id();
        let now = Some(now_secs());
        if let Some(old) = self.entries.first_mut() {
            if old.id == id {
                return Ok(id);
            }
            old.status = KeyStatus::Retained;
            old.changed = now;
        }
        if let Some(pos) = self.entries.iter().position(|e| e.id == id) {
            let mut e = self.entries.remove(pos);
            if e.material.is_none() {
                e.material = Some(key);
            }
            e.status = KeyStatus::Primary;
            e.changed = now;
            self.entries.insert(0, e);
        } else {
            self.entries.insert(
                0,
                KeyEntry {
                    id,
                    status: KeyStatus::Primary,
                    created,
                    changed: created,
                    material: Some(key),
                },
            );
        }
        Ok(id)
    }

    fn non_primary_mut(&mut self, id: KeyId) -> Result<&mut KeyEntry> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::Keyset(format!("no key {id} in the keyset")))?;
        if e.status == KeyStatus::Primary {
            return Err(Error::Keyset(format!(
                "key {id} is the primary key; rotate first"
            )));
        }
        Ok(e)
    }

    /// Add `key` as a retained (decrypt-only) key if the keyset does not know it yet.
    pub fn retain(&mut self, key: SecretKey) {
        let id = key.id();
        if self.entry(id).is_none() {
            self.entries.push(KeyEntry {
                id,
                status: KeyStatus::Retained,
                created: None,
                changed: Some(now_secs()),
                material: Some(key),
            });
        }
    }

    /// Stop using a retained key for decryption (material is kept).
    pub fn retire(&mut self, id: KeyId) -> Result<()> {
        let e = self.non_primary_mut(id)?;
        match e.status {
            KeyStatus::Retained => {
                e.status = KeyStatus::Retired;
                e.changed = Some(now_secs());
                Ok(())
            }
            KeyStatus::Retired => Ok(()),
            s => Err(Error::Keyset(format!(
                "key {id} is {s}; only a retained key can be retired"
            ))),
        }
    }

    /// Undo [`Keyset::retire`].
    pub fn reinstate(&mut self, id: KeyId) -> Result<()> {
        let e = self.non_primary_mut(id)?;
        match e.status {
            KeyStatus::Retired | KeyStatus::Retained => {
                e.status = KeyStatus::Retained;
                e.changed = Some(now_secs());
                Ok(())
            }
            s => Err(Error::Keyset(format!(
                "key {id} is {s} and cannot be reinstated"
            ))),
        }
    }

    /// Erase a retired key's material for good.
    pub fn destroy(&mut self, id: KeyId) -> Result<()> {
        let e = self.non_primary_mut(id)?;
        match e.status {
            KeyStatus::Retired | KeyStatus::Destroyed => {
                e.status = KeyStatus::Destroyed;
                e.material = None; // SecretKey zeroizes on drop
                e.changed = Some(now_secs());
                Ok(())
            }
            s => Err(Error::Keyset(format!(
                "key {id} is {s}; retire it before destroying it"
            ))),
        }
    }

    /// Serializable form (contains key material: store it only in a protected place).
    pub(crate) fn to_stored(&self) -> StoredKeyset {
        StoredKeyset {
            format: STORED_FORMAT,
            keys: self
                .entries
                .iter()
                .map(|e| StoredKey {
                    id: e.id,
                    status: e.status,
                    created: e.created,
                    changed: e.changed,
                    key: e.material.as_ref().map(SecretKey::to_base64),
                })
                .collect(),
        }
    }

    /// Rebuild from the stored form, with `primary` (from the primary entry) as the primary:
    /// the primary entry is authoritative, so a key another program put there is adopted and a
    /// half-finished rotation resolves to the key in the primary entry.
    pub(crate) fn from_stored(
        stored: StoredKeyset,
        primary: SecretKey,
        location: &str,
    ) -> Result<Self> {
        if stored.format != STORED_FORMAT {
            return Err(Error::Keyset(format!(
                "{location}: unsupported keyset format {}",
                stored.format
            )));
        }
        let mut entries = Vec::with_capacity(stored.keys.len());
        for k in stored.keys {
            let material = match &k.key {
                Some(text) => {
                    let m = SecretKey::from_base64(text, location)?;
                    if m.id() != k.id {
                        return Err(Error::CorruptKey {
                            location: location.to_string(),
                            reason: "a key does not match its id",
                        });
                    }
                    Some(m)
                }
                None => None,
            };
            if material.is_none() && k.status != KeyStatus::Destroyed {
                return Err(Error::CorruptKey {
                    location: location.to_string(),
                    reason: "a key that is not destroyed has no material",
                });
            }
            let status = match k.status {
                KeyStatus::Primary => KeyStatus::Retained,
                s => s,
            };
            entries.push(KeyEntry {
                id: k.id,
                status,
                created: k.created,
                changed: k.changed,
                material,
            });
        }
        // Reconcile: the key in the primary entry is the primary.
        let id = primary.id();
        let mut set = Keyset { entries };
        if let Some(pos) = set.entries.iter().position(|e| e.id == id) {
            let mut e = set.entries.remove(pos);
            e.status = KeyStatus::Primary;
            e.material = Some(primary);
            set.entries.insert(0, e);
        } else {
            set.entries.insert(
                0,
                KeyEntry {
                    id,
                    status: KeyStatus::Primary,
                    created: None,
                    changed: None,
                    material: Some(primary),
                },
            );
        }
        Ok(set)
    }
}

#[cold]
fn unreachable_invariant() -> ! {
    // A keyset is built with a primary that has material and every mutation keeps it so.
    std::process::abort()
}

/// Version of the stored keyset document.
const STORED_FORMAT: u32 = 1;

/// The JSON document that holds a keyset.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredKeyset {
    format: u32,
    keys: Vec<StoredKey>,
}

impl StoredKeyset {
    /// Does the document list key `id`?
    pub(crate) fn contains(&self, id: KeyId) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: KeyId,
    status: KeyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed: Option<u64>,
    /// URL-safe Base64; absent once destroyed. Zeroized when the document is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<zeroize::Zeroizing<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() -> Result<()> {
        let mut ks = Keyset::generate()?;
        let k1 = ks.primary_id();
        let k2 = ks.rotate()?;
        assert_eq!(ks.primary_id(), k2);
        assert!(ks.decryption_key(k1).is_some());
        assert!(ks.retire(k2).is_err(), "primary cannot be retired");
        assert!(ks.destroy(k1).is_err(), "must retire before destroy");
        ks.retire(k1)?;
        assert!(ks.decryption_key(k1).is_none());
        ks.reinstate(k1)?;
        assert!(ks.decryption_key(k1).is_some());
        ks.retire(k1)?;
        ks.destroy(k1)?;
        assert!(ks.entry(k1).and_then(|e| e.material()).is_none());
        assert!(ks.reinstate(k1).is_err());
        assert_eq!(ks.decryption_keys().count(), 1);
        Ok(())
    }

    #[test]
    fn stored_round_trip_and_primary_entry_wins() -> Result<()> {
        let mut ks = Keyset::generate()?;
        let k1 = ks.primary().clone();
        ks.rotate()?;
        let stored =
            serde_json::to_string(&ks.to_stored()).map_err(|_| Error::Malformed("json"))?;
        // A crash after the keyset document was written but before the primary entry was:
        // the primary entry still holds k1, so k1 stays primary and nothing is lost.
        let back: StoredKeyset =
            serde_json::from_str(&stored).map_err(|_| Error::Malformed("json"))?;
        let re = Keyset::from_stored(back, k1.clone(), "t")?;
        assert_eq!(re.primary_id(), k1.id());
        assert_eq!(re.decryption_keys().count(), 2);
        Ok(())
    }
}
