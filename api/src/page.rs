//! `GET /`: the web page, one HTML file built into the binary (no Node toolchain). It calls the
//! same routes any client does: `/v1/models`, `POST /v1/jobs`, the job's events, `/v1/jobs`.

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("page.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' http: https: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        PAGE,
    )
}
