//! `/v1/dead-letters`: the processors' dead letters, for the caller's organisation (the console's
//! Dead letters page): how many are pending per processor, a filtered page of one processor's,
//! one in full, and re-drive or discard by ids or by filter. The operations are
//! [`formstream_runtime::redrive`]'s (the same as `formstream dlq`), so a re-drive stays exactly
//! once however many gateways and operators act at once.
//!
//! Invariant: an organisation sees and changes only dead letters whose record is its own; another
//! organisation's dead letter answers exactly as a missing one does (404), and a filter never
//! reaches past the caller's organisation. Nothing shown holds a phone number in full (the
//! library's `summary_json`/`full_json` scrub them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};
use formstream_core::config::KafkaArgs;
use formstream_core::problem::FieldProblem;
use formstream_runtime::redrive::filter::{parse_kind, parse_time};
use formstream_runtime::redrive::snapshot::{ReadError, Snapshot};
use formstream_runtime::redrive::{
    AdminError, DeadLetter, DeadLetterAdmin, Filter, LetterId, Outcome, Scope, Selection, Status,
};
use formstream_schemas::Codec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::state::AppState;
use crate::config::DeadLetterProcessor;
use crate::paging;

/// How old a snapshot of a dead-letter topic may be when read again: the console polls the
/// counts every few seconds, and every poll would otherwise read the topics to their ends.
/// Re-drives and discards through this gateway drop it at once.
const FRESH: Duration = Duration::from_secs(2);

/// Ids in one re-drive or discard, at most: one transaction stays small.
const MAX_IDS: usize = 1_000;

/// The routes of this module, with their OpenAPI operations.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_processors))
        .routes(routes!(list_dead_letters))
        .routes(routes!(show_dead_letter))
        .routes(routes!(redrive))
        .routes(routes!(discard))
}

/// The processors whose dead letters the gateway serves, each with its last snapshot.
pub struct DeadLetters {
    processors: BTreeMap<String, Served>,
}

struct Served {
    admin: DeadLetterAdmin,
    /// The last snapshot and when it was read; one reader at a time, the others wait for it.
    snapshot: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, codec: &Codec, processors: &[DeadLetterProcessor]) -> Self {
        let processors = processors
            .iter()
            .map(|p| {
                let admin =
                    DeadLetterAdmin::new(kafka.clone(), codec.clone(), &p.name, &p.dlq_topic);
                let served = Served {
                    admin,
                    snapshot: tokio::sync::Mutex::new(None),
                };
                (p.name.clone(), served)
            })
            .collect();
        DeadLetters { processors }
    }

    fn served(&self, processor: &str) -> Result<&Served, ApiError> {
        self.processors
            .get(processor)
            .ok_or(ApiError::NotFound("processor"))
    }
}

impl Served {
    /// Every dead letter of the processor, read at most `max_age` ago. A dead-letter topic that
    /// does not exist yet (the processor never ran) holds none.
    async fn snapshot(
        &self,
        max_age: Duration,
        retry_after: u64,
    ) -> Result<Arc<Snapshot>, ApiError> {
        let mut cached = self.snapshot.lock().await;
        if let Some((at, snapshot)) = cached.as_ref()
            && at.elapsed() <= max_age
        {
            return Ok(snapshot.clone());
        }
        let snapshot = match self.admin.snapshot().await {
            Ok(snapshot) => Arc::new(snapshot),
            Err(AdminError::Read(ReadError::NoTopic(_))) => Arc::new(Snapshot::default()),
            Err(error) => return Err(unavailable(error, retry_after)),
        };
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    async fn forget(&self) {
        *self.snapshot.lock().await = None;
    }
}

fn unavailable(error: AdminError, retry_after_secs: u64) -> ApiError {
    ApiError::Unavailable {
        retry_after_secs,
        cause: error.to_string(),
    }
}

fn visible(letter: &DeadLetter, caller: &Caller) -> bool {
    letter.organisation() == Some(&*caller.organisation)
}

/// `GET /v1/dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterCounts {
    pub processors: Vec<PendingCount>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingCount {
    pub processor: String,
    /// The caller's dead letters neither re-driven nor discarded.
    pub pending: usize,
}

/// How many of the caller's dead letters wait, per processor.
///
/// Cheap to poll: each processor's dead letters are read at most every 2 seconds.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters",
    responses((status = 200, description = "Pending dead letters per processor", body = DeadLetterCounts)))]
