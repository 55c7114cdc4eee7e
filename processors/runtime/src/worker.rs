//! A worker runs the effect of one job (or one batch of jobs of different keys) to its end: done,
//! or dead-lettered, or handed back to wait for its target's circuit. Workers run in a few lanes
//! (see [`run_lane`]): each lane is one task that runs many jobs concurrently and reports their
//! completions to the engine in batches. It decodes, waits for the record's form to be in the
//! forms view, calls the processor, retries retriable failures with backoff and full jitter, and
//! dead-letters what cannot succeed. While the processor's one circuit is open it waits; a record
//! whose target's circuit is open (see [`crate::targets`]) is handed back to the engine, which
//! keeps it until the circuit lets it go, so that it holds no slot of `--max-in-flight` meanwhile.
//! Neither wait counts against the retry budget. A schema registry that cannot answer is waited
//! out too (the record is not at fault): only a payload that cannot be decoded is dead-lettered.
//!
//! Invariant: a job is reported finished only after its effect succeeded or Kafka acknowledged its
//! dead letter; a job handed back to wait is not finished (its offset stays uncommitted, its key
//! busy); a job of a revoked partition is abandoned without being reported or dead-lettered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use formstream_core::forms::FormsView;
use formstream_core::redact::scrubbed;
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
use crate::processor::{Failure, FormRef, Output, Payload, Processor, Record};
use crate::raw::RawRecord;
use crate::targets::{Target, TargetCircuits, Targets};

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
    /// How far its attempts had gone, for a job that waited for its target's circuit; `None` for
    /// a job that has not been tried yet.
    pub resume: Option<Box<Progress>>,
}

/// How far a record's attempts have gone: carried through a wait for its target's circuit, so
/// that the wait neither resets nor spends its retry budget.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// When a lane first started the record (its dead letter's first-attempt time).
    arrived: Instant,
    /// Attempts made.
    attempts: u32,
    /// Attempts that count against the retry budget: failures after which its circuit stayed
    /// closed. A failure that is part of an outage (its circuit opened) does not count.
    counted: u32,
    /// Time spent trying, waits for a circuit left out.
    spent: Duration,
}

impl Progress {
    /// A record not tried yet, started by its lane at `arrived`.
    fn new(arrived: Instant) -> Self {
        Progress {
            arrived,
            attempts: 0,
            counted: 0,
            spent: Duration::ZERO,
        }
    }
}

