//! The gateway's HTTP API: routes, handlers and the JSON extractor.
//!
//! Invariant: a handler answers 2xx for a response only after Kafka acknowledged its record; every
//! other outcome is a problem+json error, and nothing invalid is published.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use formstream_core::api::{ApiError, ApiKeys, Caller, HasApiKeys, Problem};
use formstream_core::forms::{FormBody, FormView, FormsView, build_version};
use formstream_core::phones::Phones;
use formstream_core::problem::FieldProblem;
use formstream_core::responses::{ResponseBody, Submission, validate};
use formstream_core::time::now_millis;
use formstream_schemas::{Encoder, Form, FormVersion, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::digest::digest;
use crate::flags::{FlagList, FlagsQuery, FlagsView};
use crate::idempotency::{Claim, Digest, Key, Submissions};
use crate::kafka::{Delivered, OnSettled, PublishError, Publisher, Record};
use crate::metrics::{Metrics, ResponseOutcome};

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub keys: ApiKeys,
    pub view: Arc<FormsView>,
    /// Flagged responses, for `GET /v1/forms/{form_id}/flags`.
    pub flags: Arc<FlagsView>,
    pub publisher: Publisher,
    pub forms_topic: String,
    pub responses_topic: String,
    pub form_encoder: Encoder<Form>,
    pub response_encoder: Encoder<Response>,
    pub metrics: Metrics,
    pub max_text_chars: usize,
    pub max_batch_items: usize,
    pub phones: Phones,
    pub retry_after_secs: u64,
    /// Recent submissions with a client-supplied id, to answer retries without publishing again.
    pub submissions: Arc<Submissions<Receipt>>,
    /// Form writes are rare; one at a time per instance keeps version numbers gap-free here.
    pub form_writes: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState {
            inner: Arc::new(inner),
        }
    }
}

