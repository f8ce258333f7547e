//! [`router`]: every route of the API in one place, with the layers every request passes:
//! metrics, the body size limit and timeout, and CORS where configured.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::error::ApiError;
use crate::{AppState, jobs, links, openai, openapi, overlay, page};

pub fn router(api: AppState) -> Router {
    let config = &api.config;
    let mut router = Router::new()
        .route("/", get(page::page))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route(
            "/v1/images/generations",
            axum::routing::post(openai::generate),
        )
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/gallery", get(jobs::gallery))
        .route("/i/{slug}", get(links::image))
        // Public even with keys: see `overlay` for why.
        .route("/overlay/{origin_kind}/{channel}", get(overlay::page))
        .route("/v1/overlay/{origin_kind}/{channel}", get(overlay::images))
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::not_found("No such route. The API's routes are in /openapi.json.")
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            config.body_timeout_secs.max(1),
        )));
    let cors_origins = config.cors_origins();
    if !cors_origins.is_empty() {
        let origins = if cors_origins.contains(&"*") {
            AllowOrigin::from(Any)
        } else {
            AllowOrigin::list(
                cors_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            )
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    "idempotency-key".parse().expect("a valid header name"),
                    "last-event-id".parse().expect("a valid header name"),
                ]),
        );
    }
    router
        .layer(middleware::map_response(openai_shape))
        .layer(middleware::from_fn_with_state(api.clone(), count))
        .with_state(api)
}

/// Errors that axum and its layers answer themselves (a body over the limit, a method a route
/// does not have, a body too slow) come as plain text: this puts them in OpenAI's shape too, so
/// every error of the API has one form.
async fn openai_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text
    };
    let mut shaped = ApiError::from_status(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// Counts each request by its route's pattern and its status, and times it.
async fn count(State(api): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    // Only the standard methods name a label: made-up ones would grow the label set forever.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PUT
        | Method::PATCH => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    api.metrics.request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Ready when Redis answers.
async fn ready(State(api): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), api.queue.ping()).await {
        Ok(true) => "ready\n".into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Redis does not answer\n",
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
}
