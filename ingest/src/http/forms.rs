//! The forms handlers: create, update, get and list forms.
//!
//! Invariant: a form write is answered 2xx only after Kafka acknowledged it, and it is then in this
//! instance's view at once; one write at a time per instance, so that versions have no gaps here.
//! A form's checks (its rules are tried on a sample response) run on a blocking thread, before
//! the write lock and within [`BUILD_DEADLINE`]: one organisation's rules never hold an async
//! thread or another organisation's form writes.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};
use formstream_core::forms::{FormBody, FormView};
use formstream_core::identity::FormKey;
use formstream_core::problem::FieldProblem;
use formstream_core::rules::TOO_EXPENSIVE;
use formstream_core::time::now_millis;
use formstream_schemas::{Form, FormVersion};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::ApiJson;
use super::state::{AppState, own_form, require_ready, unavailable};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// The version to show; the current one when absent.
    version: Option<i32>,
}

/// Creates a form (version 1).
#[utoipa::path(post, path = "/v1/forms", tag = "forms", request_body = FormBody,
    responses(
        (status = 201, description = "Created; `Location` names the form", body = FormView),
        (status = 409, description = "The caller's organisation has a form of that id", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the body, at its pointer", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn create_form(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FormBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    let now = now_millis();
    let id = body
        .id
        .clone()
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    let version = build_off_thread(&state, body, 1, now).await?;
    owned_spreadsheet(&state, &caller, &version)?;
    let _guard = state.inner.form_writes.lock().await;
    // Only the caller's own forms can conflict: another organisation's form of this id is
    // another form, and answering 409 for it would tell the caller that it exists.
    if state.inner.view.get(&caller.organisation, &id).is_some() {
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

/// Publishes the next version of a form. `If-Match: "<version>"` makes it conditional.
#[utoipa::path(put, path = "/v1/forms/{form_id}", tag = "forms", request_body = FormBody,
    params(("form_id" = String, Path, description = "The form's id")),
    responses(
        (status = 200, description = "The new version", body = FormView),
        (status = 404, description = "No such form in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the body, at its pointer; `form_too_large` when the form's record, with every version, would be larger than Kafka accepts", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn update_form(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FormBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    own_form(&state, &caller, &form_id)?;
    if body.id.as_ref().is_some_and(|id| *id != form_id) {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            "/id",
            "immutable",
            "a form's id cannot change",
        )]));
    }
    // Numbered under the lock, once the current version is known.
    let mut version = build_off_thread(&state, body, 0, now_millis()).await?;
    owned_spreadsheet(&state, &caller, &version)?;
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
    version.version = current + 1;
    let mut form = (*held).clone();
    form.versions.push(version);
    let view = publish_form(&state, form).await?;
    tracing::info!(%form_id, version = view.version, "Form updated.");
    Ok(axum::Json(view).into_response())
}

/// 422 `spreadsheet_not_owned` when `version` exports to an existing spreadsheet that the
/// caller's organisation does not own (the same answer for another organisation's spreadsheet and
/// for nobody's, so that it tells nothing about other tenants).
fn owned_spreadsheet(
    state: &AppState,
    caller: &Caller,
    version: &FormVersion,
) -> Result<(), ApiError> {
    match state
        .inner
        .organisations
        .check_sheets(&caller.organisation, version)
    {
        Some(problem) => Err(ApiError::Invalid(vec![problem])),
        None => Ok(()),
    }
}

/// Longest a form's checks may take. The rule budget keeps a rule's try on the sample response to
/// microseconds, so only a rule the budget misjudged meets this; it is then refused, not stored.
const BUILD_DEADLINE: Duration = Duration::from_secs(2);

/// The version `body` builds, checked by the form's own checks and its registered processors'
/// actions ([`formstream_core::forms::FormActions::build_version`]), on a blocking thread, within [`BUILD_DEADLINE`]. Past it the answer is a 422
/// `rule_too_expensive` at once (the check finishes on its thread; its result is dropped).
async fn build_off_thread(
    state: &AppState,
    body: FormBody,
    version: i32,
    now: i64,
) -> Result<FormVersion, ApiError> {
    let actions = state.inner.form_actions.clone();
    let build = tokio::task::spawn_blocking(move || actions.build_version(&body, version, now));
    match tokio::time::timeout(BUILD_DEADLINE, build).await {
        Ok(Ok(built)) => built.map_err(ApiError::Invalid),
        Ok(Err(failed)) => Err(ApiError::Internal(failed.into())),
        Err(_) => Err(ApiError::Invalid(vec![FieldProblem::new(
            "/rules",
            TOO_EXPENSIVE,
            format!(
                "the rules took longer than {} s to try on a sample response; simplify them",
                BUILD_DEADLINE.as_secs()
            ),
        )])),
    }
}

/// Publishes a form (keyed `<organisation>/<form id>`, so that compaction keeps each
/// organisation's form of an id) and, once Kafka acknowledged it, applies it to this instance's
/// view, so that the caller can use it at once.
async fn publish_form(state: &AppState, form: Form) -> Result<FormView, ApiError> {
    let payload = state
        .inner
        .form_encoder
        .encode(&form)
        .map_err(|e| ApiError::Internal(e.into()))?;
    state
        .inner
        .form_publisher
        .publish(
            &state.inner.forms_topic,
            &FormKey::of(&form).to_string(),
            &payload,
            &[],
            None,
        )
        .await
        .map_err(|error| {
            if error.kind() == "too_large" {
                return too_large(&form, payload.len());
            }
            tracing::warn!(form_id = %form.id, %error, "Kafka did not acknowledge the form; answering 503.");
            unavailable(state, error)
        })?;
    let current = form
        .current()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("form without versions")))?;
    let view = FormView::of(&form, &current, &state.inner.form_actions);
    state.inner.view.apply(form);
    Ok(view)
}

