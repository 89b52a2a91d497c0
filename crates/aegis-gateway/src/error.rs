//! Errors: the gateway's own ([`Error`]) and the HTTP answers ([`ApiError`]) in FastAPI's
//! shapes — `{"detail": "..."}`, and for validation `422 {"detail": [{"loc", "msg", "type"}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What can stop the gateway or one of its operations. Messages carry no secrets (no token,
/// no database password).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
    /// TLS or PKI.
    #[error("TLS: {0}")]
    Transport(#[from] aegis_transport::Error),
    /// I/O.
    #[error("{0}")]
    Io(String),
}

/// `Result` with the gateway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation problem, as FastAPI reports it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where: `["body", "rounds"]`, `["path", "id"]`, `["query", "limit"]`.
    #[schema(value_type = Vec<String>)]
    pub loc: Vec<serde_json::Value>,
    /// What is wrong.
    pub msg: String,
    /// A machine-readable kind (`missing`, `json_invalid`, `value_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// A problem at `loc`.
    pub fn new(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        FieldError {
            loc: loc.iter().map(|s| serde_json::Value::from(*s)).collect(),
            msg: msg.into(),
            kind: kind.into(),
        }
    }
}

/// `{"detail": "..."}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Detail {
    /// What went wrong.
    pub detail: String,
}

/// `{"detail": [...]}` (422).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ValidationDetail {
    /// Every problem found.
    pub detail: Vec<FieldError>,
}

/// An HTTP error answer.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no token, or one that is malformed, unknown, expired or revoked.
    Unauthorized,
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413.
    TooLarge,
    /// 422 with the problems.
    Invalid(Vec<FieldError>),
    /// 502: the FL server answered with an error.
    BadGateway(String),
    /// 503: the FL server or the database is unavailable.
    Unavailable(String),
    /// 500: the detail goes to the log, not to the caller.
    Internal(String),
}

impl ApiError {
    /// A single validation problem.
    pub fn invalid(loc: &[&str], msg: impl Into<String>, kind: &str) -> ApiError {
        ApiError::Invalid(vec![FieldError::new(loc, msg, kind)])
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match self {
            ApiError::Invalid(errors) => {
                return (status, axum::Json(ValidationDetail { detail: errors })).into_response();
            }
            ApiError::Unauthorized => {
                let mut r = (
                    status,
                    axum::Json(Detail {
                        detail: "invalid or missing bearer token".into(),
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            ApiError::Internal(msg) => {
                tracing::error!(error = %msg, "request failed");
                "internal error; see the gateway's log".to_string()
            }
            ApiError::TooLarge => "request body too large".to_string(),
            ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::BadGateway(m)
            | ApiError::Unavailable(m) => m,
        };
        (status, axum::Json(Detail { detail })).into_response()
    }
}
