//! Batches rows per form (per (organisation, form id): two organisations' `household` forms are
//! two forms, written to two targets), bounded by size (`--sheets-max-request-bytes`) and time
//! (`--sheets-linger`), and decides which form is written next.
//!
//! Why an internal batcher rather than the runtime's `handle_batch`: the quota is per call, and a
//! runtime batch mixes forms, so it would cost one call per form per batch whatever its size.
//! Here each record's `handle` waits on its form's queue; while a form waits for the quota, its
//! queue keeps growing, so a busy form's rows leave in a few large appends (one call per ~2 MB)
//! and a quiet form's in one small one. The runtime's `--max-in-flight` bounds how many rows wait.
//!
//! Which form next, and how much of it: every pick is one request's worth of rows, so that it
//! costs one write of the quota and no form, however much it has waiting, holds the quota for
//! more than one write at a time. Each row is measured exactly as the sink will send it, both as
//! bare values (the values API's `append`) and as `CellData` (in a `spreadsheets.batchUpdate`).
//! - A form with a full request of new rows waiting ("full"; measured as values) and a form whose
//!   oldest row has waited `--sheets-max-wait` ("overdue", the oldest first) take turns when both
//!   exist: full writes carry the most rows per write of the quota, so that a busy form never falls
//!   behind while the quota goes to small writes, and overdue ones get at least every other write,
//!   so that no organisation's busy forms can starve another's quiet ones.
//! - A full pick takes the form's oldest new rows (revision 0) up to one values request, leaving its
//!   corrections (later revisions) in the queue: appends alone go as one values `append`, where a
//!   correction in the same write would need a second call. Every other pick takes the oldest rows,
//!   corrections included, up to one `spreadsheets.batchUpdate` (measured as `CellData`).
//! - A form whose spreadsheet the exporter must create gets it created, alone, in the turns full
//!   requests leave, taking turns with overdue forms' rows: every form needs that write once, and made
//!   early it lets the form's rows later go in writes of their own (otherwise a quiet form's first
//!   visit costs the create and a small write of rows, and its rows keep coming, so that small
//!   write never spares the last one). The rows wait their turn as any others.
//! - Else a full form, else an overdue one, else the form with the most bytes among those whose
//!   oldest row has lingered `--sheets-linger`.
//! - The first pick after start does not linger and takes the form with the fewest bytes waiting:
//!   a restarted exporter's first effect comes at once, from the form likely the quickest to read
//!   back and write.
//!
//! A form is written by one flush at a time, so its rows are never written by two calls at once,
//! and its rows leave in the order they came.
//!
//! Invariant: every submitted row gets exactly one answer, the outcome of the write that carried
//! it; a row is never answered `Ok` before its write succeeded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_core::identity::FormKey;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::api::{ApiError, row_data_bytes};
use crate::layout::{Layout, row_bytes};
use crate::sink::{Pending, Sink};

/// Forms written at once. The rate limiter serialises the calls themselves; two flushes let one
/// form's read-back overlap another's append, and few enough that most writes carry the fullest
/// batch.
const CONCURRENT_FLUSHES: usize = 2;

struct Waiting {
    pending: Pending,
    /// The row as `CellData` in a `spreadsheets.batchUpdate`.
    bytes: usize,
    /// The row as bare values in a values `append`; `None` for a correction (revision above 0).
    new_bytes: Option<usize>,
    since: Instant,
    /// The records this row answers: its own, and those of the other revisions of its response
    /// that came while it waited (the sheet ends at the highest of them either way).
    replies: Vec<oneshot::Sender<Result<(), ApiError>>>,
}

#[derive(Default)]
struct Queue {
    /// The waiting rows, by arrival.
    rows: BTreeMap<u64, Waiting>,
    /// Where each waiting response is in `rows`: one row per response.
    ids: HashMap<String, u64>,
    arrivals: u64,
    bytes: usize,
    /// The new rows' bytes as values.
    new_bytes: usize,
    busy: bool,
}

