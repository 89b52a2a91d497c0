//! The `/v1` endpoints, `/healthz` and `/metrics`, documented for OpenAPI by utoipa.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aegis_client::Model;
use aegis_server::JobSpec;
use aegis_transport::ClientId;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::audit::Entry;
use crate::auth::{Caller, issue_stored_token, random_id};
use crate::db::{ClientRow, JobRow, Role, TokenRow, now_ms};
use crate::error::{ApiError, Detail, FieldError, ValidationDetail};
use crate::extract::{ValidJson, ValidQuery, Validate, client_id_param};
use crate::fl::status_name;
use crate::state::AppState;

type St = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

fn text_field(v: &str, loc: &str, max: usize, out: &mut Vec<FieldError>) {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        out.push(FieldError::new(
            &["body", loc],
            format!("must be 1-{max} printable characters"),
            "string_type",
        ));
    }
}

// ---------------------------------------------------------------------------------- health

/// `/healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the database answers.
    status: String,
    /// `ok` or `unreachable`.
    database: String,
    /// `ok` or `unreachable`.
    fl_server: String,
}

/// Liveness and dependencies; no token needed.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(s): St) -> Response {
    let db = s.db_up().await;
    let fl = s.fl.up().await;
    let word = |ok: bool| if ok { "ok" } else { "unreachable" }.to_string();
    let body = Health {
        status: if db { "ok" } else { "degraded" }.into(),
        database: word(db),
        fl_server: word(fl),
    };
    let code = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics (admin token).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String),
              (status = 401, body = Detail), (status = 403, body = Detail)))]
pub async fn metrics(State(s): St, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Admin], "read metrics")?;
    use std::fmt::Write as _;
    let m = &s.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP aegis_gateway_responses_total HTTP responses by status class."
    );
    let _ = writeln!(out, "# TYPE aegis_gateway_responses_total counter");
    for (i, c) in m.responses.iter().enumerate() {
        let _ = writeln!(
            out,
            "aegis_gateway_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            c.load(Ordering::Relaxed)
        );
    }
    let counters = [
        (
            "aegis_gateway_auth_failures_total",
            "Requests refused for authentication.",
            &m.auth_failures,
        ),
        (
            "aegis_gateway_audit_entries_total",
            "Audit entries appended by this process.",
            &m.audit_entries,
        ),
        (
            "aegis_gateway_model_bytes_total",
            "Model bytes streamed to callers.",
            &m.model_bytes,
        ),
    ];
    for (name, help, c) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let up = u8::from(s.fl.up().await);
    let _ = writeln!(
        out,
        "# HELP aegis_gateway_fl_server_up Whether the FL server's admin service answers.\n# TYPE aegis_gateway_fl_server_up gauge\naegis_gateway_fl_server_up {up}"
    );
    if let Ok(jobs) = s.fl.jobs().await {
        let _ = writeln!(
            out,
            "# HELP aegis_jobs Jobs on the FL server by status.\n# TYPE aegis_jobs gauge"
        );
        for status in ["queued", "running", "completed", "failed", "cancelled"] {
            let n = jobs.values().filter(|j| status_name(j) == status).count();
            let _ = writeln!(out, "aegis_jobs{{status=\"{status}\"}} {n}");
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------- whoami

/// The caller.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    name: String,
    role: Role,
    client_id: Option<u64>,
    expires_at: Option<String>,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/whoami", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = Detail)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
        client_id: caller.client_id,
        expires_at: opt_time(caller.expires_at),
    })
}

// ---------------------------------------------------------------------------------- tokens

/// A token to issue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// Who or what will hold it (the audit log's actor).
    name: String,
    /// What it may do.
    role: Role,
    /// Lifetime in seconds (none: until revoked).
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<u64>,
}

