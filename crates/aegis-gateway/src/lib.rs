//! # aegis-gateway — the AEGIS control plane over HTTPS
//!
//! What it does: serves a versioned JSON API (`/v1`) and an embedded web dashboard over
//! **TLS 1.3 only** (aws-lc-rs, through `aegis-transport`'s acceptor), with bearer tokens
//! scoped by role (admin, scientist, client; random, shown once, stored as hashes, expirable,
//! revocable) and optional or required client certificates. Jobs go to the FL server's admin
//! service over gRPC with mTLS ([`fl`]); state lives in SQL through sqlx — a SQLite file by
//! default, PostgreSQL by URL, one code path and one set of migrations ([`db`]). Every
//! security-relevant action is appended to a hash-chained audit log ([`audit`]). The OpenAPI 3
//! document is generated from the handlers (`/openapi.json`, browsable at `/docs`, offline).
//!
//! ```text
//!  browser / scripts ══ HTTPS (TLS 1.3) ══▶ TlsListener ─▶ axum router ─▶ handlers (api)
//!                                                              │  Caller (token → role)
//!                                       SQLite | PostgreSQL ◀──┤  audit chain
//!                                    FL server admin (mTLS) ◀──┘  jobs, models, revocation
//! ```
//!
//! Errors follow FastAPI's shapes (`{"detail": ...}`; 422 with field locations), so clients
//! of the Python system keep working.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod db;
mod error;
pub mod extract;
pub mod fl;
pub mod serve;
mod state;
mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aegis_transport::pki::Ca;
use aegis_transport::{AcceptorConfig, TlsIncoming};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use db::{Db, Role};
pub use error::{ApiError, Detail, Error, FieldError, Result, ValidationDetail};
pub use state::AppState;

/// Default request body limit (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Everything the gateway needs.
pub struct GatewayConfig {
    /// TLS 1.3 server configuration (ALPN is set to h2 and http/1.1 here).
    pub tls: Arc<rustls::ServerConfig>,
    /// The database.
    pub db: Db,
    /// The FL server's admin service.
    pub fl: fl::FlAdmin,
    /// The deployment CA, for signing enrolled clients' CSRs.
    pub ca: Option<Ca>,
    /// Request body limit.
    pub max_body: usize,
    /// Handshake timeout and connection limits.
    pub acceptor: AcceptorConfig,
    /// How long a connection may wait before sending a request's headers (then it is closed),
    /// and the HTTP/2 ping interval ([`serve::HEADER_READ_TIMEOUT`] by default).
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("db", &self.db.kind())
            .field("ca", &self.ca.is_some())
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AEGIS gateway",
        description = "Control plane of AEGIS federated learning: jobs, client enrolment, tokens, audit log. Every /v1 call needs `Authorization: Bearer <token>`. Errors: `{\"detail\": ...}`; validation errors: 422 `{\"detail\": [{\"loc\", \"msg\", \"type\"}]}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Training jobs on the FL server"),
        (name = "clients", description = "Client enrolment and revocation"),
        (name = "tokens", description = "Bearer tokens"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes and their OpenAPI document.
pub fn api_router() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::healthz))
        .routes(routes!(api::metrics))
        .routes(routes!(api::whoami))
        .routes(routes!(api::create_token, api::list_tokens))
        .routes(routes!(api::revoke_token))
        .routes(routes!(api::enrol_client, api::list_clients))
        .routes(routes!(api::client_me))
        .routes(routes!(api::revoke_client))
        .routes(routes!(api::create_job, api::list_jobs))
        .routes(routes!(api::get_job))
        .routes(routes!(api::cancel_job))
        .routes(routes!(api::job_model))
        .routes(routes!(api::audit_log))
        .split_for_parts()
}

/// The whole application: API, OpenAPI document and UI, dashboard, headers, body limit.
pub fn app(state: Arc<AppState>, max_body: usize) -> Router {
    let (api, doc) = api_router();
    api.merge(web::routes(doc))
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            serve::headers,
        ))
        .with_state(state)
}

/// The OpenAPI document as JSON (for `aegis gateway openapi`).
pub fn openapi_json() -> String {
    api_router().1.to_pretty_json().unwrap_or_default()
}

/// Tells the FL server again about every revoked client (a revocation made while it was
/// unreachable reaches it now).
async fn sync_revocations(state: Arc<AppState>) {
    let ids = match state.db.revoked_clients().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "could not read revoked clients");
            return;
        }
    };
    for attempt in 0..60u32 {
        let mut failed = false;
        for id in &ids {
            if state.fl.revoke(*id).await.is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            if !ids.is_empty() {
                tracing::info!(clients = ids.len(), "revocations sent to the FL server");
            }
            return;
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(10)) + 1)).await;
    }
    tracing::warn!(
        "the FL server did not take the revocations; they are sent again at the next start"
    );
}

/// Serves the gateway on `listener` until `shutdown` resolves (connections in progress finish,
/// up to 10 s).
pub async fn serve<F>(listener: TcpListener, config: GatewayConfig, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut tls = Arc::unwrap_or_clone(config.tls);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let incoming = TlsIncoming::with_config(listener, Arc::new(tls), config.acceptor);
    let state = Arc::new(AppState::new(config.db, config.fl, config.ca));
    let sync = tokio::spawn(sync_revocations(Arc::clone(&state)));
    let app = app(Arc::clone(&state), config.max_body);
    serve::run(incoming, app, config.idle_timeout, shutdown).await;
    sync.abort();
    state.db.close().await;
    Ok(())
}
