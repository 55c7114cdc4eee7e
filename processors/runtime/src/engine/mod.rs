//! The engine: consume, order by key, run effects concurrently, complete, commit.
//!
//! Invariant: the offset stored for commit on a partition is its tracker's watermark, so every
//! record below it has finished (its effect succeeded, or it was dead-lettered and Kafka
//! acknowledged the dead letter) within the current assignment of that partition. Completions from
//! an earlier assignment (before a revoke) are dropped, never stored.
//!
//! Shape: one task owns the consumer and all partition state; effects run in a few lanes (spawned
//! tasks, see [`worker::run_lane`]) that take units of work in slices and report completions back
//! in batches over a channel. The consumer is polled continuously, even while every partition
//! is paused, so that the instance keeps its group membership through an outage of any length.
//!
//! The pieces, each testable without a broker:
//! - [`partitions`]: per assigned partition, its epoch, offset tracker, keyed queue and buffers;
//! - [`intake`]: a fetched record becomes a job with its ordering key;
//! - [`lanes`]: the ready queue and the hand-over of units to the lanes;
//! - [`commit`]: what may be committed, stored or put in a transaction;
//! - [`pause`]: back-pressure (stopping intake, pausing and resuming partitions);
//! - [`waiting`]: records waiting for their target's circuit, and the probes of open targets;
//! - [`rebalance`]: the consumer's context (assign, revoke and commit on revoke, start offsets);
//! - [`companion`]: the re-drive topic, assigned and keyed with the source partition by partition;
//! - [`lag`]: lag in records and seconds, for /metrics.

mod commit;
mod companion;
mod intake;
mod lag;
mod lanes;
mod partitions;
mod pause;
mod rebalance;
mod waiting;

pub use companion::Companion;
pub use partitions::{TopicPartition, intern};
pub use rebalance::{RuntimeContext, StartOffsets};

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_core::forms::FormsView;
use formstream_schemas::Codec;
use futures::FutureExt;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::circuit::{CircuitBreaker, CircuitState};
use crate::config::RuntimeConfig;
use crate::dlq::DeadLetters;
use crate::metrics::{CircuitGauge, Metrics};
use crate::processor::Processor;
use crate::targets::TargetCircuits;
use crate::transactions::Transactor;
use crate::worker::{self, Report, WorkerContext};
use lanes::Lanes;
use partitions::{PartitionSet, Partitions};
use pause::Backpressure;
use waiting::Waiting;

/// Most records taken from the consumer per turn of the loop, so that completions and timers
/// are not kept waiting by a long backlog.
const MAX_INTAKE: usize = 512;

/// The engine's bounds and timings.
pub struct Limits {
    pub max_in_flight: usize,
    pub max_buffered_records: usize,
    pub max_buffered_bytes: usize,
    pub drain: Duration,
}

impl Limits {
    pub fn from_config(config: &RuntimeConfig) -> Self {
        Limits {
            max_in_flight: config.max_in_flight.max(1),
            max_buffered_records: config.max_buffered_records.max(1),
            max_buffered_bytes: config.max_buffered_bytes.max(1),
            drain: config.drain(),
        }
    }
}

pub struct Engine<P: Processor> {
    consumer: Arc<StreamConsumer<RuntimeContext>>,
    /// The assigned partitions' state, shared with the consumer's rebalance callbacks.
    partitions: Arc<Mutex<Partitions>>,
    worker: Arc<WorkerContext<P>>,
    limits: Limits,
    metrics: Metrics,
    /// Runnable jobs and the lanes that run them.
    lanes: Lanes,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Hashes ordering keys for the partitions' [`crate::keyed::KeyedQueue`]s, with a
    /// per-process random seed.
    key_hasher: foldhash::fast::RandomState,
    /// [`Processor::orders_revisions`]: records get ordering keys.
    ordered: bool,
    circuit_rx: watch::Receiver<CircuitState>,
    /// Stopped intake and paused partitions.
    backpressure: Backpressure,
    /// Partitions whose watermark moved since offsets were last stored.
    moved: PartitionSet,
    /// Records waiting for their target's circuit.
    waiting: Waiting,
    /// Probes of open targets under way.
    probes: JoinSet<()>,
    /// Revocations seen when the waiting records were last checked for ended assignments.
    revocations_seen: u64,
    /// Kinds of target whose circuits were ever reported, so that a kind whose circuits all
    /// closed reports 0.
    circuit_kinds: Vec<&'static str>,
    /// Names of the consumed topics, as interned (without the lock of [`intern`] per record).
    topic_names: Vec<&'static str>,
    /// For a transactional processor: commits outputs and offsets together.
    transactor: Option<Arc<Transactor>>,
    commit_interval: Duration,
}