/// A form's record holds every version (responses to any of them must still find it), so it
/// grows with each update; the one that would take it past what Kafka accepts (the producer's
/// `message.max.bytes` or the forms topic's `max.message.bytes`) is refused with a 422 saying so,
/// and the stored form stays as it was. Versions are never pruned to make room: a response to an
/// old version may still be on its way through the processors.
fn too_large(form: &Form, bytes: usize) -> ApiError {
    tracing::info!(form_id = %form.id, bytes, versions = form.versions.len(), "Form refused: its record would be larger than Kafka accepts.");
    ApiError::Invalid(vec![FieldProblem::new(
        "",
        FORM_TOO_LARGE,
        format!(
            "with this version the form's record ({bytes} bytes, {} versions) would be larger \
             than Kafka accepts (message.max.bytes); nothing was saved: shorten this version's \
             texts, or create a new form",
            form.versions.len()
        ),
    )])
}

/// The problem code of a form whose record would be larger than Kafka accepts.
const FORM_TOO_LARGE: &str = "form_too_large";

/// A form's current version, or the one `version` names.
#[utoipa::path(get, path = "/v1/forms/{form_id}", tag = "forms",
    params(("form_id" = String, Path, description = "The form's id"), VersionQuery),
    responses(
        (status = 200, description = "The version", body = FormView),
        (status = 404, description = "No such form (or version) in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
    ))]
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
    Ok(axum::Json(FormView::of(
        &form,
        version,
        &state.inner.form_actions,
    )))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FormList {
    forms: Vec<FormView>,
}

/// The caller's organisation's forms, each at its current version.
#[utoipa::path(get, path = "/v1/forms", tag = "forms",
    responses((status = 200, description = "The forms", body = FormList)))]
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
        .filter_map(|f| {
            f.current()
                .map(|v| FormView::of(f, v, &state.inner.form_actions))
        })
        .collect();
    Ok(axum::Json(FormList { forms }))
}