impl HasApiKeys for AppState {
    fn api_keys(&self) -> &ApiKeys {
        &self.inner.keys
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let metrics = state.inner.metrics.clone();
    Router::new()
        .route("/v1/forms", post(create_form).get(list_forms))
        .route("/v1/forms/{form_id}", get(get_form).put(update_form))
        .route("/v1/forms/{form_id}/responses", post(submit_response))
        .route(
            "/v1/forms/{form_id}/responses/{response_id}",
            axum::routing::put(correct_response),
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

/// Counts and times every request by its route template.
async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> HttpResponse {
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

fn require_ready(state: &AppState) -> Result<(), ApiError> {
    if state.inner.view.is_ready() {
        Ok(())
    } else {
        Err(ApiError::NotReady {
            view: "forms",
            retry_after_secs: state.inner.retry_after_secs,
        })
    }
}

/// The caller's form, or 404: another organisation's form is indistinguishable from a missing one.
fn own_form(state: &AppState, caller: &Caller, form_id: &str) -> Result<Arc<Form>, ApiError> {
    state
        .inner
        .view
        .get(form_id)
        .filter(|f| *f.organisation == *caller.organisation)
        .ok_or(ApiError::NotFound("form"))
}

fn unavailable(state: &AppState, error: PublishError) -> ApiError {
    ApiError::Unavailable {
        retry_after_secs: state.inner.retry_after_secs,
        cause: error.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Forms

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    version: Option<i32>,
}

async fn create_form(
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

async fn update_form(
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

async fn get_form(
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
struct FormList {
    forms: Vec<FormView>,
}

async fn list_forms(
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

// ---------------------------------------------------------------------------------------------
// Responses

/// What the retry cache keeps of an accepted response: the rest of the answer is in the request,
/// which keeps an entry small (the cache holds 100,000 by default).
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub form_version: i32,
    pub partition: i32,
    pub offset: i64,
}

/// What the gateway answers for an accepted response.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub response_id: String,
    pub revision: i32,
    pub form_id: String,
    pub form_version: i32,
    pub partition: i32,
    pub offset: i64,
    /// True when this answers a retry of a submission already accepted.
    pub duplicate: bool,
}

async fn submit_response(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    ApiJson(body): ApiJson<ResponseBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    if body.form_id.is_some() || body.revision.is_some() {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            if body.form_id.is_some() {
                "/form_id"
            } else {
                "/revision"
            },
            "not_allowed",
            "form_id is taken from the path, and corrections use PUT .../responses/{response_id}",
        )]));
    }
    let accepted = accept(&state, &caller, &form_id, &body, 0, "").await?;
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

async fn correct_response(
    State(state): State<AppState>,
    caller: Caller,
    Path((form_id, response_id)): Path<(String, String)>,
    ApiJson(mut body): ApiJson<ResponseBody>,
) -> Result<HttpResponse, ApiError> {
    require_ready(&state)?;
    let mut problems = Vec::new();
    let path_id = Uuid::parse_str(&response_id).ok().filter(|u| !u.is_nil());
    if path_id.is_none() {
        return Err(ApiError::NotFound("response"));
    }
    if body.form_id.is_some() {
        problems.push(FieldProblem::new(
            "/form_id",
            "not_allowed",
            "form_id is taken from the path",
        ));
    }
    if body
        .response_id
        .as_deref()
        .is_some_and(|id| Uuid::parse_str(id).ok() != path_id)
    {
        problems.push(FieldProblem::new(
            "/response_id",
            "mismatch",
            "response_id differs from the path",
        ));
    }
    let revision = match body.revision {
        Some(r) if r >= 1 => r,
        _ => {
            problems.push(FieldProblem::new(
                "/revision",
                "required",
                "a correction states the revision it publishes: 1 for the first correction, then 2, ...",
            ));
            0
        }
    };
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    body.response_id = Some(response_id);
    let accepted = accept(&state, &caller, &form_id, &body, revision, "").await?;
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

/// Validates, publishes and remembers one response revision.
async fn accept(
    state: &AppState,
    caller: &Caller,
    form_id: &str,
    body: &ResponseBody,
    revision: i32,
    pointer_prefix: &str,
) -> Result<Accepted, ApiError> {
    let inner = &state.inner;
    let mut ready = match prepare(
        state,
        caller,
        form_id,
        body,
        revision,
        pointer_prefix,
        now_millis(),
    )? {
        Prepared::Repeat(accepted) => return Ok(accepted),
        Prepared::Publish(ready) => ready,
    };
    let span =
        tracing::debug_span!("publish", response_id = %ready.response_id, revision, %form_id);
    let revision_text = revision.to_string();
    let settle = settle_claims(&inner.submissions, vec![ready.claim()]);
    let delivered = inner
        .publisher
        .publish(
            &inner.responses_topic,
            &ready.form_id,
            &ready.payload,
            &[
                ("response_id", &ready.response_id),
                ("revision", &revision_text),
            ],
            settle,
        )
        .instrument(span)
        .await;
    inner.metrics.response(match delivered {
        Ok(_) => ResponseOutcome::Accepted,
        Err(_) => ResponseOutcome::Unavailable,
    });
    finish(state, ready, delivered)
}

/// A response that passed its checks, encoded and ready to publish.
struct Ready {
    form_id: String,
    response_id: String,
    revision: i32,
    form_version: i32,
    payload: Vec<u8>,
    /// The retry-cache key this submission claimed (`Claim::Fresh`), completed or released as
    /// Kafka answers for its record ([`settle_claims`]). `None` when it has no client-supplied id,
    /// or when another request owns the key (`Claim::InFlight`).
    owned: Option<(Key, Digest)>,
}

impl Ready {
    /// The claim to settle when Kafka answers for this record, taken out of it.
    fn claim(&mut self) -> Option<Claimed> {
        let (key, digest) = self.owned.take()?;
        Some(Claimed {
            key,
            digest,
            form_version: self.form_version,
        })
    }
}

/// A retry-cache claim waiting for Kafka's answer for its record.
struct Claimed {
    key: Key,
    digest: Digest,
    form_version: i32,
}

/// Settles the claims of published records (one per record, in order; `None` for a record that
/// claimed nothing) as Kafka answers for each: an acknowledged record's answer is remembered for
/// its retries, a refused one's key is released so that a retry can publish it. This runs on
/// librdkafka's thread, whether or not the request still waits: a client that went away
/// mid-publish must not leave its key claimed forever, which would publish every retry again.
fn settle_claims(
    submissions: &Arc<Submissions<Receipt>>,
    claims: Vec<Option<Claimed>>,
) -> Option<OnSettled> {
    if claims.iter().all(Option::is_none) {
        return None;
    }
    let submissions = submissions.clone();
    Some(Box::new(move |index, outcome| {
        let Some(Some(claimed)) = claims.get(index) else {
            return;
        };
        match outcome {
            Ok(delivered) => submissions.accepted(
                claimed.key.clone(),
                claimed.digest,
                Receipt {
                    form_version: claimed.form_version,
                    partition: delivered.partition,
                    offset: delivered.offset,
                },
            ),
            Err(_) => submissions.release(&claimed.key, &claimed.digest),
        }
    }))
}

/// What the first, synchronous half of accepting a response decided.
enum Prepared {
    /// A retry of a submission already accepted: the answer, without publishing again.
    Repeat(Accepted),
    /// Valid, encoded, and (when it has an id) claimed: publish it, then [`finish`].
    Publish(Ready),
}

/// The synchronous half of accepting a response: the form, the retry cache, validation and
/// encoding. A retry of what this instance already accepted is answered without publishing again,
/// and a key is claimed before publishing, so that conflicting content never goes out twice.
///
/// Invariant: on `Err`, any key this call claimed is released again.
fn prepare(
    state: &AppState,
    caller: &Caller,
    form_id: &str,
    body: &ResponseBody,
    revision: i32,
    pointer_prefix: &str,
    received_at: i64,
) -> Result<Prepared, ApiError> {
    let inner = &state.inner;
    let form = own_form(state, caller, form_id)?;
    let version: &FormVersion = form
        .current()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("form {form_id} has no versions")))?;

    let claim = body
        .response_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok())
        .map(|response_id| {
            let key = Key {
                organisation: caller.organisation.clone(),
                response_id,
                revision,
            };
            (key, digest(body, form_id))
        });
    let mut owned = None;
    if let Some((key, digest)) = claim {
        match inner.submissions.claim(&key, &digest) {
            Claim::Repeat(receipt) => {
                inner.metrics.response(ResponseOutcome::Duplicate);
                // The same digest means the same form: the rest of the answer is in the request.
                return Ok(Prepared::Repeat(Accepted {
                    response_id: key.response_id.hyphenated().to_string(),
                    revision,
                    form_id: form_id.to_owned(),
                    form_version: receipt.form_version,
                    partition: receipt.partition,
                    offset: receipt.offset,
                    duplicate: true,
                }));
            }
            Claim::Conflict => {
                return Err(ApiError::Conflict(format!(
                    "response {} revision {revision} was already submitted with different content; \
                     corrections use PUT .../responses/{{response_id}} with the next revision",
                    key.response_id
                )));
            }
            Claim::InFlight => {}
            Claim::Fresh => owned = Some((key, digest)),
        }
    }
    let encoded = validate(
        body,
        &Submission {
            organisation: &caller.organisation,
            form_id,
            form: version,
            revision,
            received_at,
            max_text_chars: inner.max_text_chars,
            pointer_prefix,
            phones: &inner.phones,
        },
    )
    .map_err(|problems| {
        inner.metrics.response(ResponseOutcome::Invalid);
        ApiError::Invalid(problems)
    })
    .and_then(|response| {
        let payload = inner
            .response_encoder
            .encode(&response)
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok((response, payload))
    });
    match encoded {
        Ok((response, payload)) => Ok(Prepared::Publish(Ready {
            form_id: response.form_id,
            response_id: response.response_id,
            revision,
            form_version: response.form_version,
            payload,
            owned,
        })),
        Err(error) => {
            if let Some((key, digest)) = owned {
                inner.submissions.release(&key, &digest);
            }
            Err(error)
        }
    }
}

/// The second half of accepting a response, once Kafka has answered for its record: the answer,
/// 202 only for an acknowledged record, else 503 (its retry-cache claim is settled by
/// [`settle_claims`]). The caller counts the outcome (a batch counts all of its items at once).
fn finish(
    state: &AppState,
    ready: Ready,
    delivered: Result<Delivered, PublishError>,
) -> Result<Accepted, ApiError> {
    let Ready {
        form_id,
        response_id,
        revision,
        form_version,
        payload: _,
        owned: _,
    } = ready;
    match delivered {
        Ok(delivered) => {
            tracing::debug!(
                %response_id,
                revision,
                partition = delivered.partition,
                offset = delivered.offset,
                "Response accepted."
            );
            Ok(Accepted {
                response_id,
                revision,
                form_id,
                form_version,
                partition: delivered.partition,
                offset: delivered.offset,
                duplicate: false,
            })
        }
        Err(error) => {
            tracing::warn!(
                %response_id,
                revision,
                %form_id,
                %error,
                "Kafka did not acknowledge the response; answering 503."
            );
            Err(unavailable(state, error))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    /// Kept as raw JSON borrowed from the request body, so that each item is parsed once, on its
    /// own, without a copy, and a malformed item fails alone.
    #[serde(borrow)]
    pub items: Vec<&'a serde_json::value::RawValue>,
}

/// One item's outcome in a batch.
#[derive(Debug, Serialize)]
pub struct ItemResult {
    pub index: usize,
    pub status: u16,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Accepted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

impl ItemResult {
    fn of(index: usize, outcome: Result<Accepted, ApiError>) -> Self {
        match outcome {
            Ok(accepted) => ItemResult {
                index,
                status: 202,
                accepted: Some(accepted),
                problem: None,
            },
            Err(error) => ItemResult {
                index,
                status: error.status().as_u16(),
                accepted: None,
                problem: Some(error.problem()),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BatchResult {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<ItemResult>,
}

/// Many responses, possibly to several forms, in one request (collectors syncing after being
/// offline). Each item is checked and answered on its own, exactly as a single POST would be; the
/// valid ones are then published together and their acknowledgements awaited together (one wake-up
/// per batch rather than one per record). An item is answered 202 only once Kafka acknowledged its
/// own record. The answer is 207 unless Kafka acknowledged none of the valid items (503).
async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> Result<HttpResponse, ApiError> {
    let body: BatchBody<'_> = parse_json(&bytes)?;
    require_ready(&state)?;
    let max = state.inner.max_batch_items;
    if body.items.is_empty() || body.items.len() > max {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            "/items",
            "invalid_count",
            format!("a batch holds 1 to {max} items"),
        )]));
    }
    let received_at = now_millis();
    let mut outcomes: Vec<Option<Result<Accepted, ApiError>>> =
        Vec::with_capacity(body.items.len());
    // Items to publish, with their index in `outcomes`.
    let mut ready: Vec<(usize, Ready)> = Vec::with_capacity(body.items.len());
    for (index, item) in body.items.iter().enumerate() {
        match prepare_item(&state, &caller, index, item.get(), received_at) {
            Ok(Prepared::Publish(item)) => {
                ready.push((index, item));
                outcomes.push(None);
            }
            Ok(Prepared::Repeat(accepted)) => outcomes.push(Some(Ok(accepted))),
            Err(error) => outcomes.push(Some(Err(error))),
        }
    }
    let inner = &state.inner;
    let settle = settle_claims(
        &inner.submissions,
        ready.iter_mut().map(|(_, r)| r.claim()).collect(),
    );
    let revisions: Vec<String> = ready.iter().map(|(_, r)| r.revision.to_string()).collect();
    let headers: Vec<[(&str, &str); 2]> = ready
        .iter()
        .zip(&revisions)
        .map(|((_, r), revision)| {
            [
                ("response_id", r.response_id.as_str()),
                ("revision", revision.as_str()),
            ]
        })
        .collect();
    let records: Vec<Record<'_>> = ready
        .iter()
        .zip(&headers)
        .map(|((_, r), headers)| Record {
            key: &r.form_id,
            payload: &r.payload,
            headers,
        })
        .collect();
    let delivered = inner
        .publisher
        .publish_batch(&inner.responses_topic, &records, settle)
        .await;
    drop(records);
    drop(headers);
    let acknowledged = delivered.iter().filter(|d| d.is_ok()).count();
    let metrics = &inner.metrics;
    metrics.responses(ResponseOutcome::Accepted, acknowledged);
    metrics.responses(ResponseOutcome::Unavailable, delivered.len() - acknowledged);
    for ((index, item), delivered) in ready.into_iter().zip(delivered) {
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(finish(&state, item, delivered));
        }
    }
    let results: Vec<ItemResult> = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            // Every slot is filled above; an empty one would be a bug, answered 500, never 202.
            let outcome = outcome.unwrap_or_else(|| {
                Err(ApiError::Internal(anyhow::anyhow!(
                    "batch item {index} has no outcome"
                )))
            });
            ItemResult::of(index, outcome)
        })
        .collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    let unavailable = results.iter().filter(|r| r.status == 503).count();
    if accepted == 0 && unavailable > 0 {
        return Err(ApiError::Unavailable {
            retry_after_secs: state.inner.retry_after_secs,
            cause: format!("{unavailable} batch items not acknowledged"),
        });
    }
    let summary = BatchResult {
        accepted,
        rejected: results.len() - accepted,
        results,
    };
    Ok((StatusCode::MULTI_STATUS, axum::Json(summary)).into_response())
}

/// Parses and checks one batch item, then [`prepare`]s it as a single POST to its form.
fn prepare_item(
    state: &AppState,
    caller: &Caller,
    index: usize,
    item: &str,
    received_at: i64,
) -> Result<Prepared, ApiError> {
    let prefix = format!("/items/{index}");
    let item: ResponseBody = serde_json::from_str(item).map_err(|e| {
        ApiError::Invalid(vec![FieldProblem::new(
            prefix.clone(),
            "invalid_shape",
            e.to_string(),
        )])
    })?;
    let Some(form_id) = item.form_id.as_deref() else {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            format!("{prefix}/form_id"),
            "required",
            "each batch item names its form_id",
        )]));
    };
    if item.revision.is_some() {
        return Err(ApiError::Invalid(vec![FieldProblem::new(
            format!("{prefix}/revision"),
            "not_allowed",
            "corrections use PUT .../responses/{response_id}",
        )]));
    }
    prepare(state, caller, form_id, &item, 0, &prefix, received_at)
}