impl<P: Processor> Engine<P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        processor: Arc<P>,
        consumer: StreamConsumer<RuntimeContext>,
        codec: Codec,
        view: Arc<FormsView>,
        dead_letters: DeadLetters,
        config: &RuntimeConfig,
        metrics: Metrics,
        transactor: Option<Arc<Transactor>>,
    ) -> Self {
        let partitions = consumer.context().partitions.clone();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let circuit = CircuitBreaker::new(
            config.circuit_threshold,
            config.probe_base,
            config.probe_max,
        );
        let (circuit_tx, circuit_rx) = watch::channel(CircuitState::Closed);
        let limits = Limits::from_config(config);
        let lanes = Lanes::new(
            limits.max_in_flight,
            processor.batch_size(),
            processor.batch_linger(),
        );
        let ordered = processor.orders_revisions();
        let worker = Arc::new(WorkerContext {
            processor,
            decoder: codec.decoder(),
            view,
            dead_letters,
            retry: config.retry_policy(),
            form_wait: config.form_wait,
            circuit: Mutex::new(circuit),
            circuit_tx,
            targets: TargetCircuits::new(config.target_circuits()),
            stopping: watch::channel(false).0,
            clean: AtomicBool::new(true),
            metrics: metrics.clone(),
        });
        Engine {
            consumer: Arc::new(consumer),
            partitions,
            worker,
            limits,
            metrics,
            lanes,
            reports_tx,
            reports,
            key_hasher: foldhash::fast::RandomState::default(),
            ordered,
            circuit_rx,
            backpressure: Backpressure::default(),
            moved: PartitionSet::default(),
            waiting: Waiting::default(),
            probes: JoinSet::new(),
            revocations_seen: 0,
            circuit_kinds: Vec::new(),
            topic_names: Vec::new(),
            transactor,
            commit_interval: config.commit_interval.max(Duration::from_millis(10)),
        }
    }

    /// Runs until `shutdown` completes, then drains (bounded), commits and returns; dropping the
    /// consumer afterwards leaves the group.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let probe = tokio::spawn(worker::probe_loop(self.worker.clone()));
        self.lanes.start(&self.worker, &self.reports_tx);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut transaction_tick = tokio::time::interval(self.commit_interval);
        transaction_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let transactional = self.transactor.is_some();
        let consumer = self.consumer.clone();
        let mut failed = None;
        let mut panicked = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = transaction_tick.tick(), if transactional => {
                    if let Err(error) = self.commit_transaction().await {
                        failed = Some(anyhow::Error::new(error));
                        break;
                    }
                }
                Some(report) = self.reports.recv() => {
                    let panic = report.panicked > 0;
                    self.complete(report);
                    if panic {
                        panicked = true;
                        break;
                    }
                    // Take every report already queued before going back to the consumer.
                    while let Ok(report) = self.reports.try_recv() {
                        self.complete(report);
                    }
                    self.dispatch();
                    self.store_offsets();
                    if self.backpressure.intake_blocked() {
                        self.apply_pauses();
                    }
                }
                Ok(()) = self.circuit_rx.changed() => {
                    let state = *self.circuit_rx.borrow_and_update();
                    self.metrics.circuit(match state {
                        CircuitState::Closed => CircuitGauge::Closed,
                        CircuitState::HalfOpen => CircuitGauge::HalfOpen,
                        CircuitState::Open => CircuitGauge::Open,
                    });
                    match state {
                        CircuitState::Open => tracing::warn!("Circuit open: partitions paused; probing the target."),
                        CircuitState::HalfOpen => tracing::info!("Target answered the probe: resuming."),
                        CircuitState::Closed => tracing::info!("Circuit closed."),
                    }
                    self.apply_pauses();
                    self.dispatch();
                }
                _ = housekeeping.tick() => {
                    self.tend_targets();
                    self.apply_pauses();
                    self.dispatch();
                    self.store_offsets();
                }
                _ = metrics_tick.tick() => self.report(),
                message = consumer.recv(), if self.backpressure.intake_open(Instant::now()) => {
                    match message {
                        Ok(message) => self.on_message(&message),
                        Err(error) => tracing::warn!(%error, "Consumer error."),
                    }
                    // librdkafka's consumer cannot go on after a fatal error (for one, a static
                    // member fenced by its own rejoin after a coordinator restart): it would
                    // stay in the group fetching nothing. Stop, so that a restart rejoins.
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        failed = Some(anyhow::anyhow!("the Kafka consumer failed fatally: {reason} ({code:?})"));
                        break;
                    }
                    // Take what librdkafka has already fetched before going round the loop again,
                    // as far as the buffers have room.
                    for _ in 0..MAX_INTAKE.min(self.room()) {
                        match consumer.recv().now_or_never() {
                            Some(Ok(message)) => self.on_message(&message),
                            Some(Err(error)) => tracing::warn!(%error, "Consumer error."),
                            None => break,
                        }
                    }
                    self.dispatch();
                    self.apply_pauses();
                }
            }
        }
        if let Some(error) = failed {
            // Fenced or broken: nothing more can be committed here. Workers stop; the partitions
            // go to another instance when this one leaves the group, and it redoes what no
            // transaction committed.
            self.worker.stopping.send_replace(true);
            probe.abort();
            self.probes.abort_all();
            return Err(error.context("stopping the processor"));
        }
        let drained = self.drain().await;
        probe.abort();
        self.probes.abort_all();
        if panicked {
            // What finished before the panic is committed by the drain; the panicked records and
            // everything after them are not, and are redone after a restart.
            tracing::error!(
                processor = self.worker.processor.name(),
                "The processor panicked while handling a record; stopping it."
            );
            drained?;
            anyhow::bail!(
                "the {} processor panicked while handling a record (see the panic message above); \
                 its offset was not committed",
                self.worker.processor.name()
            );
        }
        drained
    }

    /// Hands ready jobs to the lanes, unless the circuit is open.
    fn dispatch(&mut self) {
        if *self.circuit_rx.borrow() == CircuitState::Open {
            return;
        }
        self.lanes.dispatch(Instant::now());
    }

    /// A lane's news: its ended units free their in-flight slots; each finished job moves its
    /// partition's watermark and frees its key.
    fn complete(&mut self, report: Report) {
        self.lanes.ended(report.lane, report.units);
        for waiter in report.waiting {
            self.waiting.add(waiter);
        }
        if report.completions.is_empty() {
            return;
        }
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        let now = Instant::now();
        let mut next = Vec::new();
        for done in report.completions {
            if let Some(job) = partitions.complete(done, now, &mut self.moved) {
                next.push(job);
            }
        }
        drop(partitions);
        for job in next {
            self.lanes.push(job, now);
        }
    }

    /// How many more records the buffers take now (0 when either bound is reached; records
    /// waiting for their target count as [`pause::reckoned`] says).
    fn room(&self) -> usize {
        let waiting = self.waiting.weight();
        self.partitions.lock().map_or(0, |partitions| {
            pause::room(
                pause::reckoned(partitions.buffered(), waiting, &self.limits),
                &self.limits,
            )
        })
    }

    /// Graceful stop: no new records, finish the ones in flight (bounded by the drain deadline,
    /// kept below the session timeout), store and commit synchronously.
    async fn drain(&mut self) -> anyhow::Result<()> {
        tracing::info!(
            in_flight = self.lanes.in_flight(),
            "Draining before shutdown."
        );
        // Work that is only waiting (backoff, open circuit) gives up now; running effects finish.
        self.worker.stopping.send_replace(true);
        let mut list = TopicPartitionList::new();
        if let Ok(assignment) = self.consumer.assignment() {
            list = assignment;
        }
        if list.count() > 0
            && let Err(error) = self.consumer.pause(&list)
        {
            tracing::warn!(%error, "Could not pause partitions for the drain.");
        }
        // Jobs not started are abandoned: they were never acted on, and stay uncommitted.
        self.lanes.clear_ready();
        let deadline = tokio::time::Instant::now() + self.limits.drain;
        while self.lanes.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(done)) => {
                    self.complete(done);
                    self.lanes.clear_ready();
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.lanes.in_flight(),
                        "Drain deadline passed; unfinished records stay uncommitted."
                    );
                    break;
                }
            }
        }
        let mut outcome = Ok(());
        if self.transactor.is_some() {
            if let Err(error) = self.commit_transaction().await {
                outcome = Err(anyhow::Error::new(error).context("committing at shutdown"));
            } else {
                tracing::info!("Committed finished offsets and outputs at shutdown.");
            }
        } else {
            self.store_offsets();
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!("Committed finished offsets at shutdown."),
                Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "Commit at shutdown failed."),
            }
        }
        // Workers still running must not dead-letter or retry after we leave.
        if let Ok(partitions) = self.partitions.lock() {
            partitions.end_all();
        }
        outcome
    }
}