impl Queue {
    /// Adds a revision of a response (`bytes` as `CellData`, `values` as bare values). A response
    /// already waiting keeps its place and its age and answers this record too, holding the
    /// higher of the two revisions: a correction that comes while its first revision waits for
    /// the quota goes in the same write, instead of a write of its own after it.
    fn add(
        &mut self,
        pending: Pending,
        bytes: usize,
        values: usize,
        now: Instant,
        reply: oneshot::Sender<Result<(), ApiError>>,
    ) {
        let held = self
            .ids
            .get(pending.response.response_id.as_str())
            .and_then(|arrival| self.rows.get_mut(arrival));
        if let Some(held) = held {
            if pending.response.revision > held.pending.response.revision {
                // A row that was new is still new: it has not been written.
                let new_bytes = held.new_bytes.map(|_| values);
                self.bytes = self.bytes - held.bytes + bytes;
                self.new_bytes =
                    self.new_bytes - held.new_bytes.unwrap_or(0) + new_bytes.unwrap_or(0);
                held.pending = pending;
                held.bytes = bytes;
                held.new_bytes = new_bytes;
            }
            held.replies.push(reply);
            return;
        }
        let new_bytes = (pending.response.revision == 0).then_some(values);
        self.bytes += bytes;
        self.new_bytes += new_bytes.unwrap_or(0);
        self.arrivals += 1;
        self.ids
            .insert(pending.response.response_id.clone(), self.arrivals);
        self.rows.insert(
            self.arrivals,
            Waiting {
                pending,
                bytes,
                new_bytes,
                since: now,
                replies: vec![reply],
            },
        );
    }

    /// Takes the rows at `arrivals` out of the queue.
    fn take(&mut self, arrivals: &[u64]) -> Vec<Waiting> {
        let mut taken = Vec::with_capacity(arrivals.len());
        for arrival in arrivals {
            if let Some(waiting) = self.rows.remove(arrival) {
                self.ids
                    .remove(waiting.pending.response.response_id.as_str());
                self.bytes -= waiting.bytes;
                self.new_bytes -= waiting.new_bytes.unwrap_or(0);
                taken.push(waiting);
            }
        }
        taken
    }
}

/// The batcher's settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub linger: Duration,
    pub max_wait: Duration,
    pub max_bytes: usize,
}

/// What the batcher does next.
enum Pick {
    /// Write these rows of the form (one request's worth).
    Rows(FormKey, Vec<Waiting>),
    /// Create the form's first spreadsheet, writing none of its rows (one of them given for the
    /// form's definition and partition assignment).
    Create(FormKey, Pending),
}

pub struct Batcher {
    queues: Mutex<HashMap<FormKey, Queue>>,
    /// No flush picked yet since start: the first one goes without lingering, so that a
    /// restarted exporter's first row is written as soon as it can be (one small write, once).
    first: AtomicBool,
    /// The last pick was a full form's: an overdue form goes next, if any waits.
    last_full: AtomicBool,
    /// The last pick that was not a full form's was a create: an overdue form goes next, if any.
    last_create: AtomicBool,
    /// Forms known to have their spreadsheet (or whose creation is left to their writes).
    with_spreadsheet: Mutex<HashSet<FormKey>>,
    /// Each form version's layout (by its number of versions), for measuring rows.
    layouts: Mutex<HashMap<(FormKey, usize), Arc<Layout>>>,
    wake: Notify,
    settings: BatchSettings,
}

