//! A problem with one field of what a client sent (a form, a response, a query), as the HTTP
//! APIs list them in a 422 problem+json body.
//!
//! Invariant: `pointer` is an RFC 6901 JSON pointer into the request body as the client wrote it,
//! and `code` is one of a fixed set of machine-readable words that clients may match on.

use serde::Serialize;

/// One problem with one field of a request, located by a JSON pointer (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    pub pointer: String,
    pub code: &'static str,
    pub detail: String,
}

impl FieldProblem {
    pub fn new(pointer: impl Into<String>, code: &'static str, detail: impl Into<String>) -> Self {
        FieldProblem {
            pointer: pointer.into(),
            code,
            detail: detail.into(),
        }
    }
}
