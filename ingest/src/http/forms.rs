//! The forms handlers: create, update, get and list forms.
//!
//! Invariant: a form write is answered 2xx only after Kafka acknowledged it, and it is then in this
//! instance's view at once; one write at a time per instance, so that versions have no gaps here.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use formstream_core::api::{ApiError, Caller};
use formstream_core::forms::{FormBody, FormView, build_version};
use formstream_core::problem::FieldProblem;
use formstream_core::time::now_millis;
use formstream_schemas::Form;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::ApiJson;
use super::state::{AppState, own_form, require_ready, unavailable};

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    version: Option<i32>,
}

pub(crate) async fn create_form(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FormBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    let now = now_millis();
    let version = build_version(&body, 1, now).map_err(ApiError::Invalid)?;
    let _guard = state.inner.form_writes.lock().await;
    let id = body
        .id
        .clone()
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    if state.inner.view.get(&id).is_some() {
        return Err(ApiError::Conflict(format!(
            "form id {id:?} is already taken"
        )));
    }
    let form = Form {
        id,
        organisation: caller.organisation.to_string(),
        created_at: now,
        versions: vec![version],
    };
    let view = publish_form(&state, form).await?;
    tracing::info!(form_id = %view.id, organisation = %caller.organisation, "Form created.");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/forms/{}", view.id))],
        axum::Json(view),
    )
        .into_response())
}

pub(crate) async fn update_form(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FormBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    let _guard = state.inner.form_writes.lock().await;
    let held = own_form(&state, &caller, &form_id)?;
    let current = held.current().map(|v| v.version).unwrap_or(0);
    if let Some(expected) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let expected = expected.trim().trim_matches('"');
        if expected != "*" && expected != current.to_string() {
            return Err(ApiError::PreconditionFailed(format!(
                "the form is at version {current}, not {expected}"
            )));
        }
    }
    if body.id.as_ref().is_some_and(|id| *id != form_id) {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            "/id",
            "immutable",
            "a form's id cannot change",
        )]));
    }
    let version = build_version(&body, current + 1, now_millis()).map_err(ApiError::Invalid)?;
    let mut form = (*held).clone();
    form.versions.push(version);
    let view = publish_form(&state, form).await?;
    tracing::info!(%form_id, version = view.version, "Form updated.");
    Ok(axum::Json(view).into_response())
}

/// Publishes a form and, once Kafka acknowledged it, applies it to this instance's view, so that
/// the caller can use it at once.
async fn publish_form(state: &AppState, form: Form) -> Result<FormView, ApiError> {
    let payload = state
        .inner
        .form_encoder
        .encode(&form)
        .map_err(|e| ApiError::Internal(e.into()))?;
    state
        .inner
        .publisher
        .publish(&state.inner.forms_topic, &form.id, &payload, &[], None)
        .await
        .map_err(|error| {
            tracing::warn!(form_id = %form.id, %error, "Kafka did not acknowledge the form; answering 503.");
            unavailable(state, error)
        })?;
    let current = form
        .current()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("form without versions")))?;
    let view = FormView::of(&form, &current);
    state.inner.view.apply(form);
    Ok(view)
}

pub(crate) async fn get_form(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<axum::Json<FormView>, ApiError> {
    require_ready(&state)?;
    let form = own_form(&state, &caller, &form_id)?;
    let version = match query.version {
        None => form.current(),
        Some(n) => form.version(n),
    }
    .ok_or(ApiError::NotFound("form version"))?;
    Ok(axum::Json(FormView::of(&form, version)))
}

#[derive(Serialize)]
pub(crate) struct FormList {
    forms: Vec<FormView>,
}

pub(crate) async fn list_forms(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<FormList>, ApiError> {
    require_ready(&state)?;
    let forms = state
        .inner
        .view
        .list(&caller.organisation)
        .iter()
        .filter_map(|f| f.current().map(|v| FormView::of(f, v)))
        .collect();
    Ok(axum::Json(FormList { forms }))
}
