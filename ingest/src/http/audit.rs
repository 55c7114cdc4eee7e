//! The audit layer: every write (any method but GET, HEAD and OPTIONS) leaves one log line, on
//! target `formstream::audit`, naming the organisation and the API key's name (never the key),
//! the method, the path and the answer's status.
//!
//! Invariant: a write answered by the gateway is audited exactly once, authenticated or not (an
//! unauthenticated one is logged without a caller).

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response as HttpResponse;
use formstream_core::api::CallerSlot;

/// Logs one audit line per write, after its answer.
pub(crate) async fn audit(mut request: Request, next: Next) -> HttpResponse {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    match slot.get() {
        Some(caller) => tracing::info!(
            target: "formstream::audit",
            organisation = %caller.organisation,
            key = %caller.key_name,
            %method,
            %path,
            %route,
            status,
            "Write."
        ),
        None => tracing::info!(
            target: "formstream::audit",
            %method,
            %path,
            %route,
            status,
            "Write without an authenticated caller."
        ),
    }
    response
}