impl Validate for IssueToken {
    fn validate(&self) -> Vec<FieldError> {
        let mut v = Vec::new();
        text_field(&self.name, "name", 64, &mut v);
        if self.role == Role::Client {
            v.push(FieldError::new(
                &["body", "role"],
                "client tokens are issued by enrolling a client (POST /v1/clients)",
                "value_error",
            ));
        }
        if let Err(msg) = crate::auth::check_token_request("x", self.expires_in_seconds) {
            v.push(FieldError::new(
                &["body", "expires_in_seconds"],
                msg,
                "value_error",
            ));
        }
        v
    }
}

/// A new token: the only time it is shown.
#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    id: String,
    name: String,
    role: Role,
    /// The bearer token. Store it now: only its hash is kept.
    token: String,
    created_at: String,
    expires_at: Option<String>,
}

/// A stored token (no secret).
#[derive(Serialize, ToSchema)]
pub struct TokenInfo {
    id: String,
    name: String,
    role: Role,
    client_id: Option<u64>,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
}

impl From<TokenRow> for TokenInfo {
    fn from(t: TokenRow) -> Self {
        TokenInfo {
            id: t.id,
            name: t.name,
            role: t.role,
            client_id: t.client_id,
            created_at: rfc3339(t.created_at),
            expires_at: opt_time(t.expires_at),
            revoked_at: opt_time(t.revoked_at),
        }
    }
}

/// Creates and stores a token (its hash), returning it once.
async fn issue_token(
    s: &AppState,
    name: &str,
    role: Role,
    client_id: Option<u64>,
    expires_in_seconds: Option<u64>,
) -> Result<(TokenRow, String), crate::Error> {
    let (row, token) = issue_stored_token(&s.db, name, role, client_id, expires_in_seconds).await?;
    Ok((row, token.to_string()))
}

/// Issue a token (admin).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = IssueToken,
    responses((status = 201, body = TokenIssued), (status = 401, body = Detail),
              (status = 403, body = Detail), (status = 422, body = ValidationDetail)))]
pub async fn create_token(
    State(s): St,
    caller: Caller,
    ValidJson(req): ValidJson<IssueToken>,
) -> ApiResult<(StatusCode, Json<TokenIssued>)> {
    caller.require(&[Role::Admin], "issue tokens")?;
    let (row, token) = issue_token(&s, &req.name, req.role, None, req.expires_in_seconds).await?;
    s.audit(
        &caller.name,
        "token.issue",
        &row.id,
        "success",
        &format!("name={:?} role={}", row.name, row.role.as_str()),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(TokenIssued {
            id: row.id,
            name: row.name,
            role: row.role,
            token,
            created_at: rfc3339(row.created_at),
            expires_at: opt_time(row.expires_at),
        }),
    ))
}

/// List tokens (admin; no secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = [TokenInfo]), (status = 401, body = Detail), (status = 403, body = Detail)))]
pub async fn list_tokens(State(s): St, caller: Caller) -> ApiResult<Json<Vec<TokenInfo>>> {
    caller.require(&[Role::Admin], "list tokens")?;
    Ok(Json(
        s.db.tokens()
            .await?
            .into_iter()
            .map(TokenInfo::from)
            .collect(),
    ))
}

/// Revoke a token (admin): it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 204), (status = 401, body = Detail), (status = 403, body = Detail), (status = 404, body = Detail)))]
pub async fn revoke_token(
    State(s): St,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin], "revoke tokens")?;
    if !s.db.revoke_token(&id).await? {
        return Err(ApiError::NotFound("token not found".into()));
    }
    s.tokens.clear();
    s.audit(&caller.name, "token.revoke", &id, "success", "")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------- clients

/// A client to enrol.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolClient {
    /// The FL client id (default: one above the largest enrolled).
    client_id: Option<u64>,
    /// A label.
    name: String,
    /// A PEM certificate signing request for an Ed25519 key: the gateway's CA signs it into
    /// the client's certificate (`aegis://client/<id>`).
    csr_pem: Option<String>,
}