/// A job handed back to the engine to wait while its target's circuit is open.
#[derive(Debug)]
pub struct Waiter {
    pub target: Arc<Target>,
    pub job: Job,
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

/// What a lane tells the engine: which of its units (a job, or a batch of jobs) have ended, the
/// jobs among them that finished, and those handed back to wait for their target's circuit. A
/// job that ended without finishing (its partition was revoked, or the engine is draining) has no
/// completion: it stays uncommitted.
#[derive(Debug)]
pub struct Report {
    /// The lane (an index into the engine's lanes).
    pub lane: usize,
    /// Units that ended: their in-flight slots are free.
    pub units: usize,
    pub completions: Vec<Completion>,
    /// Jobs to keep until their target's circuit lets them go.
    pub waiting: Vec<Waiter>,
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
    /// The processor's one circuit, for failures that name no target.
    pub circuit: Mutex<CircuitBreaker>,
    pub circuit_tx: watch::Sender<CircuitState>,
    /// A circuit per target (see [`crate::targets`]).
    pub targets: TargetCircuits,
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
                let mut report = Report {
                    lane,
                    units: 0,
                    completions: Vec::new(),
                    waiting: Vec::new(),
                    panicked: 0,
                };
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
            Ok(Finished::Waiting(waiter)) => self.waiting.push(*waiter),
            Ok(Finished::Many(settled)) => {
                self.completions.extend(settled.done);
                self.waiting.extend(settled.waiting);
            }
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

/// What became of a unit's jobs: finished (done or dead-lettered), or handed back to wait for
/// their target. Most units are one job, which needs no vector.
pub enum Finished {
    None,
    One(Completion),
    /// Boxed: rare, and it would make every unit's outcome larger.
    Waiting(Box<Waiter>),
    Many(Settled),
}

/// The jobs of a unit that finished, and those handed back to wait for their target.
#[derive(Default)]
pub struct Settled {
    done: Vec<Completion>,
    waiting: Vec<Waiter>,
}

impl Settled {
    fn extend(&mut self, other: Settled) {
        self.done.extend(other.done);
        self.waiting.extend(other.waiting);
    }
}

impl From<Settled> for Finished {
    fn from(mut settled: Settled) -> Self {
        match (settled.done.len(), settled.waiting.len()) {
            (0, 0) => Finished::None,
            (1, 0) => settled.done.pop().map_or(Finished::None, Finished::One),
            (0, 1) => settled
                .waiting
                .pop()
                .map_or(Finished::None, |waiter| Finished::Waiting(Box::new(waiter))),
            _ => Finished::Many(settled),
        }
    }
}

/// Runs a unit to its end. `arrived` is when its lane started it.
async fn run_unit<P: Processor>(ctx: &WorkerContext<P>, unit: Unit, arrived: Instant) -> Finished {
    match unit {
        Unit::One(job) => run_one(ctx, job, arrived).await,
        Unit::Batch(jobs) => Box::pin(run_batch(ctx, jobs, arrived)).await.into(),
    }
}

/// Runs a batch: its jobs not tried yet together, and those coming back from a wait for their
/// target each with its own progress.
async fn run_batch<P: Processor>(
    ctx: &WorkerContext<P>,
    jobs: Vec<Job>,
    arrived: Instant,
) -> Settled {
    if jobs.iter().all(|job| job.resume.is_none()) {
        return run_jobs(ctx, jobs, Progress::new(arrived)).await;
    }
    let (resumed, fresh): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|job| job.resume.is_some());
    let mut settled = if fresh.is_empty() {
        Settled::default()
    } else {
        run_jobs(ctx, fresh, Progress::new(arrived)).await
    };
    for outcome in futures::future::join_all(resumed.into_iter().map(|job| resume(ctx, job))).await
    {
        settled.extend(outcome);
    }
    settled
}

/// Runs a job that waited for its target's circuit, from where its attempts had got to.
async fn resume<P: Processor>(ctx: &WorkerContext<P>, mut job: Job) -> Settled {
    let progress = job
        .resume
        .take()
        .map_or_else(|| Progress::new(Instant::now()), |progress| *progress);
    run_jobs(ctx, vec![job], progress).await
}

/// Runs one job to its end: decoding, the form lookup and a first attempt that succeeds run
/// here, without a vector or a box; anything else takes the general path ([`run_jobs`]'s).
///
/// Every unit in flight is one of these futures, moved into its lane's set, so it is kept small.
async fn run_one<P: Processor>(ctx: &WorkerContext<P>, job: Job, arrived: Instant) -> Finished {
    if job.resume.is_some() {
        return Box::pin(resume(ctx, job)).await.into();
    }
    let mut attempting = match prepare_now(ctx, job) {
        Ok(attempting) => attempting,
        // A schema to fetch, a form to wait for, or a record to dead-letter.
        Err(job) => {
            return Box::pin(run_jobs(ctx, vec![job], Progress::new(arrived)))
                .await
                .into();
        }
    };
    if !attempting.job.alive() {
        // Revoked meanwhile: the partition belongs to another instance now.
        return Finished::None;
    }
    attempting.record.attempt = 1;
    // The targets are asked again after the effect rather than kept across it: this future is
    // every unit in flight, and stays small.
    if let Some(target) = ctx
        .targets
        .holding(&ctx.processor.targets(&attempting.record))
    {
        return Finished::Waiting(Box::new(wait_for(
            attempting,
            target,
            Progress::new(arrived),
        )));
    }
    let mut first = None;
    if *ctx.circuit_tx.borrow() != CircuitState::Open && !ctx.is_stopping() {
        let started = Instant::now();
        let result = ctx.processor.handle(&attempting.record).await;
        ctx.metrics.effect(started.elapsed());
        match result.and_then(|()| outputs_of(ctx, &attempting.record)) {
            Ok(outputs) => {
                ctx.metrics.records("ok", 1);
                note_success(ctx, &ctx.processor.targets(&attempting.record));
                return Finished::One(Completion {
                    outputs,
                    ..Completion::of(&attempting.job)
                });
            }
            Err(failure) => first = Some((vec![Err(failure)], started)),
        }
    }
    let mut settled = Settled::default();
    Box::pin(attempt_until_settled(
        ctx,
        vec![attempting],
        first,
        Progress::new(arrived),
        &mut settled,
    ))
    .await;
    settled.into()
}

/// Runs `jobs` to their end and returns those that finished (done or dead-lettered) or wait for
/// their target: decoding, the form lookup and a first attempt that succeeds run here; failures,
/// retries and dead letters go on in [`attempt_until_settled`], boxed. `progress` says how far
/// their attempts had got (nowhere, unless they come back from a wait).
async fn run_jobs<P: Processor>(
    ctx: &WorkerContext<P>,
    jobs: Vec<Job>,
    progress: Progress,
) -> Settled {
    let mut settled = Settled {
        done: Vec::with_capacity(jobs.len()),
        waiting: Vec::new(),
    };
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
        waiting.map(|job| Box::pin(prepare_rest(ctx, job, jobs, progress.arrived)))
    };
    if let Some(rest) = rest {
        for prepared in rest.await {
            match prepared {
                Prepared::Ready(attempting) => active.push(attempting),
                Prepared::Finished(completion) => settled.done.push(completion),
                Prepared::Abandoned => {}
            }
        }
    }
    hold_back(ctx, &mut active, progress, &mut settled.waiting);
    if active.is_empty() {
        return settled;
    }
    let mut first = None;
    if *ctx.circuit_tx.borrow() != CircuitState::Open && !ctx.is_stopping() {
        // A partition revoked meanwhile belongs to another instance now.
        active.retain(|a| a.job.alive());
        if active.is_empty() {
            return settled;
        }
        for attempting in &mut active {
            attempting.record.attempt = progress.attempts + 1;
        }
        let started = Instant::now();
        let results = call(ctx, &active).await;
        ctx.metrics.effect(started.elapsed());
        let outcomes = outcomes(ctx, &active, results);
        if outcomes.iter().all(Result::is_ok) {
            ctx.metrics.records("ok", outcomes.len() as u64);
            for (attempting, outcome) in active.iter().zip(outcomes) {
                note_success(ctx, &ctx.processor.targets(&attempting.record));
                settled.done.push(Completion {
                    outputs: outcome.unwrap_or_default(),
                    ..Completion::of(&attempting.job)
                });
            }
            return settled;
        }
        first = Some((outcomes, started));
    }
    Box::pin(attempt_until_settled(
        ctx,
        active,
        first,
        progress,
        &mut settled,
    ))
    .await;
    settled
}

