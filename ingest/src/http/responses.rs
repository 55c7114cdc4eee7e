//! The responses handlers: submit a response and correct one, and the two halves of accepting a
//! response (checks and encoding, then Kafka's answer) that batches share.
//!
//! Invariant: a response is answered 202 only after Kafka acknowledged its record; a retry of a
//! submission this instance accepted is answered without publishing again, a retry of one whose
//! record Kafka has not answered yet is answered 503 without publishing, and conflicting content
//! for one (organisation, response id, revision) is never published twice.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};
use formstream_core::identity::ORGANISATION_HEADER;
use formstream_core::problem::FieldProblem;
use formstream_core::responses::{ResponseBody, Submission, validate};
use formstream_core::time::now_millis;
use formstream_schemas::FormVersion;
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use super::extract::ApiJson;
use super::state::{AppState, own_form, require_ready, unavailable};
use crate::digest::digest;
use crate::idempotency::{Claim, Digest, Key, Submissions};
use crate::kafka::{Delivered, OnSettled, PublishError};
use crate::metrics::ResponseOutcome;

/// What the retry cache keeps of an accepted response: the rest of the answer is in the request,
/// which keeps an entry small (the cache holds 100,000 by default).
#[derive(Debug, Clone, Copy)]
pub struct RetryCacheEntry {
    pub form_version: i32,
    pub partition: i32,
    pub offset: i64,
}

/// What the gateway answers for an accepted response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// Submits a response to a form; answered once Kafka acknowledged it.
#[utoipa::path(post, path = "/v1/forms/{form_id}/responses", tag = "responses", request_body = ResponseBody,
    params(("form_id" = String, Path, description = "The form answered")),
    responses(
        (status = 202, description = "Accepted: Kafka acknowledged the record", body = Accepted),
        (status = 404, description = "No such form in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Another content was accepted for this response id", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the response, at its pointer", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn submit_response(
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

/// Publishes a correction (the next revision) of a response.
#[utoipa::path(put, path = "/v1/forms/{form_id}/responses/{response_id}", tag = "responses", request_body = ResponseBody,
    params(
        ("form_id" = String, Path, description = "The form answered"),
        ("response_id" = String, Path, description = "The response corrected (a UUID)"),
    ),
    responses(
        (status = 202, description = "Accepted: Kafka acknowledged the record", body = Accepted),
        (status = 404, description = "No such form or response id", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Another content was accepted for this revision", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the correction, at its pointer", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn correct_response(
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
                (ORGANISATION_HEADER, &caller.organisation),
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
pub(crate) struct Ready {
    pub(crate) form_id: String,
    pub(crate) response_id: String,
    pub(crate) revision: i32,
    pub(crate) form_version: i32,
    pub(crate) payload: Vec<u8>,
    /// The retry-cache key this submission claimed (`Claim::Fresh`), completed or released as
    /// Kafka answers for its record ([`settle_claims`]). `None` when it has no client-supplied id.
    pub(crate) owned: Option<(Key, Digest)>,
}

impl Ready {
    /// The claim to settle when Kafka answers for this record, taken out of it.
    pub(crate) fn claim(&mut self) -> Option<Claimed> {
        let (key, digest) = self.owned.take()?;
        Some(Claimed {
            key,
            digest,
            form_version: self.form_version,
        })
    }
}

/// A retry-cache claim waiting for Kafka's answer for its record.
pub(crate) struct Claimed {
    key: Key,
    digest: Digest,
    form_version: i32,
}

/// Settles the claims of published records (one per record, in order; `None` for a record that
/// claimed nothing) as Kafka answers for each: an acknowledged record's answer is remembered for
/// its retries, a refused one's key is released so that a retry can publish it. This runs on
/// librdkafka's thread, whether or not the request still waits: a client that went away
/// mid-publish must not leave its key claimed forever, which would answer every retry 503.
pub(crate) fn settle_claims(
    submissions: &Arc<Submissions<RetryCacheEntry>>,
    claims: Vec<Option<Claimed>>,
) -> Option<OnSettled> {
    if claims.iter().all(Option::is_none) {
        return None;
    }
    let settling = Settling {
        submissions: submissions.clone(),
        claims: Mutex::new(claims),
    };
    Some(Box::new(move |index, outcome| {
        settling.settle(index, outcome);
    }))
}

/// The claims of one publish, each settled once, by Kafka's answer for its record.
///
/// Invariant: a claim no answer settled (its record was never queued: the publish was dropped
/// first) is released when this is dropped, so that no key stays claimed without a record.
struct Settling {
    submissions: Arc<Submissions<RetryCacheEntry>>,
    claims: Mutex<Vec<Option<Claimed>>>,
}

impl Settling {
    fn settle(&self, index: usize, outcome: &Result<Delivered, PublishError>) {
        let claimed = self
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(index)
            .and_then(Option::take);
        let Some(claimed) = claimed else {
            return;
        };
        match outcome {
            Ok(delivered) => self.submissions.accepted(
                claimed.key,
                claimed.digest,
                RetryCacheEntry {
                    form_version: claimed.form_version,
                    partition: delivered.partition,
                    offset: delivered.offset,
                },
            ),
            Err(_) => self.submissions.release(&claimed.key, &claimed.digest),
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        let claims = self
            .claims
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for claimed in claims.drain(..).flatten() {
            self.submissions.release(&claimed.key, &claimed.digest);
        }
    }
}

/// What the first, synchronous half of accepting a response decided.
pub(crate) enum Prepared {
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
pub(crate) fn prepare(
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
            Claim::InFlight => {
                inner.metrics.response(ResponseOutcome::Unavailable);
                return Err(ApiError::Unavailable {
                    retry_after_secs: inner.retry_after_secs,
                    cause: format!(
                        "response {} revision {revision} is still being published: Kafka has not \
                         answered for its record yet",
                        key.response_id
                    ),
                });
            }
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
pub(crate) fn finish(
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