impl Batcher {
    pub fn new(settings: BatchSettings) -> Arc<Self> {
        Arc::new(Batcher {
            queues: Mutex::new(HashMap::new()),
            first: AtomicBool::new(true),
            last_full: AtomicBool::new(false),
            last_create: AtomicBool::new(false),
            with_spreadsheet: Mutex::new(HashSet::new()),
            layouts: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            settings,
        })
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<FormKey, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one row and waits for the outcome of the write that carries it.
    pub async fn submit(&self, pending: Pending) -> Result<(), ApiError> {
        let (reply, answer) = oneshot::channel();
        let (bytes, values) = measure(&self.layout_of(&pending), &pending);
        self.queues()
            .entry(FormKey::of_response(&pending.response))
            .or_default()
            .add(pending, bytes, values, Instant::now(), reply);
        self.wake.notify_one();
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::Unavailable(
                "the exporter stopped before writing the row".into(),
            ))
        })
    }

    /// The layout of the row's form (as of its versions), built once per form version rather than
    /// once per row: it copies every question's text and choices.
    fn layout_of(&self, pending: &Pending) -> Arc<Layout> {
        let key = (
            FormKey::of_response(&pending.response),
            pending.form.versions.len(),
        );
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        layouts
            .entry(key)
            .or_insert_with(|| Arc::new(Layout::of(&pending.form)))
            .clone()
    }

    /// What to do next (the form marked busy meanwhile); or when to look again.
    /// `needs_spreadsheet` says whether a form's first spreadsheet is still to be created.
    fn pick(
        &self,
        now: Instant,
        needs_spreadsheet: impl Fn(&FormKey, &Pending) -> bool,
    ) -> Result<Pick, Instant> {
        let mut queues = self.queues();
        let s = self.settings;
        let budget = request_budget(s.max_bytes);
        let first = self.first.load(Ordering::Acquire);
        let mut overdue: Option<(&FormKey, Instant)> = None;
        let mut full: Option<(&FormKey, usize)> = None;
        let mut fullest: Option<(&FormKey, usize)> = None;
        let mut smallest: Option<(&FormKey, usize)> = None;
        let mut next = now + Duration::from_secs(1);
        for (form, queue) in queues.iter() {
            let Some(oldest) = queue.rows.first_key_value().map(|(_, w)| w.since) else {
                continue;
            };
            if queue.busy {
                continue;
            }
            if now.duration_since(oldest) >= s.max_wait && overdue.is_none_or(|(_, t)| oldest < t) {
                overdue = Some((form, oldest));
            }
            if queue.new_bytes >= budget && full.is_none_or(|(_, b)| queue.new_bytes > b) {
                full = Some((form, queue.new_bytes));
            }
            if smallest.is_none_or(|(_, b)| queue.bytes < b) {
                smallest = Some((form, queue.bytes));
            }
            if now.duration_since(oldest) >= s.linger
                && fullest.is_none_or(|(_, b)| queue.bytes > b)
            {
                fullest = Some((form, queue.bytes));
            } else if queue.new_bytes < budget {
                next = next.min(oldest + s.linger);
            }
        }
        let last_full = self.last_full.load(Ordering::Acquire);
        let last_create = self.last_create.load(Ordering::Acquire);
        // A full request goes first unless the last pick was one; creates and overdue forms
        // take the other turns, in turn when both wait, so that no organisation's new forms can
        // hold back another's waiting rows.
        if !first && (full.is_none() || last_full) && (overdue.is_none() || !last_create) {
            // The forms still without their spreadsheet, most waiting first; one known to have
            // it is not asked about again.
            let mut waiting: Vec<(Instant, FormKey, Pending)> = queues
                .iter()
                .filter(|(form, queue)| !queue.busy && !self.has_spreadsheet(form))
                .filter_map(|(form, queue)| {
                    let (_, oldest) = queue.rows.first_key_value()?;
                    Some((oldest.since, form.clone(), oldest.pending.clone()))
                })
                .collect();
            waiting.sort_by_key(|(since, _, _)| *since);
            for (_, form, sample) in waiting {
                if needs_spreadsheet(&form, &sample) {
                    if let Some(queue) = queues.get_mut(&form) {
                        queue.busy = true;
                    }
                    self.last_full.store(false, Ordering::Release);
                    self.last_create.store(true, Ordering::Release);
                    return Ok(Pick::Create(form, sample));
                }
                self.spreadsheets_known(&form);
            }
        }
        // Whether the pick is a full form's, for the turns of full and overdue forms.
        let (choice, by_full) = if first {
            (smallest.map(|(f, _)| f), false)
        } else {
            match (full, overdue) {
                (Some((f, _)), Some((o, _))) if last_full => (Some(o), f == o),
                (Some((f, _)), _) => (Some(f), true),
                (None, Some((o, _))) => (Some(o), false),
                (None, None) => (fullest.map(|(f, _)| f), false),
            }
        };
        let Some(form) = choice.cloned() else {
            return Err(next);
        };
        let Some(queue) = queues.get_mut(&form) else {
            return Err(next);
        };
        // One request of the oldest rows (at least one): new rows alone, as values, for a full
        // pick; else any rows, as `CellData`.
        let measure = |w: &Waiting| if by_full { w.new_bytes } else { Some(w.bytes) };
        let mut taken = Vec::new();
        let mut total = 0usize;
        for (arrival, waiting) in &queue.rows {
            let Some(size) = measure(waiting) else {
                continue;
            };
            if total > 0 && total + size > budget {
                break;
            }
            total += size;
            taken.push(*arrival);
        }
        let rows = queue.take(&taken);
        queue.busy = true;
        self.first.store(false, Ordering::Release);
        self.last_full.store(by_full, Ordering::Release);
        if !by_full {
            self.last_create.store(false, Ordering::Release);
        }
        Ok(Pick::Rows(form, rows))
    }

    fn has_spreadsheet(&self, form: &FormKey) -> bool {
        self.with_spreadsheet
            .lock()
            .is_ok_and(|known| known.contains(form))
    }

    /// The form has its spreadsheet (or its creation is left to its writes): never a create pick
    /// again.
    fn spreadsheets_known(&self, form: &FormKey) {
        if let Ok(mut known) = self.with_spreadsheet.lock() {
            known.insert(form.clone());
        }
    }

    fn done(&self, form: &FormKey) {
        let mut queues = self.queues();
        if let Some(queue) = queues.get_mut(form) {
            queue.busy = false;
            if queue.rows.is_empty() {
                queues.remove(form);
            }
        }
        drop(queues);
        self.wake.notify_one();
    }

    /// Writes batches until dropped (the task is aborted with the processor).
    pub async fn run(self: Arc<Self>, sink: Arc<Sink>) {
        let flushes = Arc::new(Semaphore::new(CONCURRENT_FLUSHES));
        loop {
            let Ok(permit) = flushes.clone().acquire_owned().await else {
                return;
            };
            let picked = loop {
                match self.pick(Instant::now(), |form, sample| {
                    sink.needs_spreadsheet(form, &sample.form)
                }) {
                    Ok(picked) => break picked,
                    Err(next) => {
                        tokio::select! {
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep_until(next.into()) => {}
                        }
                    }
                }
            };
            let batcher = self.clone();
            let sink = sink.clone();
            match picked {
                Pick::Create(form, sample) => tokio::spawn(async move {
                    // Done or not, never again from here: a write creates it if need be.
                    if let Err(error) = sink.prepare(&form, &sample).await {
                        tracing::warn!(organisation = %form.organisation, form_id = %form.form_id, %error, "Could not create the form's spreadsheet ahead of its rows; its first write will.");
                    }
                    batcher.spreadsheets_known(&form);
                    batcher.done(&form);
                    drop(permit);
                }),
                Pick::Rows(form, rows) => tokio::spawn(async move {
                    let pending: Vec<Pending> = rows.iter().map(|w| w.pending.clone()).collect();
                    let bytes: usize = rows.iter().map(|w| w.bytes).sum();
                    tracing::debug!(organisation = %form.organisation, form_id = %form.form_id, rows = pending.len(), bytes, "Writing a batch.");
                    let results = sink.write(&form, &pending).await;
                    let mut results = results.into_iter();
                    for waiting in rows {
                        let result = results.next().unwrap_or_else(|| {
                            Err(ApiError::Unavailable("no outcome for the row".into()))
                        });
                        for reply in waiting.replies {
                            let _ = reply.send(result.clone());
                        }
                    }
                    batcher.done(&form);
                    drop(permit);
                }),
            };
        }
    }
}

