//! The HTTP errors of the gateway and of the slang search API, and their RFC 9457
//! `application/problem+json` bodies.
//!
//! Invariant: a client sees a precise problem for what it can fix (4xx, listing every field
//! problem), and an opaque one for what it cannot (5xx); internal causes are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::problem::FieldProblem;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    /// Authenticated, but the request may not proceed (a console request without its CSRF token).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the request is invalid")]
    Invalid(Vec<FieldProblem>),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than this gateway accepts")]
    TooLarge,
    /// The record built from the request (a response, a batch's) is larger than Kafka accepts
    /// (the producer's `message.max.bytes` or the topic's `max.message.bytes`): retrying cannot
    /// help. A form too large is a 422 `form_too_large` instead, with the form's own figures.
    #[error(
        "the record is larger than Kafka accepts (message.max.bytes); nothing was accepted: shorten the answers"
    )]
    RecordTooLarge,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    /// The request was not answered within the server's request timeout (see [`super::serve`]).
    #[error("the request took longer than {} s; nothing of it was kept. Retry with the same ids", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    #[error("Kafka is unavailable")]
    Unavailable {
        retry_after_secs: u64,
        cause: String,
    },
    /// An in-memory view (`"forms"`, `"flags"`) has not caught up with its topic yet.
    #[error("the {view} view is still loading")]
    NotReady {
        view: &'static str,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge | ApiError::RecordTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable { .. } | ApiError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem body a client sees.
    pub fn problem(&self) -> Problem {
        let (kind, title) = match self {
            ApiError::Unauthorized => ("/problems/unauthorized", "Missing or invalid API key"),
            ApiError::Forbidden(_) => ("/problems/forbidden", "Forbidden"),
            ApiError::NotFound(_) => ("/problems/not-found", "Not found"),
            ApiError::Invalid(_) => ("/problems/invalid-request", "The request is invalid"),
            ApiError::MalformedJson(_) => ("/problems/malformed-json", "Malformed JSON"),
            ApiError::UnsupportedMediaType => {
                ("/problems/unsupported-media-type", "Unsupported media type")
            }
            ApiError::TooLarge | ApiError::RecordTooLarge => {
                ("/problems/too-large", "Request too large")
            }
            ApiError::Conflict(_) => ("/problems/conflict", "Conflict"),
            ApiError::PreconditionFailed(_) => {
                ("/problems/precondition-failed", "Precondition failed")
            }
            ApiError::RequestTimeout(_) => ("/problems/request-timeout", "Request timeout"),
            ApiError::Unavailable { .. } => ("/problems/unavailable", "Service unavailable"),
            ApiError::NotReady { .. } => ("/problems/not-ready", "Service not ready"),
            ApiError::Internal(_) => ("/problems/internal", "Internal error"),
        };
        let detail = match self {
            ApiError::Invalid(errors) => format!(
                "{} problem{} found; see errors.",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ),
            ApiError::Unavailable { .. } => {
                "Kafka did not acknowledge the record in time; nothing was accepted. Retry later with the same response id.".to_owned()
            }
            // Never leak internal causes.
            ApiError::Internal(_) => "An internal error occurred; it has been logged.".to_owned(),
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            kind,
            title,
            status: self.status().as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(error) => tracing::error!(error = ?error, "Internal error."),
            // Logged where it happened, with the response's ids; here only for debugging.
            ApiError::Unavailable { cause, .. } => tracing::debug!(%cause, "Answered 503."),
            _ => {}
        }
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::NotReady {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
