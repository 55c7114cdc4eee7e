//! Reading JSON request bodies with problem+json rejections.
//!
//! Invariant: a body is parsed only when its content type is JSON; a client always learns which
//! of 415, 413, 400 or 422 applies, the 422 with the pointer of the field that did not fit.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, Query, Request};
use axum::http::{StatusCode, header};
use formstream_core::api::ApiError;
use formstream_core::problem::FieldProblem;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// `Json` with problem+json rejections: 415 for a wrong content type, 413 for an oversized body,
/// 400 for malformed JSON and 422 for JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// The body of a JSON request, unparsed: 415 for a wrong content type, 413 for an oversized body.
/// For a handler that parses it with [`parse_json`] into types that borrow from it.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(e)
                        if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        ApiError::TooLarge
                    }
                    other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
                    other => ApiError::MalformedJson(other.body_text()),
                })?;
        Ok(JsonBytes(bytes))
    }
}

/// A query string as its handler's type: a malformed one is a 422 (the type's fields are strings,
/// checked by the handler, so this is rare).
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(query)| query).map_err(|rejection| {
        ApiError::Invalid(vec![FieldProblem::new(
            "",
            "invalid_query",
            rejection.body_text(),
        )])
    })
}

/// Parses a JSON body: 400 for malformed JSON, 422 (with the failing field's pointer) for JSON of
/// the wrong shape.
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::MalformedJson(inner.to_string())
        } else {
            let path = error.path().to_string();
            let pointer = if path == "." {
                String::new()
            } else {
                format!("/{}", path.replace(['.', '['], "/").replace(']', ""))
            };
            ApiError::Invalid(vec![FieldProblem::new(
                pointer,
                "invalid_shape",
                inner.to_string(),
            )])
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}
