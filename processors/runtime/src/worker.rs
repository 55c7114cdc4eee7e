//! A worker runs the effect of one job (or one batch of jobs of different keys) to its end: done,
//! or dead-lettered. It decodes, waits for the record's form to be in the forms view, calls the
//! processor, retries retriable failures with backoff and full jitter (while the circuit is open it
//! waits, and that time does not count against the budget), and dead-letters what cannot succeed.
//!
//! Invariant: a job is reported finished only after its effect succeeded or Kafka acknowledged its
//! dead letter; a job of a revoked partition is abandoned without being reported or dead-lettered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_ingest::forms::{FormsView, now_millis};
use formstream_schemas::{Codec, Form};
use tokio::sync::watch;

use crate::backoff::RetryPolicy;
use crate::circuit::{CircuitBreaker, CircuitState};
use crate::dlq::{DeadLetters, Kind, Letter};
use crate::engine::Tp;
use crate::metrics::Metrics;
use crate::processor::{Failure, Output, Payload, Processor, Record};

/// A fetched record, waiting for or in the hands of a worker.
#[derive(Debug)]
pub struct Job {
    pub tp: Tp,
    pub epoch: u64,
    pub alive: Arc<AtomicBool>,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
    pub ordering_key: Box<str>,
    pub bytes: usize,
}

impl Job {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// What a worker tells the engine.
#[derive(Debug)]
pub enum Event {
    /// A job finished (effect done or dead-lettered).
    Finished(Completion),
    /// The worker has ended; its in-flight slot is free.
    WorkerExit,
}

#[derive(Debug)]
pub struct Completion {
    pub tp: Tp,
    pub epoch: u64,
    pub offset: i64,
    pub ordering_key: Box<str>,
    pub bytes: usize,
    /// A transactional processor's outputs for this record (empty otherwise, and when the record
    /// was dead-lettered).
    pub outputs: Vec<Output>,
}

impl Completion {
    fn of(job: &Job) -> Self {
        Completion {
            tp: job.tp.clone(),
            epoch: job.epoch,
            offset: job.offset,
            ordering_key: job.ordering_key.clone(),
            bytes: job.bytes,
            outputs: Vec::new(),
        }
    }
}

/// What every worker shares.
pub struct WorkerContext<P: Processor> {
    pub processor: Arc<P>,
    pub codec: Codec,
    pub view: Arc<FormsView>,
    pub dead_letters: DeadLetters,
    pub retry: RetryPolicy,
    pub form_wait: Duration,
    pub circuit: Mutex<CircuitBreaker>,
    pub circuit_tx: watch::Sender<CircuitState>,
    /// Set when the engine starts draining: waiting work (backoff, open circuit, a missing form,
    /// an unwritable dead letter) is abandoned uncommitted; effects already running finish.
    pub stopping: watch::Sender<bool>,
    /// True while the last outcome the breaker saw was a success: further successes need not
    /// take its lock (they would change nothing).
    pub clean: AtomicBool,
    pub metrics: Metrics,
}

impl<P: Processor> WorkerContext<P> {
    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Sleeps for `duration`, or less if the engine starts draining.
    async fn pause(&self, duration: Duration) {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }

    /// Applies `change` to the breaker and publishes its state if it changed.
    fn circuit(&self, change: impl FnOnce(&mut CircuitBreaker)) {
        let state = match self.circuit.lock() {
            Ok(mut breaker) => {
                change(&mut breaker);
                breaker.state()
            }
            Err(_) => return,
        };
        self.circuit_tx.send_if_modified(|held| {
            let changed = *held != state;
            *held = state;
            changed
        });
    }
}

/// One job being worked on.
struct Attempting<V> {
    job: Job,
    record: Record<V>,
}

/// Runs `jobs` to their end and returns the events for the engine (the last is `WorkerExit`).
pub async fn run_jobs<P: Processor>(ctx: &WorkerContext<P>, jobs: Vec<Job>) -> Vec<Event> {
    let mut events = Vec::with_capacity(jobs.len() + 1);
    let first_attempt_ms = now_millis();

    // Decode, and find each record's form.
    let mut active: Vec<Attempting<P::Value>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let decoded = match &job.payload {
            Some(bytes) => ctx
                .codec
                .decode::<P::Value>(bytes)
                .await
                .map_err(|e| e.to_string()),
            None => Err("the record has no value (a tombstone)".to_owned()),
        };
        let value = match decoded {
            Ok(value) => value,
            Err(message) => {
                if Box::pin(dead_letter(
                    ctx,
                    &job,
                    Kind::Undecodable,
                    &message,
                    0,
                    first_attempt_ms,
                ))
                .await
                {
                    events.push(Event::Finished(Completion::of(&job)));
                }
                continue;
            }
        };
        let form = match value.form_ref() {
            None => None,
            Some((form_id, version)) => match find_form(ctx, &job, form_id, version).await {
                FormLookup::Found(form) => Some(form),
                FormLookup::Abandoned => continue,
                FormLookup::Missing => {
                    let message = format!(
                        "form {form_id} version {version} did not appear in the forms view within {:?}",
                        ctx.form_wait
                    );
                    if Box::pin(dead_letter(
                        ctx,
                        &job,
                        Kind::UnknownForm,
                        &message,
                        0,
                        first_attempt_ms,
                    ))
                    .await
                    {
                        events.push(Event::Finished(Completion::of(&job)));
                    }
                    continue;
                }
            },
        };
        let record = Record {
            topic: job.tp.topic.clone(),
            partition: job.tp.partition,
            offset: job.offset,
            key: job.key.clone(),
            timestamp_ms: job.timestamp_ms,
            headers: job.headers.clone(),
            value,
            form,
            attempt: 0,
            assignment: job.epoch,
        };
        active.push(Attempting { job, record });
    }

