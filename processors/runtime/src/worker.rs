//! A worker runs the effect of one job (or one batch of jobs of different keys) to its end: done,
//! or dead-lettered. Workers run in a few lanes (see [`run_lane`]): each lane is one task that
//! runs many jobs concurrently and reports their completions to the engine in batches. It decodes, waits for the record's form to be in the forms view, calls the
//! processor, retries retriable failures with backoff and full jitter (while the circuit is open it
//! waits, and that time does not count against the budget), and dead-letters what cannot succeed.
//!
//! Invariant: a job is reported finished only after its effect succeeded or Kafka acknowledged its
//! dead letter; a job of a revoked partition is abandoned without being reported or dead-lettered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use formstream_core::forms::FormsView;
use formstream_core::time::now_millis;
use formstream_schemas::{Decoder, Form};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::backoff::RetryPolicy;
use crate::circuit::{CircuitBreaker, CircuitState};
use crate::dlq::{DeadLetters, Kind, Letter};
use crate::engine::TopicPartition;
use crate::metrics::Metrics;
use crate::processor::{Failure, Output, Payload, Processor, Record};
use crate::raw::RawRecord;

/// A fetched record, waiting for or in the hands of a worker.
#[derive(Debug)]
pub struct Job {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub alive: Arc<Alive>,
    pub offset: i64,
    /// The record as fetched; it moves into the [`Record`] the processor sees.
    pub raw: RawRecord,
    pub timestamp_ms: Option<i64>,
    /// The digest of the record's ordering key in its partition's [`crate::keyed::KeyedQueue`];
    /// `None` for a record ordered by nothing but its offset (neither header nor Kafka key).
    pub ordering_key: Option<u64>,
    pub bytes: usize,
}

impl Job {
    fn alive(&self) -> bool {
        self.alive.holds()
    }
}

/// Whether a partition's assignment still holds; cleared on revoke. Every job holds a reference,
/// taken by the engine and dropped by a lane, and the lanes read the flag for every record: it
/// sits on a cache line of its own, apart from the reference count, so that those reads do not
/// miss each time the count changes.
#[derive(Debug)]
#[repr(align(128))]
pub struct Alive(AtomicBool);

impl Default for Alive {
    /// A new assignment holds.
    fn default() -> Self {
        Alive(AtomicBool::new(true))
    }
}