impl Validate for EnrolClient {
    fn validate(&self) -> Vec<FieldError> {
        let mut v = Vec::new();
        text_field(&self.name, "name", 64, &mut v);
        if self.csr_pem.as_ref().is_some_and(|p| p.len() > 16 * 1024) {
            v.push(FieldError::new(
                &["body", "csr_pem"],
                "at most 16 KiB",
                "string_too_long",
            ));
        }
        v
    }
}

/// An enrolment: the client's token (shown once) and its certificate.
#[derive(Serialize, ToSchema)]
pub struct Enrolment {
    client_id: u64,
    name: String,
    /// Bearer token with role `client`. Store it now: only its hash is kept.
    token: String,
    /// The signed certificate, when a CSR was given.
    certificate_pem: Option<String>,
    /// The deployment CA (to verify the servers), when the gateway has it.
    ca_pem: Option<String>,
}

/// An enrolled client.
#[derive(Serialize, ToSchema)]
pub struct ClientInfo {
    client_id: u64,
    name: String,
    created_at: String,
    revoked_at: Option<String>,
    has_certificate: bool,
}

impl From<ClientRow> for ClientInfo {
    fn from(c: ClientRow) -> Self {
        ClientInfo {
            client_id: c.client_id,
            name: c.name,
            created_at: rfc3339(c.created_at),
            revoked_at: opt_time(c.revoked_at),
            has_certificate: c.cert_sha256.is_some(),
        }
    }
}

/// SHA-256 (hex) of the DER inside a PEM certificate.
fn pem_fingerprint(pem: &str) -> String {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default();
    use aegis_crypto::primitives::digest;
    hex::encode(digest::digest(&digest::SHA256, &der))
}

/// Enrol a client (admin): a `client` token and, from a CSR, a certificate.
#[utoipa::path(post, path = "/v1/clients", tag = "clients", security(("bearer" = [])),
    request_body = EnrolClient,
    responses((status = 201, body = Enrolment), (status = 401, body = Detail), (status = 403, body = Detail),
              (status = 409, body = Detail), (status = 422, body = ValidationDetail)))]
pub async fn enrol_client(
    State(s): St,
    caller: Caller,
    ValidJson(req): ValidJson<EnrolClient>,
) -> ApiResult<(StatusCode, Json<Enrolment>)> {
    caller.require(&[Role::Admin], "enrol clients")?;
    let id = match req.client_id {
        Some(id) => id,
        None => s.db.next_client_id().await?,
    };
    let certificate_pem = match (&req.csr_pem, &s.ca) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid(
                &["body", "csr_pem"],
                "this gateway has no CA key (start it with --pki holding ca.key): enrol with a token only",
                "value_error",
            ));
        }
        (Some(csr), Some(ca)) => {
            Some(ca.sign_client_csr(csr, ClientId(id)).map_err(|e| {
                ApiError::invalid(&["body", "csr_pem"], e.to_string(), "value_error")
            })?)
        }
    };
    let row = ClientRow {
        client_id: id,
        name: req.name.clone(),
        created_at: now_ms(),
        revoked_at: None,
        cert_sha256: certificate_pem.as_deref().map(pem_fingerprint),
    };
    if !s.db.insert_client(&row).await? {
        return Err(ApiError::Conflict(format!(
            "client {id} is already enrolled"
        )));
    }
    let (token_row, token) =
        match issue_token(&s, &format!("client-{id}"), Role::Client, Some(id), None).await {
            Ok(t) => t,
            Err(e) => {
                let _ = s.db.delete_client(id).await;
                return Err(e.into());
            }
        };
    // A revocation of this id between the two inserts found no token to revoke: look again,
    // after the token exists (a revocation after this check revokes the token itself).
    if s.db
        .client(id)
        .await?
        .is_none_or(|c| c.revoked_at.is_some())
    {
        s.db.revoke_token(&token_row.id).await?;
        s.tokens.clear();
        return Err(ApiError::Conflict(format!(
            "client {id} was revoked while it was being enrolled"
        )));
    }
    let detail = format!(
        "name={:?} certificate={}",
        req.name,
        certificate_pem.is_some()
    );
    s.audit(
        &caller.name,
        "client.enrol",
        &id.to_string(),
        "success",
        &detail,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(Enrolment {
            client_id: id,
            name: req.name,
            token,
            certificate_pem,
            ca_pem: s.ca.as_ref().map(|ca| ca.cert_pem().to_string()),
        }),
    ))
}

