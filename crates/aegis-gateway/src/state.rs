//! What every request handler shares.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aegis_transport::pki::Ca;

use crate::auth::TokenCache;
use crate::db::Db;
use crate::fl::FlAdmin;

/// Audit entries for authentication failures per second at most; the others are counted and
/// reported in the next entry, so a flood of bad requests cannot flood the log.
const AUTH_FAILURE_ENTRIES_PER_SEC: u32 = 10;

/// Locks `m`, ignoring poisoning (every critical section leaves its data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    pub responses: [AtomicU64; 5],
    /// Requests refused for authentication.
    pub auth_failures: AtomicU64,
    /// Refusals (authentication failures and denied actions) not written to the audit log
    /// (rate limit).
    pub auth_failures_unlogged: AtomicU64,
    /// Audit entries appended.
    pub audit_entries: AtomicU64,
    /// Model bytes streamed to callers.
    pub model_bytes: AtomicU64,
}

/// The shared state.
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The FL server's admin service.
    pub fl: FlAdmin,
    /// Token lookups.
    pub tokens: TokenCache,
    /// The deployment CA, to sign enrolled clients' certificate requests (absent: enrolment
    /// issues tokens only).
    pub ca: Option<Ca>,
    /// Counters.
    pub metrics: Metrics,
    /// The last `GET /v1/jobs/{id}` body of each job, with the FL server's answer it was made
    /// from.
    pub(crate) views:
        Mutex<std::collections::HashMap<String, (std::sync::Arc<crate::fl::FlJob>, bytes::Bytes)>>,
    /// Job rows read so far (they never change).
    pub(crate) jobs:
        Mutex<std::collections::HashMap<String, std::sync::Arc<crate::api::StoredJob>>>,
    /// The database's last health check and when it ran.
    db_up: Mutex<Option<(bool, Instant)>>,
    /// Rate limit of auth-failure audit entries: (second, entries written in it).
    auth_log: Mutex<(Option<Instant>, u32)>,
}

impl AppState {
    /// The state.
    pub fn new(db: Db, fl: FlAdmin, ca: Option<Ca>) -> AppState {
        AppState {
            db,
            fl,
            tokens: TokenCache::default(),
            ca,
            metrics: Metrics::default(),
            jobs: Mutex::new(std::collections::HashMap::new()),
            views: Mutex::new(std::collections::HashMap::new()),
            auth_log: Mutex::new((None, 0)),
            db_up: Mutex::new(None),
        }
    }

    /// Whether the database answers (checked at most once a second: `/healthz` needs no
    /// token, so its callers must not reach the database at will).
    pub async fn db_up(&self) -> bool {
        if let Some((up, at)) = *lock(&self.db_up)
            && at.elapsed().as_secs() < 1
        {
            return up;
        }
        let up = self.db.ping().await;
        *lock(&self.db_up) = Some((up, Instant::now()));
        up
    }

    /// Appends an audit entry; a failure to write it is logged (the action has happened).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        match self.db.audit(actor, action, target, outcome, detail).await {
            Ok(_) => {
                self.metrics.audit_entries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, action, target, "could not write the audit log"),
        }
    }

    /// Records a refused authentication (rate-limited in the audit log, always counted).
    pub async fn auth_failure(&self, remote: &str, why: &str) {
        self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::info!(remote, reason = why, "authentication refused");
        self.audit_limited("anonymous", "auth.failure", remote, why)
            .await;
    }

    /// Appends a `denied` entry, at most [`AUTH_FAILURE_ENTRIES_PER_SEC`] per second with the
    /// count of those left out in the next one: refusals are cheap to cause in bulk, and must
    /// not flood the log nor hold its lock.
    pub async fn audit_limited(&self, actor: &str, action: &str, target: &str, why: &str) {
        let write = {
            let mut log = lock(&self.auth_log);
            let fresh = log.0.is_none_or(|t| t.elapsed().as_secs() >= 1);
            if fresh {
                *log = (Some(Instant::now()), 0);
            }
            log.1 += 1;
            log.1 <= AUTH_FAILURE_ENTRIES_PER_SEC
        };
        if !write {
            self.metrics
                .auth_failures_unlogged
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self
            .metrics
            .auth_failures_unlogged
            .swap(0, Ordering::Relaxed);
        let detail = if unlogged > 0 {
            format!("{why}; {unlogged} earlier refusals not logged (rate limit)")
        } else {
            why.to_string()
        };
        self.audit(actor, action, target, "denied", &detail).await;
    }
}
