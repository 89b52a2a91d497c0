//! Request extractors that answer bad input the way FastAPI does: 422 with
//! `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` naming the field, and 413 for a body
//! over the limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// Checks a request's values beyond their types.
pub trait Validate {
    /// Every problem (empty when valid); `loc` starts after `"body"`.
    fn validate(&self) -> Vec<FieldError>;
}

/// A JSON body of `T`, checked by [`Validate`].
pub struct ValidJson<T>(pub T);

/// The message of a serde_json error without its " at line L column C" suffix.
fn short_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A deserialization error at `path` → FastAPI's shape.
fn field_error(root: &str, err: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    use serde_path_to_error::Segment;
    let mut loc: Vec<serde_json::Value> = vec![root.into()];
    for seg in err.path().iter() {
        match seg {
            Segment::Seq { index } => loc.push((*index).into()),
            Segment::Map { key } => loc.push(key.clone().into()),
            Segment::Enum { variant } => loc.push(variant.clone().into()),
            Segment::Unknown => {}
        }
    }
    let inner = err.into_inner();
    let msg = short_message(&inner);
    let kind = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "json_invalid",
        serde_json::error::Category::Io => "body_error",
        serde_json::error::Category::Data => {
            if let Some(field) = msg
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                loc.push(field.into());
                "missing"
            } else if msg.starts_with("unknown field") {
                "extra_forbidden"
            } else {
                "value_error"
            }
        }
    };
    FieldError {
        loc,
        msg,
        kind: kind.into(),
    }
}

/// Parses `bytes` as JSON `T` and validates it.
pub fn parse_body<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de)
        .map_err(|e| ApiError::Invalid(vec![field_error("body", e)]))?;
    let problems = value.validate();
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::Invalid(problems))
    }
}

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.trim_start().to_ascii_lowercase();
                v == "application/json" || v.starts_with("application/json;")
            });
        // `Bytes` honours the body limit (DefaultBodyLimit) and answers 413 past it.
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::invalid(&["body"], rej.body_text(), "body_error")
            }
        })?;
        if !json {
            return Err(ApiError::invalid(
                &["body"],
                "expected a JSON body (Content-Type: application/json)",
                "model_attributes_type",
            ));
        }
        parse_body(&bytes).map(ValidJson)
    }
}

/// Query parameters of `T`, 422 on bad ones.
pub struct ValidQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_de(query);
        let value: T = de.map_err(|msg| ApiError::invalid(&["query"], msg, "value_error"))?;
        let problems = value.validate();
        if problems.is_empty() {
            Ok(ValidQuery(value))
        } else {
            Err(ApiError::Invalid(problems))
        }
    }
}

/// Query strings through axum's own parser (serde_urlencoded), with its message.
fn serde_urlencoded_de<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| "invalid query string".to_string())?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

/// A path segment parsed as a u64 client id (422 otherwise).
pub fn client_id_param(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::invalid(
            &["path", "client_id"],
            "Input should be a valid integer (0 to 2^64-1)",
            "int_parsing",
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::panic)]
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    impl Validate for Outer {
        fn validate(&self) -> Vec<FieldError> {
            if self.name.is_empty() {
                vec![FieldError::new(
                    &["body", "name"],
                    "must not be empty",
                    "string_too_short",
                )]
            } else {
                Vec::new()
            }
        }
    }

    fn loc_and_kind(body: &str) -> (Vec<serde_json::Value>, String) {
        match parse_body::<Outer>(body.as_bytes()) {
            Err(ApiError::Invalid(v)) => (v[0].loc.clone(), v[0].kind.clone()),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_like_fastapi() {
        use serde_json::json;
        assert_eq!(
            loc_and_kind(r#"{"name":"x","inner":{"n":-1}}"#),
            (
                vec![json!("body"), json!("inner"), json!("n")],
                "value_error".into()
            )
        );
        assert_eq!(
            loc_and_kind(r#"{"name":"x"}"#),
            (vec![json!("body"), json!("inner")], "missing".into())
        );
        assert_eq!(loc_and_kind(r#"{"name":"x","#).1, "json_invalid");
        assert_eq!(
            loc_and_kind(r#"{"name":"x","inner":{"n":1},"extra":1}"#).1,
            "extra_forbidden"
        );
        assert_eq!(
            loc_and_kind(r#"{"name":"","inner":{"n":1}}"#),
            (
                vec![json!("body"), json!("name")],
                "string_too_short".into()
            )
        );
        assert!(parse_body::<Outer>(br#"{"name":"x","inner":{"n":1}}"#).is_ok());
    }
}
