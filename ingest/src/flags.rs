//! The flags view: the responses that the validate processor ever flagged, with where each stands
//! now (open or resolved), as read from the `response-flags` topic. It serves
//! `GET /v1/forms/{form_id}/flags`.
//!
//! Invariant: a response is (organisation, form id, response id): another organisation's form of
//! the same id, or its response of the same id, is another entry, never shown to or changed by
//! the first. A response's state only moves forward. An outcome for a revision lower than or equal
//! to the highest one held changes nothing, so redelivery, replay and reordering never reopen a
//! resolved flag and a duplicate is harmless; and only committed outcomes are read
//! (`isolation.level=read_committed`), so an outcome whose transaction aborted never shows.
//!
//! Memory bound: one entry per response that was ever flagged, whether open or resolved (the API
//! lists both), holding the violations of its latest flagged revision only. A response whose first
//! outcome is clean costs nothing; the price is that if a flagged outcome for a lower revision ever
//! arrived after such a clean one (it cannot in order: outcomes are keyed, hence ordered, by form),
//! it would show as open. Nothing is evicted: the view grows with the flagged responses kept on the
//! topic (its retention), a few hundred bytes each, so a million flagged responses cost a few
//! hundred megabytes in every gateway instance.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::follow::{Followed, TopicFollower};
use formstream_core::problem::FieldProblem;
use formstream_core::time::rfc3339;
use formstream_schemas::{Codec, FlagStatus, ResponseFlag, Violation};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::paging;

/// Whether a flag still needs a correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The highest revision seen was flagged.
    Open,
    /// A clean revision came after the latest flagged one.
    Resolved,
}

/// Where a flag sits in a listing: oldest flag first, ties broken by response id, so that pages are
/// deterministic and a cursor names a position that survives other flags coming and going.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    flagged_at: i64,
    response_id: Arc<str>,
}

impl Cursor {
    /// Parses what [`Cursor::encode`] wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (millis, response_id) = text.split_once('.')?;
        if response_id.is_empty() {
            return None;
        }
        Some(Cursor {
            flagged_at: millis.parse().ok()?,
            response_id: response_id.into(),
        })
    }

    /// Opaque to clients: `<flagged_at millis>.<response id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.flagged_at, self.response_id)
    }
}

/// How a flag was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The first clean revision after the flagged one.
    pub revision: i32,
    /// When that revision was evaluated.
    pub at: i64,
}

/// One flagged response, as the view holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagState {
    pub response_id: Arc<str>,
    /// Kept so that a listing can never show another organisation's outcome, even if a record
    /// claimed a form id it does not own.
    pub organisation: String,
    pub collector_id: String,
    /// The highest revision seen: outcomes at or below it are ignored.
    pub revision: i32,
    /// The latest flagged revision, whose violations are kept.
    pub flagged_revision: i32,
    pub violations: Vec<Violation>,
    /// When the latest flagged revision was evaluated; the listing order.
    pub flagged_at: i64,
    /// Set once a clean revision follows the flagged one; cleared if a later revision is flagged.
    pub resolution: Option<Resolution>,
}

impl FlagState {
    pub fn status(&self) -> Status {
        if self.resolution.is_some() {
            Status::Resolved
        } else {
            Status::Open
        }
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            flagged_at: self.flagged_at,
            response_id: self.response_id.clone(),
        }
    }
}

/// What applying one outcome did; for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A first flag for the response.
    Opened,
    /// A later revision is flagged again (a resolved flag reopens).
    Reflagged,
    /// A clean revision resolved an open flag.
    Resolved,
    /// A clean revision of an already resolved flag: only the revision moves.
    Advanced,
    /// A clean outcome for a response never flagged: nothing to keep.
    NeverFlagged,
    /// A revision at or below the one held (redelivery, replay): ignored.
    Stale,
}

/// The flags of one form, indexed for listing by status without scanning the other status.
#[derive(Default)]
struct FormFlags {
    responses: HashMap<Arc<str>, FlagState>,
    open: BTreeSet<Cursor>,
    resolved: BTreeSet<Cursor>,
}

impl FormFlags {
    fn index(&mut self, status: Status) -> &mut BTreeSet<Cursor> {
        match status {
            Status::Open => &mut self.open,
            Status::Resolved => &mut self.resolved,
        }
    }
}

