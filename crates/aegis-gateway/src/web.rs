//! What a browser loads: the dashboard (three files built into the binary, no CDN), the
//! OpenAPI document and its Swagger UI (also built in: `utoipa-swagger-ui`'s `vendored`).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Swagger UI sets styles inline; it gets its own, slightly wider policy.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `/`, `/assets/*`, `/openapi.json`, `/docs`.
pub(crate) fn routes(doc: utoipa::openapi::OpenApi) -> Router<Arc<AppState>> {
    let swagger: Router<Arc<AppState>> =
        Router::from(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", doc)).layer(
            axum::middleware::map_response(|mut res: Response| async move {
                res.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(DOCS_CSP),
                );
                res
            }),
        );
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .merge(swagger)
}