pub(crate) async fn list_processors(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<DeadLetterCounts>, ApiError> {
    let retry_after = state.inner.retry_after_secs;
    let mut processors = Vec::new();
    for (name, served) in &state.inner.dead_letters.processors {
        let snapshot = served.snapshot(FRESH, retry_after).await?;
        let pending = snapshot
            .letters
            .iter()
            .filter(|l| l.state.status == Status::Pending && visible(l, &caller))
            .count();
        processors.push(PendingCount {
            processor: name.clone(),
            pending,
        });
    }
    Ok(axum::Json(DeadLetterCounts { processors }))
}

/// The query of `GET /v1/dead-letters/{processor}`, as sent: strings, so that every problem is
/// reported as a 422 at its parameter.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// `pending` (the default), `redriven`, `discarded` or `all`.
    pub status: Option<String>,
    /// The error kind: `permanent`, `retries_exhausted`, `undecodable`, `unknown_form` or
    /// `forbidden`.
    pub kind: Option<String>,
    pub form_id: Option<String>,
    pub response_id: Option<String>,
    /// Dead-lettered at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Dead-lettered before this RFC 3339 time.
    pub until: Option<String>,
    /// Dead letters per page, 1 to 500 (default 50).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

/// The conditions of a re-drive or a discard by filter; the same names as the list's query.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    pub kind: Option<String>,
    pub form_id: Option<String>,
    pub response_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// The filter of a query or a body, in the caller's organisation; problems at `prefix/<name>`.
fn checked_filter(
    body: &FilterBody,
    caller: &Caller,
    prefix: &str,
    problems: &mut Vec<FieldProblem>,
) -> Filter {
    let mut problem = |name: &str, code: &'static str, detail: String| {
        problems.push(FieldProblem::new(format!("{prefix}/{name}"), code, detail));
    };
    let kind = body.kind.as_deref().and_then(|kind| {
        parse_kind(kind)
            .map_err(|e| problem("kind", "invalid_kind", e))
            .ok()
    });
    let mut time = |name: &str, text: Option<&str>| {
        text.and_then(|text| {
            parse_time(text)
                .map_err(|e| problem(name, "invalid_time", e))
                .ok()
        })
    };
    let since_ms = time("since", body.since.as_deref());
    let until_ms = time("until", body.until.as_deref());
    let filter = Filter {
        kind,
        organisation: Some(caller.organisation.to_string()),
        form_id: body.form_id.clone(),
        response_id: body.response_id.clone(),
        since_ms,
        until_ms,
    };
    match filter.clone().validated() {
        Ok(filter) => filter,
        Err(error) => {
            problems.push(FieldProblem::new(
                format!("{prefix}/{}", error.parameter),
                "invalid_range",
                error.reason,
            ));
            filter
        }
    }
}

/// Where a page ends: the last dead letter's time and id (the list's order).
fn cursor(letter: &DeadLetter) -> String {
    format!("{}_{}", letter.dead_lettered_ms(), letter.id)
}

fn parse_cursor(text: &str) -> Option<(i64, LetterId)> {
    let (ms, id) = text.split_once('_')?;
    Some((ms.parse().ok()?, id.parse().ok()?))
}

/// A checked [`DeadLettersQuery`].
struct Listing {
    /// `None`: every status.
    status: Option<Status>,
    filter: Filter,
    limit: usize,
    after: Option<(i64, LetterId)>,
}

