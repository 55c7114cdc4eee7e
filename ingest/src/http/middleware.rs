//! The metrics middleware: every request counted and timed by its route template.
//!
//! Invariant: a request leaves the in-flight gauge exactly once, whether it was answered or
//! abandoned (the client went away and its future was dropped).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response as HttpResponse;

use crate::metrics::Metrics;

/// Counts and times every request by its route template.
pub(crate) async fn track(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> HttpResponse {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let in_flight = InFlight::start(&metrics);
    let response = next.run(request).await;
    drop(in_flight);
    metrics.request_finished(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// One request in the in-flight gauge, until it is answered or abandoned (the client went away
/// and the server dropped the request's future before it was answered).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.request_started();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}