/// The rows' bytes one pick takes: `--sheets-max-request-bytes` less 2 % for what a request
/// carries besides them (its JSON frame, the header row of a new part, each correction's range,
/// cells of columns a newer version of the form adds), so that a pick is one request, never one
/// and a sliver.
fn request_budget(max_bytes: usize) -> usize {
    max_bytes - max_bytes / 50
}

/// A row's bytes as the sink sends it (its cells in `layout`, its form's): as `CellData`, and as
/// bare values.
fn measure(layout: &Layout, pending: &Pending) -> (usize, usize) {
    let row = layout.row(&pending.response);
    (row_data_bytes(&row), row_bytes(&row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use formstream_schemas::fixtures::{self, text_answer};

    const MAX: usize = 10_000;

    fn batcher() -> Arc<Batcher> {
        Batcher::new(BatchSettings {
            linger: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            max_bytes: MAX,
        })
    }

    /// Queues `rows` new rows of `bytes` each (as values and as `CellData` alike) for `form`,
    /// submitted at `since`.
    fn queue(batcher: &Batcher, form: &str, rows: usize, bytes: usize, since: Instant) {
        queue_revisions(batcher, form, rows, bytes, since, 0);
    }

    /// Queues `rows` rows at `revision` (above 0: corrections) of `bytes` each.
    fn queue_revisions(
        batcher: &Batcher,
        form: &str,
        rows: usize,
        bytes: usize,
        since: Instant,
        revision: i32,
    ) {
        let form_def = Arc::new(fixtures::form("acme", form, Vec::new()));
        let mut queues = batcher.queues();
        let queue = queues.entry(FormKey::new("acme", form)).or_default();
        let first = queue.rows.len();
        for i in first..first + rows {
            let mut response =
                fixtures::response(form, &format!("{form}-{i}"), vec![text_answer("q", "x")]);
            response.revision = revision;
            let pending = Pending {
                response,
                form: form_def.clone(),
                assignment: 1,
            };
            queue.add(pending, bytes, bytes, since, oneshot::channel().0);
        }
    }

    /// Picks, then marks the form written; returns its id and the rows taken.
    fn pick(batcher: &Batcher, now: Instant) -> Option<(String, usize)> {
        let (form, rows) = rows_of(batcher.pick(now, |_, _| false).ok()?);
        batcher.done(&form);
        Some((form.form_id.to_string(), rows.len()))
    }

    fn rows_of(pick: Pick) -> (FormKey, Vec<Waiting>) {
        match pick {
            Pick::Rows(form, rows) => (form, rows),
            Pick::Create(form, _) => panic!("a create of {}", form.form_id),
        }
    }

    #[test]
    fn a_pick_takes_one_request_of_the_oldest_rows_however_much_waits() {
        let b = batcher();
        let t0 = Instant::now();
        b.first.store(false, Ordering::Release);
        // 10 requests' worth waiting: each pick takes one request of it (less the 2 % margin).
        queue(&b, "busy", 1_000, 100, t0);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(pick(&b, now), Some(("busy".into(), 98)));
        assert_eq!(pick(&b, now), Some(("busy".into(), 98)));
        let queues = b.queues();
        let left = &queues[&FormKey::new("acme", "busy")];
        assert_eq!((left.rows.len(), left.bytes), (804, 80_400));
        let oldest = left.rows.first_key_value().map(|(_, w)| w);
        assert_eq!(
            oldest.map(|w| w.pending.response.response_id.as_str()),
            Some("busy-196")
        );
    }

    #[test]
    fn full_and_overdue_forms_take_turns() {
        let b = batcher();
        let t0 = Instant::now();
        b.first.store(false, Ordering::Release);
        let now = t0 + Duration::from_secs(120);
        // Two busy forms with many requests waiting (recent rows), three quiet overdue ones.
        queue(&b, "busy-1", 500, 100, now - Duration::from_secs(2));
        queue(&b, "busy-2", 390, 100, now - Duration::from_secs(2));
        for (k, form) in ["quiet-1", "quiet-2", "quiet-3"].iter().enumerate() {
            queue(&b, form, 3, 100, t0 + Duration::from_secs(k as u64));
        }
        let picks: Vec<String> = (0..8)
            .filter_map(|_| pick(&b, now))
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            picks,
            [
                "busy-1", "quiet-1", "busy-1", "quiet-2", "busy-2", "quiet-3", "busy-1", "busy-2"
            ]
        );
    }

    #[test]
    fn overdue_forms_go_before_lingered_small_ones_and_small_ones_wait_their_linger() {
        let b = batcher();
        let t0 = Instant::now();
        b.first.store(false, Ordering::Release);
        queue(&b, "fresh", 50, 100, t0 + Duration::from_millis(61_500));
        queue(&b, "lingered", 60, 100, t0 + Duration::from_secs(30));
        queue(&b, "overdue", 2, 100, t0);
        let now = t0 + Duration::from_secs(62);
        assert_eq!(pick(&b, now), Some(("overdue".into(), 2)));
        assert_eq!(pick(&b, now), Some(("lingered".into(), 60)));
        // "fresh" has not lingered yet: look again when it has.
        match b.pick(now, |_, _| false).map(rows_of) {
            Err(next) => assert_eq!(next, t0 + Duration::from_millis(62_500)),
            Ok((form, _)) => panic!("{} picked before its linger", form.form_id),
        }
    }

    #[test]
    fn the_first_pick_after_start_takes_the_smallest_form_at_once() {
        let b = batcher();
        let now = Instant::now();
        queue(&b, "busy", 90, 100, now);
        queue(&b, "quiet", 2, 100, now);
        assert_eq!(pick(&b, now), Some(("quiet".into(), 2)));
        // Later picks linger.
        assert!(b.pick(now, |_, _| false).is_err());
    }

    #[test]
    fn a_full_pick_takes_new_rows_alone_and_leaves_corrections_for_a_mixed_write() {
        let b = batcher();
        let t0 = Instant::now();
        b.first.store(false, Ordering::Release);
        // Oldest first: 3 corrections, then 150 new rows (a full request and a half).
        queue_revisions(&b, "busy", 3, 100, t0, 2);
        queue(&b, "busy", 150, 100, t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_secs(3);
        let (form, rows) = rows_of(b.pick(now, |_, _| false).expect("a full pick"));
        b.done(&form);
        assert_eq!(rows.len(), 98);
        assert!(rows.iter().all(|w| w.pending.response.revision == 0));
        // Not full any more: the oldest rows, corrections first, as one mixed write.
        let (form, rows) = rows_of(b.pick(now, |_, _| false).expect("a lingered pick"));
        b.done(&form);
        let revisions: Vec<i32> = rows.iter().map(|w| w.pending.response.revision).collect();
        assert_eq!(revisions.len(), 55);
        assert_eq!(&revisions[..4], &[2, 2, 2, 0]);
        assert!(b.queues().is_empty());
    }

    #[test]
    fn a_row_is_measured_as_the_sink_sends_it_whatever_its_revision() {
        let form = Arc::new(fixtures::form("acme", "f", Vec::new()));
        let mut response = fixtures::response("f", "r-1", vec![text_answer("q", "x")]);
        let row = Layout::of(&form).row(&response);
        let pending = |response: &formstream_schemas::Response| Pending {
            response: response.clone(),
            form: form.clone(),
            assignment: 1,
        };
        assert_eq!(
            measure(&Layout::of(&form), &pending(&response)),
            (row_data_bytes(&row), row_bytes(&row))
        );
        response.revision = 1;
        assert_eq!(
            measure(&Layout::of(&form), &pending(&response)),
            (row_data_bytes(&row), row_bytes(&row))
        );
    }

    #[tokio::test]
    async fn revisions_of_a_waiting_response_share_its_row_and_its_write() {
        let form = Arc::new(fixtures::form("acme", "f", Vec::new()));
        let pending = |id: &str, revision: i32| {
            let mut response = fixtures::response("f", id, vec![text_answer("q", "x")]);
            response.revision = revision;
            Pending {
                response,
                form: form.clone(),
                assignment: 1,
            }
        };
        let t0 = Instant::now();
        let mut queue = Queue::default();
        let (first, first_answer) = oneshot::channel();
        queue.add(pending("a", 0), 100, 50, t0, first);
        queue.add(pending("b", 0), 100, 50, t0, oneshot::channel().0);
        // A correction of "a" while its first revision waits, then a late redelivery of it.
        let (second, second_answer) = oneshot::channel();
        queue.add(
            pending("a", 2),
            120,
            60,
            t0 + Duration::from_secs(5),
            second,
        );
        let (late, late_answer) = oneshot::channel();
        queue.add(pending("a", 1), 110, 55, t0 + Duration::from_secs(6), late);
        assert_eq!(queue.rows.len(), 2, "one row per response");
        let (_, a) = queue.rows.first_key_value().expect("a waits");
        assert_eq!(
            (a.pending.response.revision, a.since, a.replies.len()),
            (2, t0, 3),
            "the highest revision, in the first one's place and age, answering all three"
        );
        // Still new (never written): measured as values for a full pick.
        assert_eq!((queue.bytes, queue.new_bytes), (220, 110));
        let rows = queue.take(&[1]);
        assert_eq!(queue.ids.len(), 1);
        for waiting in rows {
            for reply in waiting.replies {
                let _ = reply.send(Ok(()));
            }
        }
        for answer in [first_answer, second_answer, late_answer] {
            assert!(matches!(answer.await, Ok(Ok(()))));
        }
        // Once taken (being written), a new revision waits for the next write.
        queue.add(pending("a", 3), 100, 50, t0, oneshot::channel().0);
        assert_eq!(queue.rows.len(), 2);
    }

    #[test]
    fn spreadsheets_are_created_in_turns_with_overdue_rows_between_full_requests() {
        let b = batcher();
        let t0 = Instant::now();
        b.first.store(false, Ordering::Release);
        let now = t0 + Duration::from_secs(120);
        queue(&b, "busy", 300, 100, now - Duration::from_secs(2));
        queue(&b, "quiet-1", 3, 100, t0);
        queue(&b, "quiet-2", 3, 100, t0 + Duration::from_secs(1));
        queue(&b, "quiet-3", 3, 100, t0 + Duration::from_secs(2));
        // quiet-1 and quiet-2 have no spreadsheet yet; quiet-3 and busy have theirs.
        let asked = Mutex::new(Vec::new());
        let needs = |form: &FormKey, _: &Pending| {
            asked.lock().expect("asked").push(form.form_id.clone());
            form.form_id.as_str() < "quiet-3" && form.form_id.starts_with("quiet")
        };
        let mut picks = Vec::new();
        for _ in 0..8 {
            let picked = b.pick(now, needs).expect("a pick");
            let (form, what) = match picked {
                Pick::Create(form, sample) => {
                    assert_eq!(sample.response.response_id, format!("{}-0", form.form_id));
                    b.spreadsheets_known(&form);
                    (form, "create".to_owned())
                }
                Pick::Rows(form, rows) => {
                    let what = format!("{} rows", rows.len());
                    (form, what)
                }
            };
            b.done(&form);
            picks.push(format!("{} {what}", form.form_id));
        }
        assert_eq!(
            picks,
            [
                "busy 98 rows",
                "quiet-1 create",
                "busy 98 rows",
                // Creates and overdue rows take turns between full requests.
                "quiet-1 3 rows",
                "busy 98 rows",
                "quiet-2 create",
                "quiet-2 3 rows",
                // No create left: the overdue forms' turns.
                "quiet-3 3 rows",
            ]
        );
        // A form known to have its spreadsheet is asked about once.
        let asked = asked.into_inner().expect("asked");
        assert_eq!(
            asked.iter().filter(|f| *f == "quiet-3").count(),
            1,
            "{asked:?}"
        );
        assert_eq!(
            asked.iter().filter(|f| *f == "busy").count(),
            1,
            "{asked:?}"
        );
    }
}