impl DeadLettersQuery {
    fn check(&self, caller: &Caller) -> Result<Listing, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let status = match self.status.as_deref() {
            None | Some("pending") => Some(Status::Pending),
            Some("redriven") => Some(Status::Redriven),
            Some("discarded") => Some(Status::Discarded),
            Some("all") => None,
            Some(other) => {
                problems.push(FieldProblem::new(
                    "/status",
                    "invalid_status",
                    format!("status is pending, redriven, discarded or all, not {other:?}"),
                ));
                None
            }
        };
        let body = FilterBody {
            kind: self.kind.clone(),
            form_id: self.form_id.clone(),
            response_id: self.response_id.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
        };
        let filter = checked_filter(&body, caller, "", &mut problems);
        let limit = paging::limit(self.limit.as_deref(), &mut problems);
        let after = paging::after(self.after.as_deref(), parse_cursor, &mut problems);
        if problems.is_empty() {
            Ok(Listing {
                status,
                filter,
                limit,
                after,
            })
        } else {
            Err(problems)
        }
    }
}

/// A page of one processor's dead letters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub processor: String,
    /// Oldest dead-lettered first: each one's id, status, error, source, record summary and
    /// headers (phone numbers redacted).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of one processor's dead letters in the caller's organisation, filtered.
#[utoipa::path(get, path = "/v1/dead-letters/{processor}", tag = "dead letters",
    params(("processor" = String, Path, description = "The processor, as in `formstream process <name>`"), DeadLettersQuery),
    responses(
        (status = 200, description = "A page of dead letters, oldest first", body = DeadLetterPage),
        (status = 404, description = "No such processor", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the query, at its parameter", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    Path(processor): Path<String>,
    query: Result<Query<DeadLettersQuery>, QueryRejection>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let served = state.inner.dead_letters.served(&processor)?;
    let query = super::extract::query(query)?;
    let listing = query.check(&caller).map_err(ApiError::Invalid)?;
    let snapshot = served.snapshot(FRESH, state.inner.retry_after_secs).await?;
    let matching = snapshot.letters.iter().filter(|letter| {
        visible(letter, &caller)
            && listing.status.is_none_or(|s| letter.state.status == s)
            && listing.filter.matches(letter)
            && listing
                .after
                .is_none_or(|after| (letter.dead_lettered_ms(), letter.id) > after)
    });
    let (page, next_cursor) = paging::page(matching, listing.limit, |last| cursor(last));
    Ok(axum::Json(DeadLetterPage {
        items: page
            .iter()
            .map(|letter| letter.summary_json(&processor))
            .collect(),
        processor,
        next_cursor,
    }))
}

/// One dead letter in full: the page's fields, its key and its decoded value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct DeadLetterShown(pub Value);

/// One of the caller's dead letters in full (any status), phone numbers redacted.
#[utoipa::path(get, path = "/v1/dead-letters/{processor}/{id}", tag = "dead letters",
    params(
        ("processor" = String, Path, description = "The processor"),
        ("id" = String, Path, description = "The dead letter's id, `<partition>-<offset>`"),
    ),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterShown),
        (status = 404, description = "No such processor, or no such dead letter in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn show_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    Path((processor, id)): Path<(String, String)>,
) -> Result<axum::Json<DeadLetterShown>, ApiError> {
    let served = state.inner.dead_letters.served(&processor)?;
    let id: LetterId = id.parse().map_err(|_| ApiError::NotFound("dead letter"))?;
    let retry_after = state.inner.retry_after_secs;
    let mut snapshot = served.snapshot(FRESH, retry_after).await?;
    if snapshot.get(id).is_none() {
        // Dead-lettered since the last snapshot, perhaps.
        snapshot = served.snapshot(Duration::ZERO, retry_after).await?;
    }
    snapshot
        .get(id)
        .filter(|letter| visible(letter, &caller))
        .map(|letter| axum::Json(DeadLetterShown(letter.full_json(&processor))))
        .ok_or(ApiError::NotFound("dead letter"))
}

/// Which dead letters to re-drive or discard: `ids`, or every pending one matching `filter`
/// (`{}`: all of the caller's pending ones).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Dead-letter ids (`<partition>-<offset>`), 1 to 1,000.
    pub ids: Option<Vec<String>>,
    pub filter: Option<FilterBody>,
}

