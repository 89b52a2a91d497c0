//! Bearer tokens: random, shown once, stored as SHA-256 hashes, scoped by role, expirable and
//! revocable; the [`Caller`] extractor that authenticates every `/v1` request.
//!
//! Lookups are cached for [`CACHE_TTL`] (hits and misses, so a flood of bad tokens does not
//! reach the database); a revocation through this gateway clears the cache at once, one made
//! by another gateway on the same database takes effect within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_crypto::primitives::digest;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;

use crate::db::{Role, TokenRow, now_ms};
use crate::error::ApiError;
use crate::state::AppState;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "aegis_";

/// How long a token lookup is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Cached lookups at most (the cache is emptied when full).
const CACHE_MAX: usize = 65_536;

/// A new token (256 random bits) and its hash.
pub fn new_token() -> Result<(zeroize::Zeroizing<String>, String), crate::Error> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    aegis_crypto::key::fill_random(&mut raw[..])
        .map_err(|e| crate::Error::Config(format!("OS randomness: {e}")))?;
    let token = zeroize::Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
    ));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// SHA-256 of a token, hex. Tokens are 256-bit random values, so a fast hash is enough: there
/// is nothing to brute-force.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// A short random id (tokens, jobs): 12 hex digits.
pub fn random_id(prefix: &str) -> Result<String, crate::Error> {
    let mut raw = [0u8; 6];
    aegis_crypto::key::fill_random(&mut raw)
        .map_err(|e| crate::Error::Config(format!("OS randomness: {e}")))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// Longest token lifetime: ten years.
pub const MAX_LIFETIME_SECS: u64 = 315_360_000;

/// Checks a token's name (1-64 printable characters) and lifetime (1 s to ten years); the
/// message says what is wrong.
pub fn check_token_request(name: &str, expires_in_seconds: Option<u64>) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err("the token's name must be 1-64 printable characters".into());
    }
    if expires_in_seconds.is_some_and(|s| s == 0 || s > MAX_LIFETIME_SECS) {
        return Err(format!(
            "the lifetime must be between 1 and {MAX_LIFETIME_SECS} seconds (ten years)"
        ));
    }
    Ok(())
}

/// Creates a token, stores its hash, and returns the row and the token (shown once).
pub async fn issue_stored_token(
    db: &crate::db::Db,
    name: &str,
    role: Role,
    client_id: Option<u64>,
    expires_in_seconds: Option<u64>,
) -> Result<(TokenRow, zeroize::Zeroizing<String>), crate::Error> {
    let (token, hash) = new_token()?;
    let created_at = now_ms();
    let lifetime_ms =
        expires_in_seconds.map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX));
    let row = TokenRow {
        id: random_id("tok_")?,
        name: name.to_string(),
        role,
        client_id,
        created_at,
        expires_at: lifetime_ms.map(|ms| created_at.saturating_add(ms)),
        revoked_at: None,
    };
    db.insert_token(&row, &hash).await?;
    Ok((row, token))
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token id.
    pub token_id: String,
    /// Token name (the audit log's actor).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Enrolled client of a `client` token.
    pub client_id: Option<u64>,
    /// When the token expires.
    pub expires_at: Option<i64>,
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not {what}",
                self.role.as_str()
            )))
        }
    }
}

/// Token lookups, by hash.
#[derive(Default)]
pub struct TokenCache {
    map: Mutex<HashMap<String, (Option<TokenRow>, Instant)>>,
    /// Bumped by every [`TokenCache::clear`]: a lookup that started before a revocation must
    /// not put its stale row back afterwards.
    generation: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// The current generation, to pass to [`TokenCache::put_if`].
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Caches `row` unless the cache was cleared since `generation` was read.
    fn put_if(&self, generation: u64, hash: String, row: Option<TokenRow>) {
        let mut map = crate::state::lock(&self.map);
        if self.generation() != generation {
            return;
        }
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (row, Instant::now()));
    }

    fn get(&self, hash: &str) -> Option<Option<TokenRow>> {
        let map = crate::state::lock(&self.map);
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(row, _)| row.clone())
    }

    /// Forgets every lookup (after a revocation).
    pub fn clear(&self) {
        let mut map = crate::state::lock(&self.map);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        map.clear();
    }
}

/// Why a token was refused (for the audit log; the caller only sees 401).
fn refusal(row: Option<&TokenRow>, now: i64) -> Option<&'static str> {
    match row {
        None => Some("unknown token"),
        Some(t) if t.revoked_at.is_some() => Some("revoked token"),
        Some(t) if t.expires_at.is_some_and(|e| e <= now) => Some("expired token"),
        Some(_) => None,
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        let remote = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::serve::Peer>>()
            .map(|c| c.0.remote_addr.to_string())
            .unwrap_or_default();
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token.filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() <= 128) else {
            state
                .auth_failure(
                    &remote,
                    if token.is_some() {
                        "malformed token"
                    } else {
                        "no token"
                    },
                )
                .await;
            return Err(ApiError::Unauthorized);
        };
        let hash = token_hash(token);
        let row = match state.tokens.get(&hash) {
            Some(row) => row,
            None => {
                let generation = state.tokens.generation();
                let row = state.db.token_by_hash(&hash).await.map_err(|e| {
                    // The database's words (hosts, users) are for the log, not for callers
                    // who have not authenticated.
                    tracing::error!(error = %e, "token lookup failed");
                    ApiError::Unavailable("authentication unavailable".into())
                })?;
                state.tokens.put_if(generation, hash, row.clone());
                row
            }
        };
        if let Some(why) = refusal(row.as_ref(), now_ms()) {
            state.auth_failure(&remote, why).await;
            return Err(ApiError::Unauthorized);
        }
        let Some(t) = row else {
            return Err(ApiError::Unauthorized);
        };
        Ok(Caller {
            token_id: t.id,
            name: t.name,
            role: t.role,
            client_id: t.client_id,
            expires_at: t.expires_at,
        })
    }
}
