//! `POST /v1/responses/batch`: many responses, possibly to several forms, in one request.
//!
//! Invariant: each item is checked and answered exactly as a single POST would be; an item is
//! answered 202 only once Kafka acknowledged its own record.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};
use formstream_core::identity::ORGANISATION_HEADER;
use formstream_core::problem::FieldProblem;
use formstream_core::responses::ResponseBody;
use formstream_core::time::now_millis;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBytes, parse_json};
use super::responses::{Accepted, Prepared, Ready, finish, prepare, settle_claims};
use super::state::{AppState, require_ready};
use crate::kafka::Record;
use crate::metrics::ResponseOutcome;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    /// Kept as raw JSON borrowed from the request body, so that each item is parsed once, on its
    /// own, without a copy, and a malformed item fails alone.
    #[serde(borrow)]
    #[schema(value_type = Vec<ResponseBody>)]
    pub items: Vec<&'a serde_json::value::RawValue>,
}

/// One item's outcome in a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[utoipa::path(post, path = "/v1/responses/batch", tag = "responses", request_body = BatchBody,
    responses(
        (status = 207, description = "Each item's outcome, as a single POST would answer it", body = BatchResult),
        (status = 422, description = "No items, or more than the gateway takes", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn submit_batch(
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
    let headers: Vec<[(&str, &str); 3]> = ready
        .iter()
        .zip(&revisions)
        .map(|((_, r), revision)| {
            [
                ("response_id", r.response_id.as_str()),
                ("revision", revision.as_str()),
                (ORGANISATION_HEADER, &caller.organisation),
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
