//! The tamper-evident audit log: every entry carries the SHA-256 of the previous entry, and
//! its own hash covers all its fields and that link. Editing, deleting, inserting or
//! reordering stored entries breaks the chain at that point, which [`Verifier`] reports.
//!
//! An entry's hash is SHA-256 over the JSON array
//! `[seq, at, actor, action, target, outcome, detail, prev_hash]` (serde_json's compact form,
//! strings escaped as JSON does): unambiguous, and reproducible in any language.
//!
//! What it does not prevent: someone who can write the database can rewrite the whole chain
//! from the point they changed. Keep the head hash somewhere else (`aegis gateway audit
//! verify` prints it) to detect that too.

use aegis_crypto::primitives::digest;
use serde::Serialize;

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    #[serde(skip)]
    pub at: i64,
    /// Token name, or `anonymous`.
    pub actor: String,
    /// What happened (`token.issue`, `job.create`, `auth.failure`, ...).
    pub action: String,
    /// What it happened to.
    pub target: String,
    /// `success`, `denied` or `error`.
    pub outcome: String,
    /// More context (never a secret).
    pub detail: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// The hash of an entry's fields and its link.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([seq, at, actor, action, target, outcome, detail, prev_hash]);
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(digest::digest(&digest::SHA256, &bytes))
}

impl Entry {
    /// A new entry linked to `prev_hash`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seq: i64,
        at: i64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
        prev_hash: &str,
    ) -> Entry {
        Entry {
            seq,
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
            prev_hash: prev_hash.into(),
            hash: entry_hash(seq, at, actor, action, target, outcome, detail, prev_hash),
        }
    }

    /// Whether the stored hash matches the stored fields.
    pub fn hash_ok(&self) -> bool {
        self.hash
            == entry_hash(
                self.seq,
                self.at,
                &self.actor,
                &self.action,
                &self.target,
                &self.outcome,
                &self.detail,
                &self.prev_hash,
            )
    }
}

/// What a walk of the chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry (the genesis value for an empty log).
    pub head: String,
    /// The first problem: the entry's `seq` and what is wrong.
    pub first_error: Option<(i64, String)>,
}

impl Report {
    /// Whether the chain is intact.
    pub fn ok(&self) -> bool {
        self.first_error.is_none()
    }
}

/// Checks entries in order: consecutive `seq` from 1, each `prev_hash` the previous `hash`,
/// each `hash` recomputed.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    prev_hash: String,
    entries: u64,
    first_error: Option<(i64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev_hash: GENESIS.into(),
            entries: 0,
            first_error: None,
        }
    }
}

impl Verifier {
    /// Checks the next entry.
    pub fn push(&mut self, e: &Entry) {
        self.entries += 1;
        if self.first_error.is_none() {
            let problem = if e.seq != self.expected_seq {
                Some(format!(
                    "expected entry {} here, found {} (entries deleted or inserted)",
                    self.expected_seq, e.seq
                ))
            } else if e.prev_hash != self.prev_hash {
                Some("its link does not match the previous entry's hash (an earlier entry was changed or removed)".to_string())
            } else if !e.hash_ok() {
                Some("its contents do not match its hash (the entry was changed)".to_string())
            } else {
                None
            };
            if let Some(p) = problem {
                self.first_error = Some((e.seq, p));
            }
        }
        self.expected_seq = e.seq.saturating_add(1);
        self.prev_hash = e.hash.clone();
    }

    /// The result.
    pub fn finish(self) -> Report {
        Report {
            entries: self.entries,
            head: self.prev_hash,
            first_error: self.first_error,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn chain(n: i64) -> Vec<Entry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let e = Entry::new(
                    i,
                    1000 + i,
                    "ops",
                    "job.create",
                    "job-1",
                    "success",
                    "",
                    &prev,
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(entries: &[Entry]) -> Report {
        let mut v = Verifier::default();
        for e in entries {
            v.push(e);
        }
        v.finish()
    }

    #[test]
    fn intact_chain_verifies_and_every_kind_of_tampering_is_found() {
        let good = chain(5);
        let r = verify(&good);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.entries, r.head.as_str()), (5, good[4].hash.as_str()));

        let mut edited = good.clone();
        edited[2].outcome = "denied".into();
        assert_eq!(verify(&edited).first_error.map(|e| e.0), Some(3));

        let mut rehashed = good.clone();
        rehashed[2] = Entry::new(
            3,
            1,
            "mallory",
            "job.create",
            "x",
            "success",
            "",
            &good[1].hash,
        );
        // The edited entry is self-consistent, so the break shows at the next link.
        assert_eq!(verify(&rehashed).first_error.map(|e| e.0), Some(4));

        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted).first_error.map(|e| e.0), Some(3));

        let mut swapped = good;
        swapped.swap(1, 2);
        assert!(verify(&swapped).first_error.is_some());
        assert!(verify(&[]).ok());
    }
}