// ---------------------------------------------------------------------------------------------
// Flags

/// A form's flagged responses, open or resolved, a page at a time.
///
/// Served from the flags view, which follows the response-flags topic on its own: until it has
/// caught up, this answers 503 with `Retry-After` rather than a partial list. `/readyz` does not
/// wait for it, on purpose: accepting responses does not depend on flags, and a long flags topic
/// must not keep a restarted gateway out of its load balancer.
async fn list_flags(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    query: Result<Query<FlagsQuery>, QueryRejection>,
) -> Result<axum::Json<FlagList>, ApiError> {
    require_ready(&state)?;
    let form = own_form(&state, &caller, &form_id)?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::Invalid(vec![FieldProblem::new(
            "",
            "invalid_query",
            rejection.body_text(),
        )])
    })?;
    let listing = query.check().map_err(ApiError::Invalid)?;
    let flags = &state.inner.flags;
    if !flags.is_ready() {
        return Err(ApiError::NotReady {
            view: "flags",
            retry_after_secs: state.inner.retry_after_secs,
        });
    }
    let page = flags.page(
        &form.id,
        &form.organisation,
        listing.status,
        listing.after.as_ref(),
        listing.limit,
    );
    Ok(axum::Json(FlagList::of(&form.id, listing.status, page)))
}