/// List enrolled clients (admin).
#[utoipa::path(get, path = "/v1/clients", tag = "clients", security(("bearer" = [])),
    responses((status = 200, body = [ClientInfo]), (status = 401, body = Detail), (status = 403, body = Detail)))]
pub async fn list_clients(State(s): St, caller: Caller) -> ApiResult<Json<Vec<ClientInfo>>> {
    caller.require(&[Role::Admin], "list clients")?;
    Ok(Json(
        s.db.clients()
            .await?
            .into_iter()
            .map(ClientInfo::from)
            .collect(),
    ))
}

/// The calling client's own enrolment (client token).
#[utoipa::path(get, path = "/v1/clients/me", tag = "clients", security(("bearer" = [])),
    responses((status = 200, body = ClientInfo), (status = 401, body = Detail), (status = 403, body = Detail), (status = 404, body = Detail)))]
pub async fn client_me(State(s): St, caller: Caller) -> ApiResult<Json<ClientInfo>> {
    let Some(id) = caller.client_id else {
        return Err(ApiError::Forbidden(
            "this token does not belong to a client".into(),
        ));
    };
    let row =
        s.db.client(id)
            .await?
            .ok_or_else(|| ApiError::NotFound("client not found".into()))?;
    Ok(Json(row.into()))
}

/// Revoke a client (admin): its tokens stop working and the FL server refuses it.
#[utoipa::path(delete, path = "/v1/clients/{client_id}", tag = "clients", security(("bearer" = [])),
    params(("client_id" = u64, Path, description = "FL client id")),
    responses((status = 204), (status = 401, body = Detail), (status = 403, body = Detail),
              (status = 404, body = Detail), (status = 422, body = ValidationDetail), (status = 502, body = Detail), (status = 503, body = Detail)))]
pub async fn revoke_client(
    State(s): St,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin], "revoke clients")?;
    let id = client_id_param(&raw)?;
    if !s.db.revoke_client(id).await? {
        return Err(ApiError::NotFound("client not found".into()));
    }
    s.tokens.clear();
    match s.fl.revoke(id).await {
        Ok(disconnected) => {
            s.audit(
                &caller.name,
                "client.revoke",
                &id.to_string(),
                "success",
                &format!("disconnected={disconnected}"),
            )
            .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            s.audit(
                &caller.name,
                "client.revoke",
                &id.to_string(),
                "error",
                "revoked here; the FL server was not told",
            )
            .await;
            Err(match e {
                ApiError::Unavailable(m) | ApiError::BadGateway(m) => {
                    ApiError::BadGateway(format!(
                        "the client's tokens are revoked, but the FL server could not be told ({m}); the gateway tells it again when it restarts"
                    ))
                }
                other => other,
            })
        }
    }
}

// ---------------------------------------------------------------------------------- jobs

/// The model to train.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model family: `softmax_regression` (a linear classifier, as the built-in trainer
    /// trains).
    kind: String,
    /// Input features.
    #[schema(minimum = 1)]
    inputs: u32,
    /// Classes.
    #[schema(minimum = 2)]
    classes: u32,
}

/// Secure-aggregation parameters.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecAggSpec {
    /// Expected fraction of clients dropping out per round, [0, 0.5).
    dropout_rate: f64,
    /// Expected fraction of clients colluding with the server, [0, 0.34).
    corrupt_rate: f64,
    /// Per-coordinate clipping bound of updates.
    clip: f32,
    /// Largest FedAvg weight (example count) per client.
    max_weight: u32,
}