    // Attempt, retry, dead-letter.
    let started = Instant::now();
    let mut circuit_wait = Duration::ZERO;
    let mut attempts = 0u32;
    // Attempts that count against the retry budget: those that failed while the circuit stayed
    // closed. A failure that is part of an outage (the circuit is open after it) pauses the
    // record instead; a multi-hour outage must not dead-letter the backlog.
    let mut budget_attempts = 0u32;
    while !active.is_empty() {
        circuit_wait += wait_while_open(ctx).await;
        // Checked after every wait: a partition revoked meanwhile belongs to another instance
        // now, and running its records here could overtake that instance's later revisions.
        active.retain(|a| a.job.alive());
        if active.is_empty() || ctx.is_stopping() {
            break;
        }
        attempts += 1;
        for attempting in &mut active {
            attempting.record.attempt = attempts;
        }
        let call = Instant::now();
        let results = if active.len() == 1 {
            vec![ctx.processor.handle(&active[0].record).await]
        } else {
            let records: Vec<Record<P::Value>> = active.iter().map(|a| a.record.clone()).collect();
            ctx.processor.handle_batch(&records).await
        };
        ctx.metrics.effect(call.elapsed());

        let mut retry = Vec::new();
        let mut retry_after: Option<Duration> = None;
        let mut last_error = String::new();
        let mut results = results.into_iter();
        for attempting in active.drain(..) {
            // A processor that returns fewer results than records has failed them retriably.
            let result = results
                .next()
                .unwrap_or_else(|| {
                    Err(Failure::retriable(anyhow::anyhow!(
                        "no result for this record"
                    )))
                })
                .and_then(|()| outputs_of(ctx, &attempting.record));
            match result {
                Ok(outputs) => {
                    ctx.metrics.records("ok", 1);
                    // A success reaches the breaker after any failure, and while the circuit is
                    // not closed (a record in flight through the outage may have succeeded and
                    // marked the run clean before the probe half-opened it).
                    if !ctx.clean.load(Ordering::Acquire)
                        || *ctx.circuit_tx.borrow() != CircuitState::Closed
                    {
                        ctx.circuit(CircuitBreaker::on_success);
                        ctx.clean.store(true, Ordering::Release);
                    }
                    events.push(Event::Finished(Completion {
                        outputs,
                        ..Completion::of(&attempting.job)
                    }));
                }
                Err(Failure::Permanent(error)) => {
                    let message = format!("{error:#}");
                    tracing::warn!(
                        topic = %attempting.job.tp.topic,
                        partition = attempting.job.tp.partition,
                        offset = attempting.job.offset,
                        error = %message,
                        "Permanent failure; dead-lettering."
                    );
                    if Box::pin(dead_letter(
                        ctx,
                        &attempting.job,
                        Kind::Permanent,
                        &message,
                        attempts,
                        first_attempt_ms,
                    ))
                    .await
                    {
                        events.push(Event::Finished(Completion::of(&attempting.job)));
                    }
                }
                Err(Failure::Retriable {
                    error,
                    retry_after: after,
                }) => {
                    last_error = format!("{error:#}");
                    retry_after = retry_after.max(after);
                    let now = tokio::time::Instant::now();
                    ctx.clean.store(false, Ordering::Release);
                    ctx.circuit(|breaker| {
                        breaker.on_retriable_failure(now);
                    });
                    retry.push(attempting);
                }
            }
        }
        if retry.is_empty() {
            break;
        }
        ctx.metrics.records("retried", retry.len() as u64);
        if *ctx.circuit_tx.borrow() == CircuitState::Closed {
            budget_attempts += 1;
        }
        let elapsed = started.elapsed().saturating_sub(circuit_wait);
        let delay = ctx.retry.next_delay(
            budget_attempts.max(1),
            elapsed,
            retry_after,
            &mut rand::rng(),
        );
        match delay {
            Some(delay) => {
                tracing::debug!(records = retry.len(), attempts, ?delay, error = %last_error, "Retriable failure; retrying.");
                Box::pin(ctx.pause(delay)).await;
                active = retry;
            }
            None => {
                for attempting in retry {
                    let message =
                        format!("retry budget spent after {attempts} attempts: {last_error}");
                    if Box::pin(dead_letter(
                        ctx,
                        &attempting.job,
                        Kind::RetriesExhausted,
                        &message,
                        attempts,
                        first_attempt_ms,
                    ))
                    .await
                    {
                        events.push(Event::Finished(Completion::of(&attempting.job)));
                    }
                }
            }
        }
    }
    events.push(Event::WorkerExit);
    events
}

