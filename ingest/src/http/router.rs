//! The gateway's routes, and its health and metrics endpoints.
//!
//! Invariant: every request, matched or not, goes through the metrics middleware and gets a
//! problem+json answer when it fails (an unknown route is a 404 problem).

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use formstream_core::api::ApiError;

use super::batches::submit_batch;
use super::flags::list_flags;
use super::forms::{create_form, get_form, list_forms, update_form};
use super::middleware::track;
use super::responses::{correct_response, submit_response};
use super::state::AppState;

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let metrics = state.inner.metrics.clone();
    Router::new()
        .route("/v1/forms", post(create_form).get(list_forms))
        .route("/v1/forms/{form_id}", get(get_form).put(update_form))
        .route("/v1/forms/{form_id}/responses", post(submit_response))
        .route(
            "/v1/forms/{form_id}/responses/{response_id}",
            put(correct_response),
        )
        .route("/v1/forms/{form_id}/flags", get(list_flags))
        .route("/v1/responses/batch", post(submit_batch))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(metrics, track))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> HttpResponse {
    if state.inner.view.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::NotReady {
            view: "forms",
            retry_after_secs: 1,
        }
        .into_response()
    }
}

async fn render_metrics(State(state): State<AppState>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
        .into_response()
}