impl Default for SecAggSpec {
    fn default() -> Self {
        SecAggSpec {
            dropout_rate: 0.1,
            corrupt_rate: 0.0,
            clip: 1.0,
            max_weight: 10_000,
        }
    }
}

/// Local training settings sent to clients.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    epochs: u32,
    batch_size: u32,
    learning_rate: f32,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
        }
    }
}

fn default_rounds() -> u32 {
    5
}
fn default_cohort() -> u32 {
    10
}
fn default_min_clients() -> u32 {
    3
}

/// A job to create.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A label (default: the job id).
    #[serde(default)]
    name: Option<String>,
    /// The model.
    model: ModelSpec,
    /// Rounds to run, 1-10000.
    #[serde(default = "default_rounds")]
    rounds: u32,
    /// Clients sampled per round at most.
    #[serde(default = "default_cohort")]
    cohort_size: u32,
    /// Clients needed to start a round (at least 3).
    #[serde(default = "default_min_clients")]
    min_clients: u32,
    /// Secure aggregation.
    #[serde(default)]
    secagg: SecAggSpec,
    /// Local training.
    #[serde(default)]
    train: TrainSpec,
}

/// Parameters at most in a job's model (a 64 MiB update).
const MAX_PARAMS: u64 = 16 << 20;

impl Validate for CreateJob {
    fn validate(&self) -> Vec<FieldError> {
        let mut v = Vec::new();
        let mut bad = |loc: &[&str], msg: &str| {
            let mut full = vec!["body"];
            full.extend_from_slice(loc);
            v.push(FieldError::new(&full, msg, "value_error"));
        };
        if let Some(n) = &self.name {
            let mut e = Vec::new();
            text_field(n, "name", 128, &mut e);
            if !e.is_empty() {
                bad(&["name"], "must be 1-128 printable characters");
            }
        }
        if self.model.kind != "softmax_regression" {
            bad(
                &["model", "kind"],
                "unknown model kind: expected softmax_regression",
            );
        }
        if self.model.inputs == 0 {
            bad(&["model", "inputs"], "must be at least 1");
        }
        if self.model.classes < 2 {
            bad(&["model", "classes"], "must be at least 2");
        }
        if (u64::from(self.model.inputs) + 1) * u64::from(self.model.classes) > MAX_PARAMS {
            bad(
                &["model"],
                "at most 16777216 parameters ((inputs + 1) x classes)",
            );
        }
        if !(1..=10_000).contains(&self.rounds) {
            bad(&["rounds"], "must be between 1 and 10000");
        }
        if self.min_clients < 3 {
            bad(
                &["min_clients"],
                "must be at least 3 (secure aggregation needs a threshold)",
            );
        }
        if self.cohort_size < self.min_clients || self.cohort_size > 100_000 {
            bad(&["cohort_size"], "must be between min_clients and 100000");
        }
        let sa = &self.secagg;
        if !(0.0..0.5).contains(&sa.dropout_rate) {
            bad(&["secagg", "dropout_rate"], "must be in [0, 0.5)");
        }
        if !(0.0..0.34).contains(&sa.corrupt_rate) {
            bad(&["secagg", "corrupt_rate"], "must be in [0, 0.34)");
        }
        if !(sa.clip.is_finite() && sa.clip > 0.0) {
            bad(&["secagg", "clip"], "must be a positive number");
        }
        if sa.max_weight == 0 {
            bad(&["secagg", "max_weight"], "must be at least 1");
        }
        let t = &self.train;
        if t.epochs == 0 || t.epochs > 1000 {
            bad(&["train", "epochs"], "must be between 1 and 1000");
        }
        if t.batch_size == 0 {
            bad(&["train", "batch_size"], "must be at least 1");
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            bad(&["train", "learning_rate"], "must be a positive number");
        }
        v
    }
}