#[derive(Default)]
struct Flags {
    /// Organisation -> form id -> its flags: nested, so that a look-up borrows the flag's strings.
    forms: HashMap<String, HashMap<String, FormFlags>>,
    responses: usize,
    open: usize,
}

/// Every flagged response the gateway knows, by form, as read from the flags topic.
#[derive(Default)]
pub struct FlagsView {
    flags: RwLock<Flags>,
    ready: AtomicBool,
}

/// One page of a form's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<FlagState>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl FlagsView {
    /// Applies one outcome; see the module header for the rules.
    pub fn apply(&self, flag: &ResponseFlag) -> Applied {
        // The lock guards plain maps that every step leaves consistent, so a poisoned lock (a panic
        // elsewhere while holding it) still holds a usable view.
        let mut flags = self.flags.write().unwrap_or_else(PoisonError::into_inner);
        let flags = &mut *flags;
        let held = flags
            .forms
            .get(&flag.organisation)
            .and_then(|own| own.get(&flag.form_id))
            .and_then(|form| form.responses.get(flag.response_id.as_str()))
            .map(|held| (held.revision, held.status(), held.cursor()));
        let Some((revision, status, cursor)) = held else {
            if flag.status == FlagStatus::Clean {
                return Applied::NeverFlagged;
            }
            let state = FlagState {
                response_id: flag.response_id.as_str().into(),
                organisation: flag.organisation.clone(),
                collector_id: flag.collector_id.clone(),
                revision: flag.revision,
                flagged_revision: flag.revision,
                violations: flag.violations.clone(),
                flagged_at: flag.evaluated_at,
                resolution: None,
            };
            let form = flags
                .forms
                .entry(flag.organisation.clone())
                .or_default()
                .entry(flag.form_id.clone())
                .or_default();
            form.open.insert(state.cursor());
            form.responses.insert(state.response_id.clone(), state);
            flags.responses += 1;
            flags.open += 1;
            return Applied::Opened;
        };
        if flag.revision <= revision {
            return Applied::Stale;
        }
        let Some(form) = flags
            .forms
            .get_mut(&flag.organisation)
            .and_then(|own| own.get_mut(&flag.form_id))
        else {
            return Applied::Stale;
        };
        form.index(status).remove(&cursor);
        let Some(state) = form.responses.get_mut(flag.response_id.as_str()) else {
            return Applied::Stale;
        };
        state.revision = flag.revision;
        state.collector_id.clone_from(&flag.collector_id);
        let applied = match (flag.status, status) {
            (FlagStatus::Flagged, _) => {
                state.flagged_revision = flag.revision;
                state.violations.clone_from(&flag.violations);
                state.flagged_at = flag.evaluated_at;
                state.resolution = None;
                Applied::Reflagged
            }
            (FlagStatus::Clean, Status::Open) => {
                state.resolution = Some(Resolution {
                    revision: flag.revision,
                    at: flag.evaluated_at,
                });
                Applied::Resolved
            }
            (FlagStatus::Clean, Status::Resolved) => Applied::Advanced,
        };
        let (now, cursor) = (state.status(), state.cursor());
        form.index(now).insert(cursor);
        match (status, now) {
            (Status::Open, Status::Resolved) => flags.open -= 1,
            (Status::Resolved, Status::Open) => flags.open += 1,
            _ => {}
        }
        applied
    }

    /// Up to `limit` flags of `form_id` with `status`, that belong to `organisation`, after `after`.
    pub fn page(
        &self,
        form_id: &str,
        organisation: &str,
        status: Status,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Page {
        let flags = self.flags.read().unwrap_or_else(PoisonError::into_inner);
        let Some(form) = flags
            .forms
            .get(organisation)
            .and_then(|own| own.get(form_id))
        else {
            return Page {
                items: Vec::new(),
                next: None,
            };
        };
        let index = match status {
            Status::Open => &form.open,
            Status::Resolved => &form.resolved,
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let matching = index
            .range((start, Bound::Unbounded))
            .filter_map(|cursor| form.responses.get(&cursor.response_id))
            .cloned();
        let (items, next) = paging::page(matching, limit, FlagState::cursor);
        Page { items, next }
    }

    /// Responses held (ever flagged).
    pub fn len(&self) -> usize {
        self.flags
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .responses
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Responses whose flag is open.
    pub fn open(&self) -> usize {
        self.flags
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// The query of `GET /v1/forms/{form_id}/flags`, as sent: strings, so that every problem is reported
/// as a 422 with its parameter rather than as a bare deserialisation error.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlagsQuery {
    /// `open` (the default) or `resolved`.
    pub status: Option<String>,
    /// Flags per page, 1 to 500 (default 50).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

/// A checked [`FlagsQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub status: Status,
    pub limit: usize,
    pub after: Option<Cursor>,
}

impl FlagsQuery {
    /// Checks every parameter and reports every problem (pointers name the query parameters).
    pub fn check(&self) -> Result<Listing, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let status = match self.status.as_deref() {
            None | Some("open") => Status::Open,
            Some("resolved") => Status::Resolved,
            Some(other) => {
                problems.push(FieldProblem::new(
                    "/status",
                    "invalid_status",
                    format!("status is open or resolved, not {other:?}"),
                ));
                Status::Open
            }
        };
        let limit = paging::limit(self.limit.as_deref(), &mut problems);
        let after = paging::after(self.after.as_deref(), Cursor::parse, &mut problems);
        if problems.is_empty() {
            Ok(Listing {
                status,
                limit,
                after,
            })
        } else {
            Err(problems)
        }
    }
}

/// The answer of `GET /v1/forms/{form_id}/flags`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlagList {
    pub form_id: String,
    pub status: Status,
    pub items: Vec<FlagItem>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One flagged response as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlagItem {
    pub response_id: String,
    /// The highest revision seen.
    pub revision: i32,
    pub status: Status,
    pub collector_id: String,
    /// The revision whose violations are listed.
    pub flagged_revision: i32,
    pub flagged_at: String,
    pub violations: Vec<ViolationItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by_revision: Option<i32>,
}

/// A violated rule as the API shows it: its own type, so that a field added to the Avro record
/// does not change the API unannounced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ViolationItem {
    pub rule_id: String,
    pub message: String,
    pub question_keys: Vec<String>,
    /// Set when the rule could not be evaluated on this response.
    pub error: Option<String>,
}

impl FlagList {
    pub fn of(form_id: &str, status: Status, page: Page) -> Self {
        FlagList {
            form_id: form_id.to_owned(),
            status,
            items: page.items.iter().map(FlagItem::of).collect(),
            next_cursor: page.next.as_ref().map(Cursor::encode),
        }
    }
}

impl FlagItem {
    fn of(state: &FlagState) -> Self {
        FlagItem {
            response_id: state.response_id.to_string(),
            revision: state.revision,
            status: state.status(),
            collector_id: state.collector_id.clone(),
            flagged_revision: state.flagged_revision,
            flagged_at: rfc3339(state.flagged_at),
            violations: state
                .violations
                .iter()
                .map(|v| ViolationItem {
                    rule_id: v.rule_id.clone(),
                    message: v.message.clone(),
                    question_keys: v.question_keys.clone(),
                    error: v.error.clone(),
                })
                .collect(),
            resolved_at: state.resolution.map(|r| rfc3339(r.at)),
            resolved_by_revision: state.resolution.map(|r| r.revision),
        }
    }
}

/// Reads the whole flags topic (committed records only) into `view`, marks it ready once caught up,
/// then follows new outcomes until `shutdown` changes.
pub async fn follow_flags_topic(
    kafka: KafkaArgs,
    topic: String,
    codec: Codec,
    view: Arc<FlagsView>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    // The validate processor publishes in transactions: an aborted outcome must never show.
    let settings = [("isolation.level", "read_committed")];
    let Some(mut follower) =
        TopicFollower::start(&kafka, &topic, "flags", &settings, &mut shutdown).await?
    else {
        return Ok(());
    };
    while let Some(followed) = follower.next(&mut shutdown).await {
        match followed {
            Followed::Record(message) => {
                let Some(payload) = message.payload() else {
                    // Nothing writes tombstones here; one carries no outcome.
                    continue;
                };
                let decoded = loop {
                    match codec.decode::<ResponseFlag>(payload).await {
                        // The schema registry is unreachable: skipping would lose the outcome
                        // for good, so wait for it (the view stays as it is meanwhile).
                        Err(error) if error.is_retriable() => {
                            tracing::warn!(%topic, %error, "Schema registry unavailable; retrying.");
                            tokio::select! {
                                _ = shutdown.changed() => return Ok(()),
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                        other => break other,
                    }
                };
                match decoded {
                    Ok(flag) => {
                        let applied = view.apply(&flag);
                        tracing::debug!(
                            %topic,
                            response_id = %flag.response_id,
                            revision = flag.revision,
                            ?applied,
                            "Flag outcome applied."
                        );
                    }
                    Err(error) => {
                        metrics.flags_view_decode_error(&topic);
                        tracing::error!(
                            %topic,
                            partition = message.partition(),
                            offset = message.offset(),
                            %error,
                            "Skipped a flags record that could not be decoded."
                        );
                    }
                }
            }
            Followed::CaughtUp => {
                view.set_ready();
                tracing::info!(%topic, flagged = view.len(), open = view.open(), "Flags view caught up; ready.");
            }
        }
        metrics.flags_view(view.is_ready(), view.len(), view.open());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{DEFAULT_LIMIT, MAX_LIMIT};

    fn outcome(response: &str, revision: i32, status: FlagStatus, at: i64) -> ResponseFlag {
        ResponseFlag {
            response_id: response.into(),
            form_id: "f".into(),
            form_version: 1,
            organisation: "acme".into(),
            revision,
            collector_id: format!("collector-{revision}"),
            collector_phone: None,
            status,
            violations: match status {
                FlagStatus::Clean => Vec::new(),
                FlagStatus::Flagged => vec![Violation {
                    rule_id: format!("rule-{revision}"),
                    message: "savings exceed income".into(),
                    question_keys: vec!["savings".into(), "income".into()],
                    error: None,
                }],
            },
            evaluated_at: at,
        }
    }

    fn flagged(response: &str, revision: i32, at: i64) -> ResponseFlag {
        outcome(response, revision, FlagStatus::Flagged, at)
    }

    fn clean(response: &str, revision: i32, at: i64) -> ResponseFlag {
        outcome(response, revision, FlagStatus::Clean, at)
    }

    fn all(view: &FlagsView, status: Status) -> Vec<FlagState> {
        view.page("f", "acme", status, None, MAX_LIMIT).items
    }

    #[test]
    fn another_organisations_form_and_response_of_the_same_ids_are_other_entries() {
        let view = FlagsView::default();
        assert_eq!(view.apply(&flagged("r", 0, 10)), Applied::Opened);
        // globex's form "f" and its response "r": flagged at a higher revision, then cleaned.
        let globex = |flag: ResponseFlag| ResponseFlag {
            organisation: "globex".into(),
            ..flag
        };
        assert_eq!(view.apply(&globex(flagged("r", 3, 20))), Applied::Opened);
        assert_eq!(view.apply(&globex(clean("r", 4, 30))), Applied::Resolved);
        // acme's flag is as it was: open at revision 0, and acme sees only its own.
        let open = all(&view, Status::Open);
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].revision, open[0].organisation.as_str()),
            (0, "acme")
        );
        assert!(all(&view, Status::Resolved).is_empty());
        let theirs = view.page("f", "globex", Status::Resolved, None, MAX_LIMIT);
        assert_eq!(theirs.items.len(), 1);
        assert_eq!(view.len(), 2);
    }

    #[test]
    fn a_clean_first_outcome_costs_nothing() {
        let view = FlagsView::default();
        assert_eq!(view.apply(&clean("r", 0, 1)), Applied::NeverFlagged);
        assert!(view.is_empty());
        assert!(all(&view, Status::Open).is_empty());
    }

    #[test]
    fn a_flag_opens_then_a_later_clean_revision_resolves_it() {
        let view = FlagsView::default();
        assert_eq!(view.apply(&flagged("r", 0, 10)), Applied::Opened);
        let open = all(&view, Status::Open);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].flagged_revision, 0);
        assert_eq!(open[0].violations[0].rule_id, "rule-0");
        assert_eq!(view.open(), 1);

        assert_eq!(view.apply(&clean("r", 1, 20)), Applied::Resolved);
        assert!(all(&view, Status::Open).is_empty());
        let resolved = all(&view, Status::Resolved);
        assert_eq!(resolved.len(), 1);
        let state = &resolved[0];
        assert_eq!(state.revision, 1);
        assert_eq!(state.flagged_revision, 0);
        assert_eq!(
            state.resolution,
            Some(Resolution {
                revision: 1,
                at: 20
            })
        );
        assert_eq!(
            state.violations[0].rule_id, "rule-0",
            "the reasons are kept"
        );
        assert_eq!((view.len(), view.open()), (1, 0));

        // A later clean revision moves the revision, not the resolution.
        assert_eq!(view.apply(&clean("r", 2, 30)), Applied::Advanced);
        let state = &all(&view, Status::Resolved)[0];
        assert_eq!(state.revision, 2);
        assert_eq!(state.resolution.map(|r| r.revision), Some(1));
    }

    #[test]
    fn redelivered_or_reordered_older_revisions_never_reopen() {
        let view = FlagsView::default();
        view.apply(&flagged("r", 0, 10));
        view.apply(&clean("r", 1, 20));
        let before = all(&view, Status::Resolved);
        assert_eq!(view.apply(&flagged("r", 0, 10)), Applied::Stale);
        assert_eq!(view.apply(&clean("r", 1, 20)), Applied::Stale);
        assert_eq!(view.apply(&flagged("r", 1, 25)), Applied::Stale);
        assert_eq!(all(&view, Status::Resolved), before);
        assert!(all(&view, Status::Open).is_empty());
        assert_eq!((view.len(), view.open()), (1, 0));
    }

    #[test]
    fn a_duplicate_flag_is_idempotent() {
        let view = FlagsView::default();
        view.apply(&flagged("r", 0, 10));
        let before = all(&view, Status::Open);
        assert_eq!(view.apply(&flagged("r", 0, 10)), Applied::Stale);
        assert_eq!(all(&view, Status::Open), before);
        assert_eq!((view.len(), view.open()), (1, 1));
    }

    #[test]
    fn a_later_flagged_revision_replaces_the_reasons_and_reopens() {
        let view = FlagsView::default();
        view.apply(&flagged("r", 0, 10));
        assert_eq!(view.apply(&flagged("r", 1, 20)), Applied::Reflagged);
        let open = all(&view, Status::Open);
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].flagged_revision, open[0].flagged_at), (1, 20));
        assert_eq!(open[0].violations[0].rule_id, "rule-1");

        view.apply(&clean("r", 2, 30));
        assert_eq!(view.apply(&flagged("r", 3, 40)), Applied::Reflagged);
        let open = all(&view, Status::Open);
        assert_eq!((open[0].flagged_revision, open[0].resolution), (3, None));
        assert!(all(&view, Status::Resolved).is_empty());
        assert_eq!((view.len(), view.open()), (1, 1));
    }

    #[test]
    fn pages_are_oldest_flag_first_and_cursors_resume_exactly() {
        let view = FlagsView::default();
        // Two share a time: the response id breaks the tie.
        for (response, at) in [("c", 30), ("a", 10), ("e", 20), ("b", 20), ("d", 40)] {
            view.apply(&flagged(response, 0, at));
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = view.page("f", "acme", Status::Open, after.as_ref(), 2);
            seen.extend(page.items.iter().map(|s| s.response_id.to_string()));
            match page.next {
                None => break,
                Some(next) => {
                    let encoded = next.encode();
                    after = Some(Cursor::parse(&encoded).expect("a cursor parses back"));
                }
            }
        }
        assert_eq!(seen, ["a", "b", "e", "c", "d"]);
        assert!(
            view.page("f", "globex", Status::Open, None, 10)
                .items
                .is_empty()
        );
        assert!(
            view.page("g", "acme", Status::Open, None, 10)
                .items
                .is_empty()
        );
    }

    #[test]
    fn queries_are_checked_and_every_problem_reported() {
        let query = |status: Option<&str>, limit: Option<&str>, after: Option<&str>| FlagsQuery {
            status: status.map(Into::into),
            limit: limit.map(Into::into),
            after: after.map(Into::into),
        };
        assert_eq!(
            query(None, None, None).check(),
            Ok(Listing {
                status: Status::Open,
                limit: DEFAULT_LIMIT,
                after: None
            })
        );
        let listing = query(Some("resolved"), Some("7"), Some("-5.r-1.x"))
            .check()
            .expect("valid");
        assert_eq!((listing.status, listing.limit), (Status::Resolved, 7));
        assert_eq!(
            listing.after.map(|c| c.encode()).as_deref(),
            Some("-5.r-1.x")
        );
        let problems = query(Some("closed"), Some("0"), Some("nonsense"))
            .check()
            .expect_err("invalid");
        let pointers: Vec<_> = problems.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(pointers, ["/status", "/limit", "/after"]);
        assert!(query(None, Some("501"), None).check().is_err());
        assert!(query(None, None, Some("12.")).check().is_err());
    }
}
