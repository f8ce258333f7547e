//! [`ApiError`]: every error the API answers, in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`, so OpenAI clients raise the right exception
//! with a message a person can act on.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ducks_contract::{CheckError, FailureCode};
use ducks_queue::QueueError;
use serde::Serialize;
use utoipa::ToSchema;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error types: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after: Option<Duration>,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// For the person who made the request.
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .param(param)
            .code("invalid_value")
    }

    /// 400 without a field to blame.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message).code("invalid_api_key")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message).code("not_found")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .code("unavailable")
            .retry_after(Duration::from_secs(5))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message).code("internal")
    }

    /// An error with the type OpenAI gives its status.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        Self::new(status, kind, message)
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// A job that ended without images, as an error of the request that waited for it: a
    /// failure a retry can fix (no GPU free, storage down) is 503 with `Retry-After`, so clients
    /// retry it; one it cannot is 400, or 500 for a fault of ours.
    pub fn job_failed(code: FailureCode, message: &str, retryable: bool) -> Self {
        let error = match code {
            FailureCode::InvalidRequest | FailureCode::DeadlineExceeded => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            }
            FailureCode::UnknownModel => {
                Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
            }
            _ if retryable => Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                .retry_after(Duration::from_secs(5)),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message),
        };
        error.code(code.as_str())
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        let message = error.to_string();
        match error {
            QueueError::Invalid(_) | QueueError::Contract(_) | QueueError::DeadlinePassed => {
                Self::bad_request(message).code("invalid_value")
            }
            QueueError::Refused(CheckError::UnknownModel(_)) => {
                Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
                    .param("model")
                    .code("model_not_found")
            }
            QueueError::Refused(CheckError::Invalid(_)) => {
                Self::bad_request(message).code("invalid_value")
            }
            QueueError::PayloadTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                message,
            ),
            QueueError::QueueFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                    .code("queue_full")
                    .retry_after(Duration::from_secs(60))
            }
            QueueError::TooManyInFlight { .. } | QueueError::ScopeBusy { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
                    .code("too_many_in_flight")
                    .retry_after(Duration::from_secs(5))
            }
            QueueError::RateLimited { retry_after }
            | QueueError::ScopeRateLimited { retry_after, .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
                    .code("rate_limit_exceeded")
                    .retry_after(retry_after)
            }
            QueueError::NotAllowed => Self::forbidden(
                "Only the key that submitted this job, or an admin key, can cancel it.",
            ),
            QueueError::NotFound(_) => Self::not_found(message),
            QueueError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
            }
            QueueError::Redis(_) => Self::unavailable(
                "The job queue is unreachable right now. Try again in a few seconds.",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind.to_owned(),
                param: self.param,
                code: self.code,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
