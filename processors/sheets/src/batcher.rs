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
//! Which form next: one whose oldest row has waited `--sheets-max-wait` (fairness), else the form
//! with the most bytes waiting among those whose oldest row has lingered (throughput). The first
//! flush after start does not linger (a restarted exporter's first effect comes at once). A form is
//! written by one flush at a time, so its rows are never written by two calls at once.
//!
//! Invariant: every submitted row gets exactly one answer, the outcome of the write that carried
//! it; a row is never answered `Ok` before its write succeeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_core::identity::FormKey;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::api::ApiError;
use crate::sink::{Pending, Sink};

/// Forms written at once. The rate limiter serialises the calls themselves; two flushes let one
/// form's read-back overlap another's append, and few enough that most writes carry the fullest
/// batch.
const CONCURRENT_FLUSHES: usize = 2;

struct Waiting {
    pending: Pending,
    bytes: usize,
    since: Instant,
    reply: oneshot::Sender<Result<(), ApiError>>,
}

#[derive(Default)]
struct Queue {
    rows: Vec<Waiting>,
    bytes: usize,
    busy: bool,
}

/// The batcher's settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub linger: Duration,
    pub max_wait: Duration,
    pub max_bytes: usize,
}

pub struct Batcher {
    queues: Mutex<HashMap<FormKey, Queue>>,
    /// No flush picked yet since start: the first one goes without lingering, so that a
    /// restarted exporter's first row is written as soon as it can be (one small write, once).
    first: std::sync::atomic::AtomicBool,
    wake: Notify,
    settings: BatchSettings,
}

impl Batcher {
    pub fn new(settings: BatchSettings) -> Arc<Self> {
        Arc::new(Batcher {
            queues: Mutex::new(HashMap::new()),
            first: std::sync::atomic::AtomicBool::new(true),
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
        let bytes = estimate(&pending);
        {
            let mut queues = self.queues();
            let queue = queues
                .entry(FormKey::of_response(&pending.response))
                .or_default();
            queue.bytes += bytes;
            queue.rows.push(Waiting {
                pending,
                bytes,
                since: Instant::now(),
                reply,
            });
        }
        self.wake.notify_one();
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::Unavailable(
                "the exporter stopped before writing the row".into(),
            ))
        })
    }

    /// The form to write next, its rows taken (and the form marked busy); or when to look again.
    fn pick(&self, now: Instant) -> Result<(FormKey, Vec<Waiting>), Instant> {
        let mut queues = self.queues();
        let s = self.settings;
        let mut overdue: Option<(&FormKey, Instant)> = None;
        let mut fullest: Option<(&FormKey, usize)> = None;
        let mut next = now + Duration::from_secs(1);
        let first = self.first.load(std::sync::atomic::Ordering::Acquire);
        for (form, queue) in queues.iter() {
            let Some(oldest) = queue.rows.first().map(|w| w.since) else {
                continue;
            };
            if queue.busy {
                continue;
            }
            if now.duration_since(oldest) >= s.max_wait && overdue.is_none_or(|(_, t)| oldest < t) {
                overdue = Some((form, oldest));
            }
            let ready =
                first || now.duration_since(oldest) >= s.linger || queue.bytes >= s.max_bytes;
            if ready && fullest.is_none_or(|(_, b)| queue.bytes > b) {
                fullest = Some((form, queue.bytes));
            }
            if !ready {
                next = next.min(oldest + s.linger);
            }
        }
        let Some(form) = overdue.map(|(f, _)| f).or(fullest.map(|(f, _)| f)).cloned() else {
            return Err(next);
        };
        let Some(queue) = queues.get_mut(&form) else {
            return Err(next);
        };
        queue.busy = true;
        queue.bytes = 0;
        self.first
            .store(false, std::sync::atomic::Ordering::Release);
        Ok((form, std::mem::take(&mut queue.rows)))
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
            let (form, rows) = loop {
                match self.pick(Instant::now()) {
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
            tokio::spawn(async move {
                let pending: Vec<Pending> = rows.iter().map(|w| w.pending.clone()).collect();
                let bytes: usize = rows.iter().map(|w| w.bytes).sum();
                tracing::debug!(organisation = %form.organisation, form_id = %form.form_id, rows = pending.len(), bytes, "Writing a batch.");
                let results = sink.write(&form, &pending).await;
                let mut results = results.into_iter();
                for waiting in rows {
                    let result = results.next().unwrap_or_else(|| {
                        Err(ApiError::Unavailable("no outcome for the row".into()))
                    });
                    let _ = waiting.reply.send(result);
                }
                batcher.done(&form);
                drop(permit);
            });
        }
    }
}

/// A row's request bytes, estimated before its layout is known (the sink measures exactly when it
/// splits a batch into requests).
fn estimate(pending: &Pending) -> usize {
    let response = &pending.response;
    80 + response.response_id.len()
        + response.collector.id.len()
        + response
            .answers
            .iter()
            .map(|a| {
                4 + a.text.as_ref().map_or(8, String::len)
                    + a.choices.iter().map(|c| c.len() + 2).sum::<usize>()
            })
            .sum::<usize>()
}