/// A job: the request, and its progress from the FL server.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    id: String,
    name: String,
    owner: String,
    /// `queued`, `running`, `completed`, `failed`, `cancelled`, or `unknown` while the FL
    /// server does not answer.
    status: String,
    created_at: String,
    rounds_total: u32,
    rounds_done: u32,
    error: Option<String>,
    spec: CreateJob,
    /// Per-round metrics (empty in lists): round, completed, abort_reason, connected,
    /// sampled, survived, dropped[5], stage_seconds[5], seconds, bytes_sent,
    /// bytes_received, degree, threshold, params, weight_sum, loss, accuracy,
    /// quantization_error.
    #[schema(value_type = Vec<Object>)]
    history: Box<serde_json::value::RawValue>,
}

/// A job row with its request parsed. Rows never change once written, so they are kept in
/// memory after the first read (the FL server's view of the job is cached separately, for
/// [`crate::fl::STATUS_TTL`]).
pub struct StoredJob {
    row: JobRow,
    spec: CreateJob,
}

impl StoredJob {
    fn new(row: JobRow) -> ApiResult<StoredJob> {
        let spec = serde_json::from_str(&row.spec)
            .map_err(|e| ApiError::Internal(format!("job {}: stored spec: {e}", row.id)))?;
        Ok(StoredJob { row, spec })
    }
}

fn job_view(
    job: &StoredJob,
    fl: Option<&aegis_proto::admin::Job>,
    history: Option<&serde_json::value::RawValue>,
) -> JobView {
    let row = &job.row;
    JobView {
        status: fl.map_or("unknown", status_name).to_string(),
        rounds_done: fl.map_or(0, |j| j.rounds_done),
        error: fl.and_then(|j| (!j.error.is_empty()).then(|| j.error.clone())),
        rounds_total: job.spec.rounds,
        id: row.id.clone(),
        name: row.name.clone(),
        owner: row.owner.clone(),
        created_at: rfc3339(row.created_at),
        spec: job.spec.clone(),
        history: history.map_or_else(crate::fl::empty_history, ToOwned::to_owned),
    }
}

/// Create a job (scientist, admin): it is queued on the FL server.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    request_body = CreateJob,
    responses((status = 201, body = JobView), (status = 401, body = Detail), (status = 403, body = Detail),
              (status = 413, body = Detail), (status = 422, body = ValidationDetail), (status = 503, body = Detail)))]
pub async fn create_job(
    State(s): St,
    caller: Caller,
    ValidJson(req): ValidJson<CreateJob>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    caller.require(&[Role::Admin, Role::Scientist], "create jobs")?;
    let id = random_id("job-")?;
    let mut spec = JobSpec::new(&id);
    spec.rounds = req.rounds;
    spec.cohort = req.cohort_size;
    spec.min_clients = req.min_clients;
    spec.clip = req.secagg.clip;
    spec.max_weight = req.secagg.max_weight;
    spec.dropout_rate = req.secagg.dropout_rate;
    spec.corrupt_rate = req.secagg.corrupt_rate;
    spec.epochs = req.train.epochs;
    spec.batch_size = req.train.batch_size;
    spec.learning_rate = req.train.learning_rate;
    spec.validate()
        .map_err(|e| ApiError::invalid(&["body"], e.to_string(), "value_error"))?;
    let model = Model::softmax_regression(req.model.inputs as usize, req.model.classes as usize)
        .and_then(|m| m.to_safetensors())
        .map_err(|e| ApiError::invalid(&["body", "model"], e.to_string(), "value_error"))?;
    let row = JobRow {
        name: req.name.clone().unwrap_or_else(|| id.clone()),
        id: id.clone(),
        owner: caller.name.clone(),
        spec: serde_json::to_string(&req).map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: now_ms(),
    };
    s.db.insert_job(&row).await?;
    let spec_json = serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let fl_job = match s.fl.submit(spec_json, model).await {
        Ok(j) => j,
        Err(e) => {
            let _ = s.db.delete_job(&id).await;
            crate::state::lock(&s.jobs).remove(&id);
            s.audit(
                &caller.name,
                "job.create",
                &id,
                "error",
                "the FL server did not accept the job",
            )
            .await;
            return Err(e);
        }
    };
    s.audit(
        &caller.name,
        "job.create",
        &id,
        "success",
        &format!(
            "rounds={} model={}x{}",
            req.rounds, req.model.inputs, req.model.classes
        ),
    )
    .await;
    let fl_job = crate::fl::FlJob::new(fl_job);
    Ok((
        StatusCode::CREATED,
        Json(job_view(
            &StoredJob::new(row)?,
            Some(&fl_job.job),
            Some(&fl_job.history),
        )),
    ))
}

