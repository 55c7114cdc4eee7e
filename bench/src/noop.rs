//! A no-op server with the gateway's routes: it parses each JSON body (into `serde_json::Value`)
//! and answers at once. It is the HTTP ceiling the gateway is compared with: same framework (axum
//! on a multi-threaded tokio runtime), same bodies, no validation, no Kafka.
//!
//! Invariant: every body is fully parsed before the answer, so the ceiling includes JSON parsing;
//! a body that does not parse gets 400, as it would from the gateway.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;

/// The gateway's default body limit, so that the same batches fit.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub fn router() -> Router {
    Router::new()
        .route(
            "/v1/forms",
            post(|axum::Json(_): axum::Json<Value>| async { (StatusCode::CREATED, "{}") }),
        )
        .route("/v1/forms/{form_id}/responses", post(response))
        .route("/v1/responses/batch", post(batch))
        .route("/readyz", get(|| async { "ready" }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn response(axum::Json(body): axum::Json<Value>) -> impl IntoResponse {
    // Keep the parsed value alive until here, so the parse cannot be optimised away.
    std::hint::black_box(&body);
    (
        StatusCode::ACCEPTED,
        [("content-type", "application/json")],
        r#"{"accepted":true}"#,
    )
}

async fn batch(axum::Json(body): axum::Json<Value>) -> impl IntoResponse {
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    (
        StatusCode::MULTI_STATUS,
        [("content-type", "application/json")],
        format!(r#"{{"accepted":{items},"rejected":0,"results":[]}}"#),
    )
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "No-op server listening.");
    println!("noop-server listening on {}", listener.local_addr()?);
    axum::serve(listener, router())
        .with_graceful_shutdown(stop_signal())
        .await
        .context("serving")
}

async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}