impl Alive {
    /// Whether the assignment still holds.
    pub fn holds(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Ends the assignment: its workers stop retrying and never dead-letter.
    pub fn end(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a lane tells the engine: which of its units (a job, or a batch of jobs) have ended, and the
/// jobs among them that finished. A job that ended without finishing (its partition was revoked,
/// or the engine is draining) has no completion: it stays uncommitted.
#[derive(Debug)]
pub struct Report {
    /// The lane (an index into the engine's lanes).
    pub lane: usize,
    /// Units that ended: their in-flight slots are free.
    pub units: usize,
    pub completions: Vec<Completion>,
    /// Units among them whose processor panicked: a bug, which stops the processor (see
    /// [`run_lane`]).
    pub panicked: usize,
}

/// A job that finished (effect done or dead-lettered).
#[derive(Debug)]
pub struct Completion {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub offset: i64,
    pub ordering_key: Option<u64>,
    pub bytes: usize,
    /// A transactional processor's outputs for this record (empty otherwise, and when the record
    /// was dead-lettered).
    pub outputs: Vec<Output>,
}

impl Completion {
    /// The completion of `job`, without outputs.
    pub fn of(job: &Job) -> Self {
        Completion {
            tp: job.tp,
            epoch: job.epoch,
            offset: job.offset,
            ordering_key: job.ordering_key,
            bytes: job.bytes,
            outputs: Vec::new(),
        }
    }
}

/// What every worker shares.
pub struct WorkerContext<P: Processor> {
    pub processor: Arc<P>,
    pub decoder: Decoder<P::Value>,
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

/// What became of one record in one attempt: its outputs (a transactional processor's), or why
/// it failed.
type Outcome = Result<Vec<Output>, Failure>;

/// A job after decoding and the form lookup.
enum Prepared<V> {
    /// Ready for its effect.
    Ready(Attempting<V>),
    /// Dead-lettered (undecodable, or its form never came).
    Finished(Completion),
    /// Given up without finishing (revoked, or the engine is draining): stays uncommitted.
    Abandoned,
}

/// Runs one lane of the worker pool until the engine drops its sending side and the lane's work
/// has ended: takes units (a job, or a batch of jobs of different keys) from `work`, runs up to
/// `limit` of them concurrently, keeps the rest waiting in order, and reports the units that
/// ended, with their completions, to the engine.
///
/// One task per lane instead of one per in-flight slot: handing over a slice of units and
/// reporting a batch of completions costs one wake-up each, where a task per slot cost a wake-up
/// (and often a thread switch) per record in each direction. The lanes' limits add up to
/// `--max-in-flight`, so that many effects at most run at once; the engine hands over more units
/// than that (see `LANE_BACKLOG`), so that a lane whose units end quickly starts the next ones
/// without waiting for the engine's turn.
pub async fn run_lane<P: Processor>(
    ctx: Arc<WorkerContext<P>>,
    lane: usize,
    limit: usize,
    mut work: mpsc::UnboundedReceiver<Vec<Unit>>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let ctx = &*ctx;
    let limit = limit.max(1);
    let mut running = FuturesUnordered::new();
    let mut waiting: VecDeque<Unit> = VecDeque::new();
    let mut open = true;
    loop {
        if running.len() < limit && !waiting.is_empty() {
            // One clock read for the units started together: when their first attempt began.
            let started = Instant::now();
            while running.len() < limit
                && let Some(unit) = waiting.pop_front()
            {
                // A panic ends its unit only, not the lane and the other units in it.
                running.push(
                    std::panic::AssertUnwindSafe(run_unit(ctx, unit, started)).catch_unwind(),
                );
            }
        }
        tokio::select! {
            biased;
            Some(ended) = running.next(), if !running.is_empty() => {
                let mut report = Report { lane, units: 0, completions: Vec::new(), panicked: 0 };
                report.add(ended);
                // Every other unit that has ended by now goes in the same report.
                std::future::poll_fn(|cx| {
                    while let Poll::Ready(Some(ended)) = running.poll_next_unpin(cx) {
                        report.add(ended);
                    }
                    Poll::Ready(())
                })
                .await;
                // The engine is gone only at shutdown, when completions no longer matter.
                let _ = reports.send(report);
            }
            units = work.recv(), if open => match units {
                Some(units) => waiting.extend(units),
                None => open = false,
            },
            // Nothing runs, so nothing waits either (the loop above started it), and no more comes.
            else => return,
        }
    }
}

impl Report {
    /// Adds a unit that ended: with its completions, or by a panic of the processor. A panicked
    /// unit's jobs have no completion: they stay uncommitted, and the engine stops the processor
    /// (a panic is a bug: Kafka Streams' "log and fail", not a record to skip or retry forever).
    fn add(&mut self, ended: std::thread::Result<Finished>) {
        self.units += 1;
        match ended {
            Ok(Finished::None) => {}
            Ok(Finished::One(completion)) => self.completions.push(completion),
            Ok(Finished::Many(completions)) => self.completions.extend(completions),
            Err(_) => self.panicked += 1,
        }
    }
}

/// What the engine hands a lane to run: one job (the common case), or a batch of jobs of
/// different keys for a processor whose [`Processor::batch_size`] is above 1.
#[derive(Debug)]
pub enum Unit {
    One(Job),
    Batch(Vec<Job>),
}

/// The jobs of a unit that finished (done or dead-lettered): most units are one job, which needs
/// no vector.
pub enum Finished {
    None,
    One(Completion),
    Many(Vec<Completion>),
}

impl From<Vec<Completion>> for Finished {
    fn from(mut completions: Vec<Completion>) -> Self {
        match completions.len() {
            0 => Finished::None,
            1 => completions.pop().map_or(Finished::None, Finished::One),
            _ => Finished::Many(completions),
        }
    }
}

/// Runs a unit to its end. `arrived` is when its lane started it.
async fn run_unit<P: Processor>(ctx: &WorkerContext<P>, unit: Unit, arrived: Instant) -> Finished {
    match unit {
        Unit::One(job) => run_one(ctx, job, arrived).await,
        Unit::Batch(jobs) => Box::pin(run_jobs(ctx, jobs, arrived)).await.into(),
    }
}

/// Runs one job to its end: decoding, the form lookup and a first attempt that succeeds run
/// here, without a vector or a box; anything else takes the general path ([`run_jobs`]'s).
///
/// Every unit in flight is one of these futures, moved into its lane's set, so it is kept small.
async fn run_one<P: Processor>(ctx: &WorkerContext<P>, job: Job, arrived: Instant) -> Finished {
    let mut attempting = match prepare_now(ctx, job) {
        Ok(attempting) => attempting,
        // A schema to fetch, a form to wait for, or a record to dead-letter.
        Err(job) => return Box::pin(run_jobs(ctx, vec![job], arrived)).await.into(),
    };
    if !attempting.job.alive() {
        // Revoked meanwhile: the partition belongs to another instance now.
        return Finished::None;
    }
    let mut first = None;
    if *ctx.circuit_tx.borrow() != CircuitState::Open && !ctx.is_stopping() {
        attempting.record.attempt = 1;
        let started = Instant::now();
        let result = ctx.processor.handle(&attempting.record).await;
        ctx.metrics.effect(started.elapsed());
        match result.and_then(|()| outputs_of(ctx, &attempting.record)) {
            Ok(outputs) => {
                ctx.metrics.records("ok", 1);
                note_success(ctx);
                return Finished::One(Completion {
                    outputs,
                    ..Completion::of(&attempting.job)
                });
            }
            Err(failure) => first = Some((vec![Err(failure)], started)),
        }
    }
    let mut done = Vec::new();
    Box::pin(attempt_until_settled(
        ctx,
        vec![attempting],
        first,
        arrived,
        &mut done,
    ))
    .await;
    done.into()
}

/// Runs `jobs` to their end and returns those that finished (done or dead-lettered): decoding,
/// the form lookup and a first attempt that succeeds run here; failures, retries and dead
/// letters go on in [`attempt_until_settled`], boxed. `arrived` is when a lane started them.
async fn run_jobs<P: Processor>(
    ctx: &WorkerContext<P>,
    jobs: Vec<Job>,
    arrived: Instant,
) -> Vec<Completion> {
    let mut done = Vec::with_capacity(jobs.len());
    let mut active: Vec<Attempting<P::Value>> = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    // Prepared without waiting, in order, up to the first job that needs to wait; it and the
    // jobs after it go through `prepare`, boxed. (Built in a block, so that no job is held in
    // this future's own state across the wait.)
    let rest = {
        let mut waiting = None;
        for job in jobs.by_ref() {
            match prepare_now(ctx, job) {
                Ok(attempting) => active.push(attempting),
                Err(job) => {
                    waiting = Some(job);
                    break;
                }
            }
        }
        waiting.map(|job| Box::pin(prepare_rest(ctx, job, jobs, arrived)))
    };
    if let Some(rest) = rest {
        for prepared in rest.await {
            match prepared {
                Prepared::Ready(attempting) => active.push(attempting),
                Prepared::Finished(completion) => done.push(completion),
                Prepared::Abandoned => {}
            }
        }
    }
    if active.is_empty() {
        return done;
    }
    let mut first = None;
    if *ctx.circuit_tx.borrow() != CircuitState::Open && !ctx.is_stopping() {
        // A partition revoked meanwhile belongs to another instance now.
        active.retain(|a| a.job.alive());
        if active.is_empty() {
            return done;
        }
        for attempting in &mut active {
            attempting.record.attempt = 1;
        }
        let started = Instant::now();
        let results = call(ctx, &active).await;
        ctx.metrics.effect(started.elapsed());
        let outcomes = outcomes(ctx, &active, results);
        if outcomes.iter().all(Result::is_ok) {
            ctx.metrics.records("ok", outcomes.len() as u64);
            note_success(ctx);
            for (attempting, outcome) in active.iter().zip(outcomes) {
                done.push(Completion {
                    outputs: outcome.unwrap_or_default(),
                    ..Completion::of(&attempting.job)
                });
            }
            return done;
        }
        first = Some((outcomes, started));
    }
    Box::pin(attempt_until_settled(
        ctx, active, first, arrived, &mut done,
    ))
    .await;
    done
}

/// Decodes a job and finds its form without waiting: the common case, where the payload names a
/// schema the codec knows and the form is in the view. Anything else (a schema to fetch from the
/// registry, a form not in the view yet, a record to dead-letter) hands the job back for
/// [`prepare`], which starts over and may wait.
// The `Err` is not an error but the job handed back by value; boxing it would only add an
// allocation on the path that waits.
#[allow(clippy::result_large_err)]
fn prepare_now<P: Processor>(
    ctx: &WorkerContext<P>,
    mut job: Job,
) -> Result<Attempting<P::Value>, Job> {
    let Some(bytes) = job.raw.payload() else {
        return Err(job);
    };
    // Decoding awaits only to fetch a writer schema from the registry (once per schema).
    let Some(Ok(value)) = ctx.decoder.decode(bytes).now_or_never() else {
        return Err(job);
    };
    let form = match value.form_ref() {
        None => None,
        Some((form_id, version)) => match ctx.view.get(form_id) {
            Some(form) if form.version(version).is_some() => Some(form),
            _ => return Err(job),
        },
    };
    Ok(Attempting {
        record: record_of(&mut job, value, form),
        job,
    })
}

/// The record a processor sees. The raw record moves into it from the job; a dead letter takes
/// it from there.
fn record_of<V>(job: &mut Job, value: V, form: Option<Arc<Form>>) -> Record<V> {
    Record {
        topic: job.tp.topic,
        partition: job.tp.partition,
        offset: job.offset,
        timestamp_ms: job.timestamp_ms,
        raw: std::mem::take(&mut job.raw),
        value,
        form,
        attempt: 0,
        assignment: job.epoch,
    }
}

/// [`prepare`]s `first` and then `rest`, in order.
async fn prepare_rest<P: Processor>(
    ctx: &WorkerContext<P>,
    first: Job,
    rest: std::vec::IntoIter<Job>,
    arrived: Instant,
) -> Vec<Prepared<P::Value>> {
    let mut prepared = Vec::with_capacity(rest.len() + 1);
    for job in std::iter::once(first).chain(rest) {
        prepared.push(prepare(ctx, job, arrived).await);
    }
    prepared
}

/// Decodes a job and finds its form, waiting (bounded) for the forms view; dead-letters it when
/// either cannot be done.
async fn prepare<P: Processor>(
    ctx: &WorkerContext<P>,
    mut job: Job,
    arrived: Instant,
) -> Prepared<P::Value> {
    let decoded = match job.raw.payload() {
        Some(bytes) => ctx.decoder.decode(bytes).await.map_err(|e| e.to_string()),
        None => Err("the record has no value (a tombstone)".to_owned()),
    };
    let value = match decoded {
        Ok(value) => value,
        Err(message) => {
            return Box::pin(dead_letter_unprepared(
                ctx,
                job,
                Kind::Undecodable,
                message,
                arrived,
            ))
            .await;
        }
    };
    let form = match value.form_ref() {
        None => None,
        Some((form_id, version)) => match find_form(ctx, &job, form_id, version).await {
            FormLookup::Found(form) => Some(form),
            FormLookup::Abandoned => return Prepared::Abandoned,
            FormLookup::Missing => {
                let message = format!(
                    "form {form_id} version {version} did not appear in the forms view within {:?}",
                    ctx.form_wait
                );
                return Box::pin(dead_letter_unprepared(
                    ctx,
                    job,
                    Kind::UnknownForm,
                    message,
                    arrived,
                ))
                .await;
            }
        },
    };
    Prepared::Ready(Attempting {
        record: record_of(&mut job, value, form),
        job,
    })
}

/// Dead-letters a job that never reached its effect.
async fn dead_letter_unprepared<P: Processor>(
    ctx: &WorkerContext<P>,
    job: Job,
    kind: Kind,
    message: String,
    arrived: Instant,
) -> Prepared<P::Value> {
    if dead_letter(ctx, &job, &job.raw, kind, &message, 0, arrived).await {
        Prepared::Finished(Completion::of(&job))
    } else {
        Prepared::Abandoned
    }
}

/// One call to the processor's effect for the active records.
async fn call<P: Processor>(
    ctx: &WorkerContext<P>,
    active: &[Attempting<P::Value>],
) -> Vec<Result<(), Failure>> {
    if let [attempting] = active {
        vec![ctx.processor.handle(&attempting.record).await]
    } else {
        let records: Vec<Record<P::Value>> = active.iter().map(|a| a.record.clone()).collect();
        ctx.processor.handle_batch(&records).await
    }
}

/// Each active record's outcome: its result, with a success's outputs. A processor that
/// returns fewer results than records has failed the rest retriably.
fn outcomes<P: Processor>(
    ctx: &WorkerContext<P>,
    active: &[Attempting<P::Value>],
    results: Vec<Result<(), Failure>>,
) -> Vec<Outcome> {
    let mut results = results.into_iter();
    active
        .iter()
        .map(|attempting| {
            results
                .next()
                .unwrap_or_else(|| {
                    Err(Failure::retriable(anyhow::anyhow!(
                        "no result for this record"
                    )))
                })
                .and_then(|()| outputs_of(ctx, &attempting.record))
        })
        .collect()
}

/// A success reaches the breaker after any failure, and while the circuit is not closed (a
/// record in flight through the outage may have succeeded and marked the run clean before the
/// probe half-opened it); otherwise it would change nothing, and skips the breaker's lock.
fn note_success<P: Processor>(ctx: &WorkerContext<P>) {
    if !ctx.clean.load(Ordering::Acquire) || *ctx.circuit_tx.borrow() != CircuitState::Closed {
        ctx.circuit(CircuitBreaker::on_success);
        ctx.clean.store(true, Ordering::Release);
    }
}

/// Attempts, retries and dead-letters `active` until every record is done, dead-lettered or
/// abandoned, pushing what finished to `done`. `first` holds the outcomes of a first attempt
/// already made (and when it started), if any.
async fn attempt_until_settled<P: Processor>(
    ctx: &WorkerContext<P>,
    mut active: Vec<Attempting<P::Value>>,
    first: Option<(Vec<Outcome>, Instant)>,
    arrived: Instant,
    done: &mut Vec<Completion>,
) {
    let (mut pending, started) = match first {
        Some((outcomes, started)) => (Some(outcomes), started),
        None => (None, Instant::now()),
    };
    let mut attempts = u32::from(pending.is_some());
    let mut circuit_wait = Duration::ZERO;
    // Attempts that count against the retry budget: those that failed while the circuit stayed
    // closed. A failure that is part of an outage (the circuit is open after it) pauses the
    // record instead; a multi-hour outage must not dead-letter the backlog.
    let mut budget_attempts = 0u32;
    loop {
        let outcomes = match pending.take() {
            Some(outcomes) => outcomes,
            None => {
                if active.is_empty() {
                    break;
                }
                circuit_wait += wait_while_open(ctx).await;
                // Checked after every wait: a partition revoked meanwhile belongs to another
                // instance now, and running its records here could overtake that instance's
                // later revisions.
                active.retain(|a| a.job.alive());
                if active.is_empty() || ctx.is_stopping() {
                    break;
                }
                attempts += 1;
                for attempting in &mut active {
                    attempting.record.attempt = attempts;
                }
                let call_started = Instant::now();
                let results = call(ctx, &active).await;
                ctx.metrics.effect(call_started.elapsed());
                outcomes(ctx, &active, results)
            }
        };

        let mut retry = Vec::new();
        let mut retry_after: Option<Duration> = None;
        let mut last_error = String::new();
        for (attempting, outcome) in active.drain(..).zip(outcomes) {
            match outcome {
                Ok(outputs) => {
                    ctx.metrics.records("ok", 1);
                    note_success(ctx);
                    done.push(Completion {
                        outputs,
                        ..Completion::of(&attempting.job)
                    });
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
                        &attempting.record.raw,
                        Kind::Permanent,
                        &message,
                        attempts,
                        arrived,
                    ))
                    .await
                    {
                        done.push(Completion::of(&attempting.job));
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
                        &attempting.record.raw,
                        Kind::RetriesExhausted,
                        &message,
                        attempts,
                        arrived,
                    ))
                    .await
                    {
                        done.push(Completion::of(&attempting.job));
                    }
                }
            }
        }
    }
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
/// the job's partition is revoked. Returns whether it was acknowledged. `raw` is the record as
/// fetched (the job's, or the record's once it moved there). `arrived` is when a lane started the
/// job: its first attempt's time in the dead letter's headers.
async fn dead_letter<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    raw: &RawRecord,
    kind: Kind,
    message: &str,
    attempts: u32,
    arrived: Instant,
) -> bool {
    // The wall-clock time is read only here, for the few records that are dead-lettered.
    let last_attempt_ms = now_millis();
    let since_arrival = i64::try_from(arrived.elapsed().as_millis()).unwrap_or(i64::MAX);
    let letter = Letter {
        source_topic: job.tp.topic.to_string(),
        partition: job.tp.partition,
        offset: job.offset,
        record: raw.clone(),
        kind,
        message: message.to_owned(),
        attempts,
        first_attempt_ms: last_attempt_ms.saturating_sub(since_arrival),
        last_attempt_ms,
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