/// `?limit=` of job lists.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Jobs at most, newest first (1-1000, default 100).
    limit: Option<i64>,
}

impl Validate for JobsQuery {
    fn validate(&self) -> Vec<FieldError> {
        limit_problem(self.limit)
    }
}

fn limit_problem(limit: Option<i64>) -> Vec<FieldError> {
    if limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        vec![FieldError::new(
            &["query", "limit"],
            "must be between 1 and 1000",
            "value_error",
        )]
    } else {
        Vec::new()
    }
}

/// List jobs, newest first (scientist, admin, client).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), params(JobsQuery),
    responses((status = 200, body = [JobView]), (status = 401, body = Detail), (status = 422, body = ValidationDetail)))]
pub async fn list_jobs(
    State(s): St,
    _caller: Caller,
    ValidQuery(q): ValidQuery<JobsQuery>,
) -> ApiResult<Json<Vec<JobView>>> {
    let rows = s.db.jobs(q.limit.unwrap_or(100)).await?;
    let fl = s.fl.jobs().await.ok();
    rows.into_iter()
        .map(|r| {
            let j = fl.as_ref().and_then(|m| m.get(&r.id));
            Ok(job_view(&StoredJob::new(r)?, j, None))
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Json)
}

/// The job `id` from memory, or from the database the first time.
async fn stored_job(s: &AppState, id: &str) -> ApiResult<Arc<StoredJob>> {
    if let Some(job) = crate::state::lock(&s.jobs).get(id) {
        return Ok(Arc::clone(job));
    }
    let row =
        s.db.job(id)
            .await?
            .ok_or_else(|| ApiError::NotFound("job not found".into()))?;
    let job = Arc::new(StoredJob::new(row)?);
    let mut jobs = crate::state::lock(&s.jobs);
    if jobs.len() >= 100_000 {
        jobs.clear();
    }
    jobs.insert(id.to_string(), Arc::clone(&job));
    Ok(job)
}

/// One job with its per-round metrics (scientist, admin).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = Detail), (status = 403, body = Detail), (status = 404, body = Detail)))]
pub async fn get_job(State(s): St, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(&[Role::Admin, Role::Scientist], "read jobs")?;
    let job = stored_job(&s, &id).await?;
    let fl = match s.fl.job(&id).await {
        Ok(j) => Some(j),
        Err(ApiError::Unavailable(_)) => None,
        Err(e) => return Err(e),
    };
    // The body depends only on the stored row and the FL server's answer, which is shared
    // until its next refresh: serialize once per answer.
    if let Some(f) = &fl
        && let Some((seen, body)) = crate::state::lock(&s.views).get(&id)
        && Arc::ptr_eq(seen, f)
    {
        return Ok(json_response(body.clone()));
    }
    let view = job_view(
        &job,
        fl.as_ref().map(|f| &f.job),
        fl.as_ref().map(|f| &*f.history),
    );
    let body = bytes::Bytes::from(
        serde_json::to_vec(&view).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    if let Some(f) = fl {
        let mut views = crate::state::lock(&s.views);
        if views.len() >= 10_000 {
            views.clear();
        }
        views.insert(id, (f, body.clone()));
    }
    Ok(json_response(body))
}

fn json_response(body: bytes::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Cancel a queued or running job (scientist, admin).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = Detail), (status = 403, body = Detail),
              (status = 404, body = Detail), (status = 409, body = Detail), (status = 503, body = Detail)))]
