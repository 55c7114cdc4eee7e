//! The gateway's routes, and its health and metrics endpoints.
//!
//! Invariant: every route is registered in [`api`] from its handler's `#[utoipa::path]`, so the
//! router and `/openapi.json` list the same routes; every request, matched or not, goes through the
//! metrics middleware and gets a problem+json answer when it fails (an unknown route is a 404
//! problem).

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response as HttpResponse};
use formstream_core::api::ApiError;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::middleware::track;
use super::openapi::ApiDoc;
use super::state::AppState;
use super::{batches, dead_letters, flags, forms, openapi, responses};
use crate::console;
use crate::metrics::Metrics;

/// Every route, with its OpenAPI document. A new route goes here as `.routes(routes!(handler))`
/// (handlers of one path together), never as a plain `.route(...)`.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(forms::create_form, forms::list_forms))
        .routes(routes!(forms::get_form, forms::update_form))
        .routes(routes!(responses::submit_response))
        .routes(routes!(responses::correct_response))
        .routes(routes!(flags::list_flags))
        .routes(routes!(batches::submit_batch))
        .merge(dead_letters::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(render_metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(console::page))
        .routes(routes!(console::script))
        .routes(routes!(console::style))
        .routes(routes!(
            console::sign_in,
            console::current,
            console::sign_out
        ))
        .routes(routes!(console::live::live))
        .routes(routes!(console::slang::search))
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    served(state.inner.metrics.clone(), max_body_bytes).with_state(state)
}

/// The router [`router`] serves, before its state: every route of [`api`], the 404 fallback and
/// the layers.
pub(crate) fn served(metrics: Metrics, max_body_bytes: usize) -> Router<AppState> {
    let (routes, _) = api().split_for_parts();
    routes
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(super::audit::audit))
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the forms view has caught up with its topic.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain"),
        (status = 503, description = "The forms view is still loading", body = formstream_core::api::Problem, content_type = "application/problem+json"),
    ))]
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

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
async fn render_metrics(State(state): State<AppState>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
        .into_response()
}