/// What a re-drive or a discard did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeOutcome {
    /// `redrive` or `discard`.
    pub action: String,
    /// The dead letters re-driven (or discarded) now.
    pub done: Vec<String>,
    /// Asked for by id but no longer pending, with what had become of them.
    pub skipped: Vec<SkippedLetter>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SkippedLetter {
    pub id: String,
    /// `redriven` or `discarded`.
    pub status: String,
}

impl From<Outcome> for ChangeOutcome {
    fn from(outcome: Outcome) -> Self {
        ChangeOutcome {
            action: match outcome.action {
                formstream_runtime::redrive::Action::Redrive => "redrive",
                formstream_runtime::redrive::Action::Discard => "discard",
            }
            .to_owned(),
            done: outcome.done.iter().map(ToString::to_string).collect(),
            skipped: outcome
                .skipped
                .iter()
                .map(|s| SkippedLetter {
                    id: s.id.to_string(),
                    status: s.status.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

impl ChangeBody {
    fn selection(&self, caller: &Caller) -> Result<Selection, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let selection = match (&self.ids, &self.filter) {
            (Some(ids), None) => {
                if ids.is_empty() || ids.len() > MAX_IDS {
                    problems.push(FieldProblem::new(
                        "/ids",
                        "invalid_ids",
                        format!("ids holds 1 to {MAX_IDS} dead-letter ids"),
                    ));
                }
                let mut parsed = Vec::with_capacity(ids.len());
                for (index, id) in ids.iter().enumerate() {
                    match id.parse::<LetterId>() {
                        Ok(id) => parsed.push(id),
                        Err(error) => {
                            problems.push(FieldProblem::new(
                                format!("/ids/{index}"),
                                "invalid_id",
                                error,
                            ));
                        }
                    }
                }
                Selection::Ids(parsed)
            }
            (None, Some(filter)) => {
                Selection::Matching(checked_filter(filter, caller, "/filter", &mut problems))
            }
            _ => {
                problems.push(FieldProblem::new(
                    "",
                    "ids_or_filter",
                    "give either ids or filter (filter {} means all of your pending dead letters)",
                ));
                Selection::Ids(Vec::new())
            }
        };
        if problems.is_empty() {
            Ok(selection)
        } else {
            Err(problems)
        }
    }
}

/// Hands the selected pending dead letters back to their processor, each at most once ever.
#[utoipa::path(post, path = "/v1/dead-letters/{processor}/redrive", tag = "dead letters",
    params(("processor" = String, Path, description = "The processor")),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "What was re-driven, and what was skipped", body = ChangeOutcome),
        (status = 404, description = "No such processor, or an id not in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Other operators kept changing these dead letters; nothing was done, try again", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the body, at its pointer", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    Path(processor): Path<String>,
    ApiJson(body): ApiJson<ChangeBody>,
) -> Result<axum::Json<ChangeOutcome>, ApiError> {
    change(&state, &caller, &processor, &body, true).await
}

/// Drops the selected pending dead letters: they leave the list and are never re-driven.
#[utoipa::path(post, path = "/v1/dead-letters/{processor}/discard", tag = "dead letters",
    params(("processor" = String, Path, description = "The processor")),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "What was discarded, and what was skipped", body = ChangeOutcome),
        (status = 404, description = "No such processor, or an id not in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Other operators kept changing these dead letters; nothing was done, try again", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the body, at its pointer", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Path(processor): Path<String>,
    ApiJson(body): ApiJson<ChangeBody>,
) -> Result<axum::Json<ChangeOutcome>, ApiError> {
    change(&state, &caller, &processor, &body, false).await
}

async fn change(
    state: &AppState,
    caller: &Caller,
    processor: &str,
    body: &ChangeBody,
    redrive: bool,
) -> Result<axum::Json<ChangeOutcome>, ApiError> {
    let served = state.inner.dead_letters.served(processor)?;
    let selection = body.selection(caller).map_err(ApiError::Invalid)?;
    let scope = Scope::Organisation(caller.organisation.to_string());
    let by = format!("{}/{}", caller.organisation, caller.key_name);
    let done = if redrive {
        served.admin.redrive(&scope, &selection, &by).await
    } else {
        served.admin.discard(&scope, &selection, &by).await
    };
    served.forget().await;
    match done {
        Ok(outcome) => Ok(axum::Json(outcome.into())),
        Err(AdminError::NotFound(_)) => Err(ApiError::NotFound("dead letter")),
        // The processor has never dead-lettered anything.
        Err(AdminError::Read(ReadError::NoTopic(_))) => match selection {
            Selection::Ids(_) => Err(ApiError::NotFound("dead letter")),
            Selection::Matching(_) => Ok(axum::Json(ChangeOutcome {
                action: if redrive { "redrive" } else { "discard" }.to_owned(),
                done: Vec::new(),
                skipped: Vec::new(),
            })),
        },
        Err(error @ (AdminError::Busy(_) | AdminError::NotRedrivable { .. })) => {
            Err(ApiError::Conflict(error.to_string()))
        }
        Err(error) => Err(unavailable(error, state.inner.retry_after_secs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            organisation: "acme".into(),
            key_name: "test".into(),
        }
    }

    fn pointers(problems: &[FieldProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.pointer.as_str()).collect()
    }

    #[test]
    fn every_problem_of_a_query_is_at_its_parameter() {
        let query = DeadLettersQuery {
            status: Some("closed".into()),
            kind: Some("nope".into()),
            since: Some("yesterday".into()),
            limit: Some("0".into()),
            after: Some("x".into()),
            ..DeadLettersQuery::default()
        };
        let problems = query.check(&caller()).err().expect("invalid");
        assert_eq!(
            pointers(&problems),
            ["/status", "/kind", "/since", "/limit", "/after"]
        );
        let range = DeadLettersQuery {
            since: Some("2026-01-02T00:00:00Z".into()),
            until: Some("2026-01-01T00:00:00Z".into()),
            ..DeadLettersQuery::default()
        };
        let problems = range.check(&caller()).err().expect("empty range");
        assert_eq!(pointers(&problems), ["/until"]);
    }

    #[test]
    fn a_filter_is_always_the_callers_organisation() {
        let Ok(listing) = DeadLettersQuery::default().check(&caller()) else {
            panic!("the default query is valid");
        };
        assert_eq!(listing.filter.organisation.as_deref(), Some("acme"));
        assert_eq!(listing.status, Some(Status::Pending));
        let body = ChangeBody {
            ids: None,
            filter: Some(FilterBody::default()),
        };
        match body.selection(&caller()) {
            Ok(Selection::Matching(filter)) => {
                assert_eq!(filter.organisation.as_deref(), Some("acme"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_change_names_ids_or_a_filter() {
        let problems = |ids: Option<Vec<&str>>, filter: Option<FilterBody>| {
            let body = ChangeBody {
                ids: ids.map(|ids| ids.into_iter().map(Into::into).collect()),
                filter,
            };
            body.selection(&caller()).err().unwrap_or_default()
        };
        assert!(problems(Some(vec!["0-1", "2-17"]), None).is_empty());
        assert_eq!(
            pointers(&problems(Some(vec!["0-1", "banana"]), None)),
            ["/ids/1"]
        );
        assert_eq!(pointers(&problems(Some(vec![]), None)), ["/ids"]);
        assert_eq!(pointers(&problems(None, None)), [""]);
        assert_eq!(
            pointers(&problems(Some(vec!["0-1"]), Some(FilterBody::default()))),
            [""]
        );
        let bad = FilterBody {
            until: Some("soon".into()),
            ..FilterBody::default()
        };
        assert_eq!(pointers(&problems(None, Some(bad))), ["/filter/until"]);
    }

    #[test]
    fn cursors_read_back() {
        assert_eq!(
            parse_cursor("1700000000000_2-17"),
            Some((
                1_700_000_000_000,
                LetterId {
                    partition: 2,
                    offset: 17
                }
            ))
        );
        assert_eq!(parse_cursor("2-17"), None);
        assert_eq!(parse_cursor("x_2-17"), None);
    }
}