/// Hands the records whose target's circuit holds them back to the engine, to wait there
/// (keeping no slot of `--max-in-flight`); the others stay, in order.
fn hold_back<P: Processor>(
    ctx: &WorkerContext<P>,
    active: &mut Vec<Attempting<P::Value>>,
    progress: Progress,
    waiting: &mut Vec<Waiter>,
) {
    let mut index = 0;
    while index < active.len() {
        let held = ctx
            .targets
            .holding(&ctx.processor.targets(&active[index].record));
        match held {
            Some(target) => waiting.push(wait_for(active.remove(index), target, progress)),
            None => index += 1,
        }
    }
}

/// The job of a record to keep until `target`'s circuit lets it go: the record as fetched moves
/// back into it (the decoded value is dropped; it is decoded again when it runs).
fn wait_for<V>(attempting: Attempting<V>, target: Arc<Target>, progress: Progress) -> Waiter {
    let Attempting { mut job, record } = attempting;
    job.raw = record.raw;
    job.resume = Some(Box::new(progress));
    Waiter { target, job }
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
        Some(form_ref) => match form_ref.find(&ctx.view) {
            Some(form) => Some(form),
            None => return Err(job),
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
        Some(bytes) => match decode_patiently(ctx, &job, bytes).await {
            Some(decoded) => decoded,
            None => return Prepared::Abandoned,
        },
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
        Some(form_ref) => match find_form(ctx, &job, form_ref).await {
            FormLookup::Found(form) => Some(form),
            FormLookup::Abandoned => return Prepared::Abandoned,
            FormLookup::Missing => {
                let message = format!(
                    "{form_ref} did not appear in the forms view within {:?} (a form of that id \
                     of another organisation is not this record's)",
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

/// Decodes a payload, waiting out a schema registry that cannot answer now (a timeout, a refused
/// connection, 408, 429, 5xx): the record is not at fault, so it is tried again with capped
/// exponential backoff for as long as it takes, holding its key and its offset uncommitted,
/// never dead-lettered. `Some(Err)` is a payload that cannot be decoded (bad magic byte, an id
/// the working registry does not know, a corrupt body); `None`, a job given up (its partition
/// revoked, or the engine draining) while the registry was out.
async fn decode_patiently<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    bytes: &[u8],
) -> Option<Result<P::Value, String>> {
    let mut delay = REGISTRY_RETRY_FIRST;
    loop {
        match ctx.decoder.decode(bytes).await {
            Ok(value) => return Some(Ok(value)),
            Err(error) if error.is_retriable() => {
                tracing::warn!(
                    topic = %job.tp.topic,
                    partition = job.tp.partition,
                    offset = job.offset,
                    %error,
                    ?delay,
                    "The schema registry cannot answer; decoding again after a pause."
                );
                ctx.pause(delay).await;
                if !job.alive() || ctx.is_stopping() {
                    return None;
                }
                delay = (delay * 2).min(REGISTRY_RETRY_MAX);
            }
            Err(error) => return Some(Err(error.to_string())),
        }
    }
}

/// The first pause after a schema registry failed to answer: short, since most outages of a
/// registry behind a load balancer are a restart.
const REGISTRY_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between two tries of a registry that keeps failing: a registry back up is
/// noticed within this, and a long outage costs one request per record key and this period.
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(30);

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

/// A record's effect succeeded. With targets, their circuits hear of it (nothing to do, and no
/// lock, while none of them failed lately). Without, the processor's one breaker does, after any
/// failure and while its circuit is not closed (a record in flight through the outage may have
/// succeeded and marked the run clean before the probe half-opened it); otherwise it would change
/// nothing, and its lock is skipped.
fn note_success<P: Processor>(ctx: &WorkerContext<P>, targets: &Targets<'_>) {
    if !targets.is_empty() {
        ctx.targets.succeeded(targets);
        return;
    }
    if !ctx.clean.load(Ordering::Acquire) || *ctx.circuit_tx.borrow() != CircuitState::Closed {
        ctx.circuit(CircuitBreaker::on_success);
        ctx.clean.store(true, Ordering::Release);
    }
}

/// What a retriable failure (or a refusal of access) did to the circuit it counts against.
struct Noted {
    /// Its circuit stayed closed: the failure counts against the retry budget.
    counts: bool,
    /// For a refusal: how long its target has refused access.
    refused_for: Option<Duration>,
}

/// Tells the circuit of the target the failure names (or, when it names none of the record's
/// targets, the processor's one circuit) about a retriable failure or a refusal at `now`.
fn note_failure<P: Processor>(
    ctx: &WorkerContext<P>,
    record: &Record<P::Value>,
    failure: &Failure,
    now: tokio::time::Instant,
) -> Noted {
    let refused = matches!(failure, Failure::Forbidden { .. });
    let targets = ctx.processor.targets(record);
    let mut named = targets.of_kind(failure.target()).peekable();
    if named.peek().is_none() {
        ctx.clean.store(false, Ordering::Release);
        let mut refused_for = None;
        ctx.circuit(|breaker| {
            if refused {
                breaker.on_refused(now);
                refused_for = breaker.refused_for(now);
            } else {
                breaker.on_retriable_failure(now);
            }
        });
        return Noted {
            counts: *ctx.circuit_tx.borrow() == CircuitState::Closed,
            refused_for,
        };
    }
    let mut noted = Noted {
        counts: true,
        refused_for: None,
    };
    for target in named {
        let failed = ctx
            .targets
            .failed(*target, refused, now, |t| ctx.processor.target_name(t));
        noted.counts &= !failed.holds;
        if refused {
            noted.refused_for = noted.refused_for.max(failed.refused_for);
        }
    }
    noted
}

/// Why a record refused past `--forbidden-timeout` is dead-lettered, naming its target.
fn refusal_message<P: Processor>(
    ctx: &WorkerContext<P>,
    record: &Record<P::Value>,
    failure: &Failure,
    refused_for: Duration,
) -> String {
    let targets = ctx.processor.targets(record);
    let target = targets
        .of_kind(failure.target())
        .next()
        .map(|target| {
            let target = Target::new(*target);
            format!(
                "{} (organisation {})",
                ctx.processor.target_name(&target),
                target.organisation()
            )
        })
        .unwrap_or_else(|| "the target".to_owned());
    format!(
        "{target} has refused access for {}s, longer than --forbidden-timeout ({}s): {:#}",
        refused_for.as_secs(),
        ctx.targets.settings().forbidden_timeout.as_secs(),
        failure.error()
    )
}

/// Says, before a record is dead-lettered, why.
fn warn_dead_lettering(job: &Job, message: &str, why: &str) {
    tracing::warn!(
        topic = %job.tp.topic,
        partition = job.tp.partition,
        offset = job.offset,
        error = %scrubbed(message),
        "{why}; dead-lettering."
    );
}

/// Attempts, retries and dead-letters `active` until every record is done, dead-lettered,
/// abandoned or handed back to wait for its target, pushing each to `settled`. `first` holds the
/// outcomes of a first attempt already made (and when it started), if any; `progress`, how far
/// the records' attempts had got before.
async fn attempt_until_settled<P: Processor>(
    ctx: &WorkerContext<P>,
    mut active: Vec<Attempting<P::Value>>,
    first: Option<(Vec<Outcome>, Instant)>,
    progress: Progress,
    settled: &mut Settled,
) {
    let (mut pending, started) = match first {
        Some((outcomes, started)) => (Some(outcomes), started),
        None => (None, Instant::now()),
    };
    let arrived = progress.arrived;
    let mut attempts = progress.attempts + u32::from(pending.is_some());
    // Attempts that count against the retry budget: those after which the circuit stayed
    // closed. A failure that is part of an outage (the circuit is open after it) pauses the
    // record instead; a multi-hour outage must not dead-letter the backlog.
    let mut counted = progress.counted;
    let mut circuit_wait = Duration::ZERO;
    let progress_now = |attempts, counted, circuit_wait: Duration| Progress {
        arrived,
        attempts,
        counted,
        spent: progress.spent + started.elapsed().saturating_sub(circuit_wait),
    };
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
                let now = progress_now(attempts, counted, circuit_wait);
                hold_back(ctx, &mut active, now, &mut settled.waiting);
                if active.is_empty() {
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
        let mut counts = false;
        for (attempting, outcome) in active.drain(..).zip(outcomes) {
            let failure = match outcome {
                Ok(outputs) => {
                    ctx.metrics.records("ok", 1);
                    note_success(ctx, &ctx.processor.targets(&attempting.record));
                    settled.done.push(Completion {
                        outputs,
                        ..Completion::of(&attempting.job)
                    });
                    continue;
                }
                Err(failure) => failure,
            };
            let (kind, message) = match &failure {
                Failure::Permanent(error) => {
                    let message = format!("{error:#}");
                    warn_dead_lettering(&attempting.job, &message, "Permanent failure");
                    (Kind::Permanent, message)
                }
                Failure::Retriable { .. } | Failure::Forbidden { .. } => {
                    let noted = note_failure(
                        ctx,
                        &attempting.record,
                        &failure,
                        tokio::time::Instant::now(),
                    );
                    match noted.refused_for {
                        Some(refused_for)
                            if refused_for >= ctx.targets.settings().forbidden_timeout =>
                        {
                            let message =
                                refusal_message(ctx, &attempting.record, &failure, refused_for);
                            warn_dead_lettering(
                                &attempting.job,
                                &message,
                                "Access refused past --forbidden-timeout",
                            );
                            (Kind::Forbidden, message)
                        }
                        _ => {
                            counts |= noted.counts;
                            last_error = format!("{:#}", failure.error());
                            if let Failure::Retriable {
                                retry_after: Some(after),
                                ..
                            } = failure
                            {
                                retry_after = retry_after.max(Some(after));
                            }
                            retry.push(attempting);
                            continue;
                        }
                    }
                }
            };
            if Box::pin(dead_letter(
                ctx,
                &attempting.job,
                &attempting.record.raw,
                kind,
                &message,
                attempts,
                arrived,
            ))
            .await
            {
                settled.done.push(Completion::of(&attempting.job));
            }
        }
        if retry.is_empty() {
            break;
        }
        ctx.metrics.records("retried", retry.len() as u64);
        if counts {
            counted += 1;
        }
        // Records whose target's circuit opened wait in the engine from now on, not here.
        hold_back(
            ctx,
            &mut retry,
            progress_now(attempts, counted, circuit_wait),
            &mut settled.waiting,
        );
        if retry.is_empty() {
            break;
        }
        let elapsed = progress_now(attempts, counted, circuit_wait).spent;
        let delay = ctx
            .retry
            .next_delay(counted.max(1), elapsed, retry_after, &mut rand::rng());
        match delay {
            Some(delay) => {
                tracing::debug!(records = retry.len(), attempts, ?delay, error = %scrubbed(&last_error), "Retriable failure; retrying.");
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
                        settled.done.push(Completion::of(&attempting.job));
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
    form_ref: FormRef<'_>,
) -> FormLookup {
    match form_ref.find(&ctx.view) {
        Some(form) => FormLookup::Found(form),
        None => Box::pin(wait_for_form(ctx, job, form_ref)).await,
    }
}

/// The record's form, waiting (bounded) for the forms view to catch up with it: a response can
/// reach a processor before the form it answers reaches the processor's view.
async fn wait_for_form<P: Processor>(
    ctx: &WorkerContext<P>,
    job: &Job,
    form_ref: FormRef<'_>,
) -> FormLookup {
    let deadline = Instant::now() + ctx.form_wait;
    loop {
        if let Some(form) = form_ref.find(&ctx.view) {
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
                tracing::info!(error = %scrubbed(&format!("{error:#}")), "Probe failed; the circuit stays open.");
                let now = tokio::time::Instant::now();
                ctx.circuit(|breaker| breaker.probe_failed(now));
            }
        }
    }
}