pub async fn cancel_job(
    State(s): St,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    caller.require(&[Role::Admin, Role::Scientist], "cancel jobs")?;
    let job = stored_job(&s, &id).await?;
    let fl = s.fl.cancel(&id).await;
    let outcome = if fl.is_ok() { "success" } else { "error" };
    s.audit(&caller.name, "job.cancel", &id, outcome, "").await;
    let fl = fl?;
    Ok(Json(job_view(&job, Some(&fl), None)))
}

/// Download the job's current global model, decrypted: safetensors, streamed (scientist,
/// admin).
#[utoipa::path(get, path = "/v1/jobs/{id}/model", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "safetensors", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = Detail), (status = 403, body = Detail), (status = 404, body = Detail), (status = 503, body = Detail)))]
pub async fn job_model(
    State(s): St,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // Only jobs that exist are audited (the path is the caller's text).
    stored_job(&s, &id).await?;
    if let Err(e) = caller.require(&[Role::Admin, Role::Scientist], "download models") {
        s.audit_limited(&caller.name, "model.download", &id, "role")
            .await;
        return Err(e);
    }
    let stream = match s.fl.model(&id).await {
        Ok(st) => st,
        Err(e) => {
            s.audit(
                &caller.name,
                "model.download",
                &id,
                "error",
                "the FL server did not send it",
            )
            .await;
            return Err(e);
        }
    };
    s.audit(&caller.name, "model.download", &id, "success", "")
        .await;
    let state = Arc::clone(&s);
    let body = Body::from_stream(stream.map(move |chunk| {
        chunk
            .map(|c| {
                state
                    .metrics
                    .model_bytes
                    .fetch_add(c.data.len() as u64, Ordering::Relaxed);
                c.data
            })
            .map_err(|status| std::io::Error::other(status.message().to_string()))
    }));
    let disposition = format!("attachment; filename=\"{id}.safetensors\"");
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

// ---------------------------------------------------------------------------------- audit

/// Audit log query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number (default 0). Ignored with `tail`.
    after: Option<i64>,
    /// Entries at most (1-1000, default 100).
    limit: Option<i64>,
    /// Only this action (`token.issue`, `job.create`, `auth.failure`, ...).
    action: Option<String>,
    /// The newest `limit` entries instead (still oldest first).
    tail: Option<bool>,
}

impl Validate for AuditQuery {
    fn validate(&self) -> Vec<FieldError> {
        limit_problem(self.limit)
    }
}

/// An audit entry.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    seq: i64,
    time: String,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl From<Entry> for AuditView {
    fn from(e: Entry) -> Self {
        AuditView {
            time: rfc3339(e.at),
            seq: e.seq,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// Read the audit log, oldest first (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [AuditView]), (status = 401, body = Detail), (status = 403, body = Detail), (status = 422, body = ValidationDetail)))]
pub async fn audit_log(
    State(s): St,
    caller: Caller,
    ValidQuery(q): ValidQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditView>>> {
    caller.require(&[Role::Admin], "read the audit log")?;
    let limit = q.limit.unwrap_or(100);
    let entries = if q.tail == Some(true) && q.action.is_none() {
        s.db.audit_tail(limit).await?
    } else {
        s.db.audit_entries(q.after.unwrap_or(0), limit, q.action.as_deref())
            .await?
    };
    Ok(Json(entries.into_iter().map(AuditView::from).collect()))
}