/// A transactional processor's outputs for a record whose effect succeeded.
fn outputs_of<P: Processor>(
    ctx: &WorkerContext<P>,
    record: &Record<P::Value>,
) -> Result<Vec<Output>, Failure> {
    if ctx.processor.transactional() {
        ctx.processor.outputs(record)
    } else {
        Ok(Vec::new())
    }
}

enum FormLookup {
    Found(Arc<Form>),
    Missing,
    Abandoned,
}

/// The record's form: from the view at once in the common case, else [`wait_for_form`] (boxed, so
/// that its state does not weigh on every record's task).
async fn find_form<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    form_id: &str,
    version: i32,
) -> FormLookup {
    match ctx.view.get(form_id) {
        Some(form) if form.version(version).is_some() => FormLookup::Found(form),
        _ => Box::pin(wait_for_form(ctx, job, form_id, version)).await,
    }
}

/// The record's form, waiting (bounded) for the forms view to catch up with it: a response can
/// reach a processor before the form it answers reaches the processor's view.
async fn wait_for_form<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    form_id: &str,
    version: i32,
) -> FormLookup {
    let deadline = Instant::now() + ctx.form_wait;
    loop {
        if let Some(form) = ctx.view.get(form_id)
            && form.version(version).is_some()
        {
            return FormLookup::Found(form);
        }
        if !job.alive() || ctx.is_stopping() {
            return FormLookup::Abandoned;
        }
        if Instant::now() >= deadline {
            return FormLookup::Missing;
        }
        ctx.pause(Duration::from_millis(200)).await;
    }
}

/// Waits while the circuit is open (or until the engine drains); returns how long it waited.
async fn wait_while_open<P: Processor>(ctx: &WorkerContext<P>) -> Duration {
    if *ctx.circuit_tx.borrow() != CircuitState::Open {
        return Duration::ZERO;
    }
    Box::pin(wait_until_closed(ctx)).await
}

async fn wait_until_closed<P: Processor>(ctx: &WorkerContext<P>) -> Duration {
    let started = Instant::now();
    let mut state = ctx.circuit_tx.subscribe();
    let mut stopping = ctx.stopping.subscribe();
    tokio::select! {
        _ = state.wait_for(|s| *s != CircuitState::Open) => {}
        _ = stopping.wait_for(|s| *s) => {}
    }
    started.elapsed()
}

/// Sends the job to the dead-letter topic, retrying (with backoff) until Kafka acknowledges it or
/// the job's partition is revoked. Returns whether it was acknowledged.
async fn dead_letter<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    kind: Kind,
    message: &str,
    attempts: u32,
    first_attempt_ms: i64,
) -> bool {
    let letter = Letter {
        source_topic: job.tp.topic.to_string(),
        partition: job.tp.partition,
        offset: job.offset,
        key: job.key.clone(),
        payload: job.payload.clone(),
        headers: job.headers.clone(),
        kind,
        message: message.to_owned(),
        attempts,
        first_attempt_ms,
        last_attempt_ms: now_millis(),
    };
    let mut delay = Duration::from_millis(500);
    loop {
        if !job.alive() {
            return false;
        }
        match ctx
            .dead_letters
            .send(&letter, Duration::from_secs(30))
            .await
        {
            Ok(()) => {
                ctx.metrics.dead_lettered(kind.as_str());
                tracing::warn!(
                    topic = %letter.source_topic,
                    partition = letter.partition,
                    offset = letter.offset,
                    kind = kind.as_str(),
                    dlq = ctx.dead_letters.topic(),
                    "Record dead-lettered."
                );
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, ?delay, "Could not write the dead letter; retrying.");
                ctx.pause(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// While the circuit is open, asks the processor's probe on the breaker's schedule; a probe that
/// answers moves the circuit to half-open, which resumes the partitions.
pub async fn probe_loop<P: Processor>(ctx: Arc<WorkerContext<P>>) {
    let mut state = ctx.circuit_tx.subscribe();
    loop {
        if state.wait_for(|s| *s == CircuitState::Open).await.is_err() {
            return;
        }
        let due = ctx.circuit.lock().ok().and_then(|b| b.next_probe_at());
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        match ctx.processor.probe().await {
            Ok(()) => ctx.circuit(CircuitBreaker::probe_succeeded),
            Err(error) => {
                tracing::info!(error = %format!("{error:#}"), "Probe failed; the circuit stays open.");
                let now = tokio::time::Instant::now();
                ctx.circuit(|breaker| breaker.probe_failed(now));
            }
        }
    }
}
