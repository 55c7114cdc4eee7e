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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_ingest::forms::{FormsView, now_millis};
use formstream_schemas::Codec;
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::circuit::{CircuitBreaker, CircuitState};
use crate::config::RuntimeConfig;
use crate::dlq::DeadLetters;
use crate::keyed::KeyedQueue;
use crate::metrics::{CircuitGauge, Metrics};
use crate::processor::{ORDERING_HEADER, Output, Processor};
use crate::raw::RawRecord;
use crate::tracker::OffsetTracker;
use crate::transactions::{TransactionError, Transactor};
use crate::worker::{self, Alive, Job, Report, Unit, WorkerContext};

/// Most records taken from the consumer per turn of the loop, so that completions and timers
/// are not kept waiting by a long backlog.
const MAX_INTAKE: usize = 512;

/// Units handed to the lanes, as a multiple of `--max-in-flight`. The lanes run at most
/// `--max-in-flight` at once and keep the rest waiting, so that a lane never idles while the
/// engine gets its turn: with only as many units handed over as may run, a processor whose
/// effects end at once (a no-op, a CPU-bound transform) spent a part of every round trip with
/// its lanes empty. Memory stays bounded by the buffer limits, which count these units too.
const LANE_BACKLOG: usize = 4;

/// Longest the engine stops taking records from the consumer because its buffers are full. Past
/// it, the partitions are paused instead, so that the consumer is polled again (rebalances are
/// served on the same queue, and librdkafka expects a poll within max.poll.interval.ms).
const MAX_INTAKE_STOP: Duration = Duration::from_secs(10);

/// Maps and sets keyed by [`Tp`], touched for every record: foldhash rather than SipHash (the keys
/// are topic names and partition numbers from the broker, not from clients).
type TpMap<V> = HashMap<Tp, V, foldhash::fast::RandomState>;
type TpSet = HashSet<Tp, foldhash::fast::RandomState>;

/// Where a record's ordering key comes from; hashed with the key, so that a header value and a
/// Kafka key that happen to be equal are still different keys.
#[derive(Debug, Clone, Copy, Hash)]
enum OrderedBy {
    /// The `response_id` header ([`ORDERING_HEADER`]).
    Header,
    /// The Kafka key (the form id), for a record without the header.
    Key,
}

/// A topic partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tp {
    pub topic: &'static str,
    pub partition: i32,
}

/// The one copy of a topic's name, kept for the life of the process. Every record carries its
/// topic from the engine to a lane and back: as a reference count, that was several atomic
/// writes per record to one cache line, from the engine's thread and every lane's. A process
/// reads a handful of topics, so keeping their names costs nothing.
pub fn intern(topic: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = names.iter().find(|name| **name == topic) {
        return name;
    }
    let name: &'static str = Box::leak(topic.into());
    names.push(name);
    name
}

/// What this instance holds for one assigned partition.
struct PartitionState {
    /// Changes with every assignment, so that completions of a revoked assignment are recognised.
    epoch: u64,
    /// Cleared on revoke: workers of this assignment stop retrying and never dead-letter.
    alive: Arc<Alive>,
    /// Created at the first record fetched after the assignment.
    tracker: Option<OffsetTracker>,
    /// Records waiting behind an earlier record of the same key.
    keyed: KeyedQueue<Job>,
    /// Fetched and not finished.
    buffered_records: usize,
    buffered_bytes: usize,
    /// The last offset stored for commit (committed, for a transactional processor).
    stored: i64,
    /// A transactional processor's outputs of finished records, by offset, until a transaction
    /// commits them together with an offset past them.
    outputs: BTreeMap<i64, Vec<Output>>,
    /// When the watermark last moved, for lag in seconds when no record is buffered.
    last_progress: Instant,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            alive: Arc::new(Alive::default()),
            tracker: None,
            keyed: KeyedQueue::new(),
            buffered_records: 0,
            buffered_bytes: 0,
            stored: -1,
            outputs: BTreeMap::new(),
            last_progress: Instant::now(),
        }
    }
}

/// Partition state, shared between the engine task and the rebalance callbacks (which run inside
/// the consumer's poll, on the engine task, while it does not hold the lock).
#[derive(Default)]
pub struct Shared {
    partitions: TpMap<PartitionState>,
    next_epoch: u64,
}

/// A processor's [`Processor::start_offsets`], boxed so that the consumer's context stays
/// non-generic: (topic, assigned partitions) to the next offset to read per partition.
pub type StartOffsets = Box<dyn Fn(&str, &[i32]) -> Option<HashMap<i32, i64>> + Send + Sync>;

/// The consumer's context: commits finished offsets when partitions are revoked, keeps the
/// partition state in step with the assignment, and starts assigned partitions where the
/// processor says when it keeps its own offsets.
pub struct RuntimeContext {
    shared: Arc<Mutex<Shared>>,
    metrics: Metrics,
    /// End of each partition as librdkafka last saw it (its statistics, every second): the last
    /// stable offset, which is where a read_committed consumer's lag ends.
    ends: Mutex<HashMap<Tp, i64>>,
    /// Offsets are committed only inside transactions (with the outputs): none on revoke.
    transactional: bool,
    /// The processor's own start offsets, consulted on every assignment.
    start_offsets: Option<StartOffsets>,
}

impl RuntimeContext {
    pub fn new(metrics: Metrics, transactional: bool) -> Self {
        RuntimeContext {
            shared: Arc::new(Mutex::new(Shared::default())),
            metrics,
            ends: Mutex::new(HashMap::new()),
            transactional,
            start_offsets: None,
        }
    }

    /// Starts assigned partitions at the offsets `hook` gives instead of the group's commits.
    pub fn with_start_offsets(mut self, hook: StartOffsets) -> Self {
        self.start_offsets = Some(hook);
        self
    }

    /// Writes the processor's start offsets into an assignment before it is applied: librdkafka
    /// starts an assigned partition at the offset its assignment entry carries, and at the
    /// group's committed offset only when the entry has none (`Offset::Invalid`).
    fn apply_start_offsets(&self, assignment: &mut TopicPartitionList) {
        let Some(hook) = &self.start_offsets else {
            return;
        };
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for element in assignment.elements() {
            by_topic
                .entry(element.topic().to_owned())
                .or_default()
                .push(element.partition());
        }
        for (topic, partitions) in by_topic {
            let Some(offsets) = hook(&topic, &partitions) else {
                continue;
            };
            for partition in partitions {
                let Some(&offset) = offsets.get(&partition) else {
                    continue;
                };
                match assignment.set_partition_offset(&topic, partition, Offset::Offset(offset)) {
                    Ok(()) => tracing::info!(
                        %topic,
                        partition,
                        offset,
                        "Starting at the processor's own offset."
                    ),
                    Err(error) => tracing::warn!(
                        %error,
                        %topic,
                        partition,
                        "Could not set the processor's start offset; starting at the group's."
                    ),
                }
            }
        }
    }

    fn end_of(&self, tp: &Tp) -> Option<i64> {
        self.ends.lock().ok()?.get(tp).copied()
    }
}

impl ClientContext for RuntimeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error.");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Ok(mut ends) = self.ends.lock() else {
            return;
        };
        for (topic, stats) in statistics.topics {
            let topic = intern(&topic);
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's internal "UA" partition, and offsets it does not know yet.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if partition >= 0 && end >= 0 {
                    ends.insert(Tp { topic, partition }, end);
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    /// rust-rdkafka's own rebalance handling (pre-rebalance, then (incremental) assign or
    /// unassign, then post-rebalance), with one addition: an assignment first takes the
    /// processor's start offsets ([`RuntimeContext::with_start_offsets`]). Setting them in the
    /// list handed to `incremental_assign` is atomic with the assignment, unlike a seek after
    /// it, which races with the fetcher and fails for a partition not yet fetching.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assign {
            self.apply_start_offsets(tpl);
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Rebalance error.");
                Rebalance::Error(KafkaError::Rebalance(code))
            }
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let applied = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(error) = applied {
            tracing::error!(%error, assign, "Could not apply the rebalance.");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let lost = consumer.assignment_lost();
        let mut commit = TopicPartitionList::new();
        if let Ok(mut shared) = self.shared.lock() {
            for element in revoked.elements() {
                let tp = Tp {
                    topic: intern(element.topic()),
                    partition: element.partition(),
                };
                let Some(state) = shared.partitions.remove(&tp) else {
                    continue;
                };
                // Workers of this assignment stop; their completions will be dropped.
                state.alive.end();
                // A transactional processor's finished work is committed only with its outputs;
                // what no transaction committed yet is redone by the new owner, exactly once.
                if let Some(tracker) = &state.tracker
                    && !lost
                    && !self.transactional
                {
                    let _ = commit.add_partition_offset(
                        tp.topic,
                        tp.partition,
                        Offset::Offset(tracker.watermark()),
                    );
                }
                self.metrics.forget_partition(tp.topic, tp.partition);
            }
        }
        self.metrics
            .rebalance(if lost { "lost" } else { "revoked" }, revoked.count());
        if lost {
            tracing::warn!(
                partitions = revoked.count(),
                "Partitions lost; their work is abandoned uncommitted."
            );
            return;
        }
        if commit.count() > 0 {
            // Commit what is finished before the partitions move to another instance.
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = commit.count(),
                    "Committed finished offsets of revoked partitions."
                ),
                Err(error) => {
                    tracing::warn!(%error, "Commit on revoke failed; the new owner will redo some records.")
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        if let Ok(mut shared) = self.shared.lock() {
            for element in assigned.elements() {
                shared.next_epoch += 1;
                let epoch = shared.next_epoch;
                shared.partitions.insert(
                    Tp {
                        topic: intern(element.topic()),
                        partition: element.partition(),
                    },
                    PartitionState::new(epoch),
                );
            }
        }
        self.metrics.rebalance("assigned", assigned.count());
        tracing::info!(partitions = assigned.count(), "Partitions assigned.");
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => self.metrics.commit(true),
            // Nothing to commit is not a failure.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.commit(false);
                tracing::warn!(%error, "Offset commit failed; it is retried with the next one.");
            }
        }
    }
}

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

/// One lane of the worker pool, as the engine sees it.
struct Lane {
    /// Slices of units for the lane. Unbounded, but never holds more than `LANE_BACKLOG` x
    /// `max_in_flight` units over all lanes: `in_flight` counts them until the lane reports them
    /// ended.
    work: mpsc::UnboundedSender<Vec<Unit>>,
    /// Units handed to this lane and not ended yet (the engine gives new units to the lane with
    /// the fewest).
    units: usize,
}

pub struct Engine<P: Processor> {
    consumer: Arc<StreamConsumer<RuntimeContext>>,
    shared: Arc<Mutex<Shared>>,
    worker: Arc<WorkerContext<P>>,
    limits: Limits,
    metrics: Metrics,
    /// Runnable jobs (their key is free) waiting for an in-flight slot or a closed circuit.
    ready: VecDeque<Job>,
    /// Units (a job, or a batch of jobs) handed to a lane and not ended yet, running or waiting
    /// there: at most `LANE_BACKLOG` x `max_in_flight`.
    in_flight: usize,
    /// The lanes that run the units (see `start_lanes`); empty until the engine runs.
    lanes: Vec<Lane>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Hashes ordering keys for the partitions' [`KeyedQueue`]s, with a per-process random seed.
    key_hasher: foldhash::fast::RandomState,
    circuit_rx: watch::Receiver<CircuitState>,
    /// Partitions paused by this engine (back-pressure, the circuit or the drain).
    paused: TpSet,
    /// Partitions whose watermark moved since offsets were last stored.
    dirty: TpSet,
    /// When the oldest job of the ready queue became ready (for batch linger).
    ready_since: Option<Instant>,
    /// The processor takes batches (its batch size is above 1): only then does `ready_since`
    /// matter.
    batching: bool,
    /// Since when the buffers have been too full to take more records from the consumer.
    intake_blocked_since: Option<Instant>,
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
        let shared = consumer.context().shared.clone();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let circuit = CircuitBreaker::new(
            config.circuit_threshold,
            config.probe_base,
            config.probe_max,
        );
        let (circuit_tx, circuit_rx) = watch::channel(CircuitState::Closed);
        let worker = Arc::new(WorkerContext {
            processor,
            decoder: codec.decoder(),
            view,
            dead_letters,
            retry: config.retry_policy(),
            form_wait: config.form_wait,
            circuit: Mutex::new(circuit),
            circuit_tx,
            stopping: watch::channel(false).0,
            clean: AtomicBool::new(true),
            metrics: metrics.clone(),
        });
        let batching = worker.processor.batch_size() > 1;
        Engine {
            consumer: Arc::new(consumer),
            shared,
            worker,
            limits: Limits::from_config(config),
            metrics,
            ready: VecDeque::new(),
            in_flight: 0,
            lanes: Vec::new(),
            reports_tx,
            reports,
            key_hasher: foldhash::fast::RandomState::default(),
            circuit_rx,
            paused: TpSet::default(),
            dirty: TpSet::default(),
            ready_since: None,
            batching,
            intake_blocked_since: None,
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
        self.start_lanes();
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
                        failed = Some(error);
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
                    if self.intake_blocked_since.is_some() {
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
                    self.apply_pauses();
                    self.dispatch();
                    self.store_offsets();
                }
                _ = metrics_tick.tick() => self.report(),
                message = consumer.recv(), if self.intake_open() => {
                    match message {
                        Ok(message) => self.on_message(&message),
                        Err(error) => tracing::warn!(%error, "Consumer error."),
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
            return Err(anyhow::Error::new(error).context("stopping the processor"));
        }
        let drained = self.drain().await;
        probe.abort();
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

    /// Commits, in one transaction, every partition's finished offsets and the outputs of the
    /// records below them. A transaction that fails is aborted and its work kept for the next
    /// one; only a fatal producer error is returned.
    async fn commit_transaction(&mut self) -> Result<(), TransactionError> {
        let Some(transactor) = self.transactor.clone() else {
            return Ok(());
        };
        let mut offsets = TopicPartitionList::new();
        let mut outputs = Vec::new();
        let mut covered = Vec::new();
        if let Ok(shared) = self.shared.lock() {
            for (tp, state) in &shared.partitions {
                let Some(watermark) = state.tracker.as_ref().map(OffsetTracker::watermark) else {
                    continue;
                };
                if watermark <= state.stored
                    || offsets
                        .add_partition_offset(tp.topic, tp.partition, Offset::Offset(watermark))
                        .is_err()
                {
                    continue;
                }
                outputs.extend(
                    state
                        .outputs
                        .range(..watermark)
                        .flat_map(|(_, o)| o.iter().cloned()),
                );
                covered.push((*tp, state.epoch, watermark));
            }
        }
        if covered.is_empty() {
            return Ok(());
        }
        let Some(group) = self.consumer.group_metadata() else {
            return Ok(());
        };
        let started = Instant::now();
        let count = outputs.len();
        let outcome =
            tokio::task::spawn_blocking(move || transactor.commit(&outputs, &offsets, &group))
                .await
                .unwrap_or_else(|join| {
                    Err(TransactionError::Retry(KafkaError::Canceled)).inspect_err(|_| {
                        tracing::warn!(error = %join, "Transaction task failed.");
                    })
                });
        match outcome {
            Ok(()) => {
                self.metrics.commit(true);
                self.metrics.transaction(started.elapsed(), count);
                if let Ok(mut shared) = self.shared.lock() {
                    for (tp, epoch, watermark) in covered {
                        // A partition revoked meanwhile keeps nothing here any more.
                        if let Some(state) = shared.partitions.get_mut(&tp)
                            && state.epoch == epoch
                        {
                            state.stored = watermark;
                            state.outputs = state.outputs.split_off(&watermark);
                        }
                    }
                }
                Ok(())
            }
            Err(TransactionError::Retry(error)) => {
                self.metrics.commit(false);
                tracing::warn!(%error, "Transaction aborted; its outputs and offsets go in the next one.");
                Ok(())
            }
            Err(fatal) => {
                self.metrics.commit(false);
                Err(fatal)
            }
        }
    }

    /// The interned name of a consumed topic.
    fn topic_name(&mut self, topic: &str) -> &'static str {
        if let Some(name) = self.topic_names.iter().find(|name| **name == topic) {
            return name;
        }
        let name = intern(topic);
        self.topic_names.push(name);
        name
    }

    /// Tracks a fetched record and queues it behind its key.
    fn on_message(&mut self, message: &BorrowedMessage<'_>) {
        let tp = Tp {
            topic: self.topic_name(message.topic()),
            partition: message.partition(),
        };
        let offset = message.offset();
        let timestamp_ms = message.timestamp().to_millis();

        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        let Some(state) = shared.partitions.get_mut(&tp) else {
            // Not (or no longer) assigned here: the owner will handle it.
            return;
        };
        let tracker = state
            .tracker
            .get_or_insert_with(|| OffsetTracker::new(offset));
        if !tracker.track(offset, timestamp_ms) {
            return;
        }
        // The record outlives librdkafka's copy (it is handed to a lane): copy it out once.
        let headers = message.headers();
        let raw = RawRecord::new(message.key(), message.payload(), || {
            headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|header| (header.key, header.value.unwrap_or_default()))
        });
        // The response id orders a response's revisions; without it, the Kafka key (the form id)
        // does; a record with neither is ordered by nothing but its offset.
        let ordering_key = match raw.header(ORDERING_HEADER) {
            Some(id) if std::str::from_utf8(id).is_ok() => {
                Some(self.key_hasher.hash_one((OrderedBy::Header, id)))
            }
            _ => raw
                .key()
                .map(|key| self.key_hasher.hash_one((OrderedBy::Key, key))),
        };
        let bytes = raw.len() + 64;
        state.buffered_records += 1;
        state.buffered_bytes += bytes;
        let job = Job {
            tp,
            epoch: state.epoch,
            alive: state.alive.clone(),
            offset,
            raw,
            timestamp_ms,
            ordering_key,
            bytes,
        };
        let runnable = match ordering_key {
            Some(ordering_key) => state.keyed.push(ordering_key, job),
            None => Some(job),
        };
        drop(shared);
        if let Some(job) = runnable {
            self.make_ready(job);
        }
    }

    /// Queues a job whose key is free for a lane.
    fn make_ready(&mut self, job: Job) {
        if self.batching && self.ready.is_empty() {
            self.ready_since = Some(Instant::now());
        }
        self.ready.push_back(job);
    }

    /// Starts the worker pool: one lane per thread of the runtime (see [`worker::run_lane`]),
    /// each running many units at once, their limits adding up to `max_in_flight`. The lanes
    /// end when the engine, and with it their sending sides, is dropped and their work has ended.
    fn start_lanes(&mut self) {
        let threads = tokio::runtime::Handle::current().metrics().num_workers();
        let max = self.limits.max_in_flight;
        let lanes = threads.clamp(1, max);
        for lane in 0..lanes {
            let (work, work_rx) = mpsc::unbounded_channel();
            let limit = max / lanes + usize::from(lane < max % lanes);
            tokio::spawn(worker::run_lane(
                self.worker.clone(),
                lane,
                limit,
                work_rx,
                self.reports_tx.clone(),
            ));
            self.lanes.push(Lane { work, units: 0 });
        }
    }

    /// Hands ready jobs to the lanes while they hold fewer than `LANE_BACKLOG` x `max_in_flight`
    /// units and the circuit is not open: each unit goes to the lane with the fewest units, and
    /// each lane gets its units in one message.
    fn dispatch(&mut self) {
        if *self.circuit_rx.borrow() == CircuitState::Open || self.lanes.is_empty() {
            return;
        }
        let batch_size = self.worker.processor.batch_size().max(1);
        let mut outgoing: Vec<Vec<Unit>> = Vec::new();
        while self.in_flight < self.limits.max_in_flight * LANE_BACKLOG && !self.ready.is_empty() {
            if batch_size > 1
                && self.ready.len() < batch_size
                && self
                    .ready_since
                    .is_some_and(|since| since.elapsed() < self.worker.processor.batch_linger())
            {
                // A partial batch waits a little for company; housekeeping comes back to it.
                break;
            }
            let unit = if batch_size == 1 {
                let Some(job) = self.ready.pop_front() else {
                    break;
                };
                Unit::One(job)
            } else {
                let take = batch_size.min(self.ready.len());
                Unit::Batch(self.ready.drain(..take).collect())
            };
            self.ready_since = if self.ready.is_empty() || !self.batching {
                None
            } else {
                Some(Instant::now())
            };
            let Some((lane, _)) = self
                .lanes
                .iter()
                .enumerate()
                .min_by_key(|(_, lane)| lane.units)
            else {
                break;
            };
            if outgoing.is_empty() {
                outgoing.resize_with(self.lanes.len(), Vec::new);
            }
            self.lanes[lane].units += 1;
            self.in_flight += 1;
            outgoing[lane].push(unit);
        }
        for (lane, units) in outgoing.into_iter().enumerate() {
            if units.is_empty() {
                continue;
            }
            let count = units.len();
            // Fails only once the lane is gone.
            if self.lanes[lane].work.send(units).is_err() {
                self.lanes[lane].units -= count;
                self.in_flight -= count;
                tracing::warn!(lane, "A worker lane is gone; its records stay unfinished.");
            }
        }
    }

    /// A lane's news: its ended units free their in-flight slots; each finished job moves its
    /// partition's watermark and frees its key.
    fn complete(&mut self, report: Report) {
        if let Some(lane) = self.lanes.get_mut(report.lane) {
            lane.units = lane.units.saturating_sub(report.units);
        }
        self.in_flight = self.in_flight.saturating_sub(report.units);
        if report.completions.is_empty() {
            return;
        }
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        let now = Instant::now();
        let mut next = Vec::new();
        for done in report.completions {
            let Some(state) = shared.partitions.get_mut(&done.tp) else {
                continue;
            };
            if state.epoch != done.epoch {
                // Finished for an assignment that has since been revoked: never committed.
                continue;
            }
            state.buffered_records = state.buffered_records.saturating_sub(1);
            state.buffered_bytes = state.buffered_bytes.saturating_sub(done.bytes);
            if !done.outputs.is_empty() {
                state.outputs.insert(done.offset, done.outputs);
            }
            if let Some(tracker) = state.tracker.as_mut()
                && tracker.complete(done.offset)
            {
                state.last_progress = now;
                if !self.dirty.contains(&done.tp) {
                    self.dirty.insert(done.tp);
                }
            }
            if let Some(job) = done.ordering_key.and_then(|key| state.keyed.finish(key)) {
                next.push(job);
            }
        }
        drop(shared);
        for job in next {
            self.make_ready(job);
        }
    }

    /// Stores the watermark of every partition whose watermark moved; librdkafka commits stored
    /// offsets every commit interval (and we commit them on revoke and at shutdown).
    fn store_offsets(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        if let Ok(shared) = self.shared.lock() {
            for tp in &self.dirty {
                if let Some(watermark) = shared
                    .partitions
                    .get(tp)
                    .and_then(|state| state.tracker.as_ref())
                    .map(OffsetTracker::watermark)
                {
                    self.worker
                        .processor
                        .finished_below(tp.topic, tp.partition, watermark);
                }
            }
        }
        if self.transactor.is_some() {
            // Committed by transactions only (see `commit_transaction`).
            self.dirty.clear();
            return;
        }
        let mut list = TopicPartitionList::new();
        if let Ok(mut shared) = self.shared.lock() {
            for tp in self.dirty.drain() {
                let Some(state) = shared.partitions.get_mut(&tp) else {
                    continue;
                };
                let Some(watermark) = state.tracker.as_ref().map(OffsetTracker::watermark) else {
                    continue;
                };
                if watermark > state.stored
                    && list
                        .add_partition_offset(tp.topic, tp.partition, Offset::Offset(watermark))
                        .is_ok()
                {
                    state.stored = watermark;
                }
            }
        }
        if list.count() > 0
            && let Err(error) = self.consumer.store_offsets(&list)
        {
            // A partition revoked in between: its new owner starts from the last commit.
            tracing::debug!(%error, "Could not store offsets.");
        }
    }

    /// How many more records the buffers take now (0 when either bound is reached).
    fn room(&self) -> usize {
        self.shared.lock().map_or(0, |shared| {
            let records: usize = shared.partitions.values().map(|s| s.buffered_records).sum();
            let bytes: usize = shared.partitions.values().map(|s| s.buffered_bytes).sum();
            if bytes >= self.limits.max_buffered_bytes {
                0
            } else {
                self.limits.max_buffered_records.saturating_sub(records)
            }
        })
    }

    /// Whether the loop takes records from the consumer: not while the buffers are full, unless
    /// that has lasted long enough that the partitions were paused and polling resumed.
    fn intake_open(&self) -> bool {
        match self.intake_blocked_since {
            None => true,
            Some(since) => since.elapsed() >= MAX_INTAKE_STOP,
        }
    }

    /// Back-pressure. Buffers full: stop taking records (librdkafka's prefetch, bounded by
    /// queued.max.messages.kbytes, stays where it is) until they are half empty. Circuit open,
    /// or intake stopped for longer than MAX_INTAKE_STOP: pause every assigned partition (which
    /// drops librdkafka's prefetch) and keep polling, so that group membership and rebalances are
    /// served through an outage of any length.
    fn apply_pauses(&mut self) {
        let (records, bytes, assigned) = match self.shared.lock() {
            Ok(shared) => (
                shared
                    .partitions
                    .values()
                    .map(|s| s.buffered_records)
                    .sum::<usize>(),
                shared
                    .partitions
                    .values()
                    .map(|s| s.buffered_bytes)
                    .sum::<usize>(),
                shared.partitions.keys().cloned().collect::<Vec<_>>(),
            ),
            Err(_) => return,
        };
        let full =
            records >= self.limits.max_buffered_records || bytes >= self.limits.max_buffered_bytes;
        let roomy = records <= self.limits.max_buffered_records / 2
            && bytes <= self.limits.max_buffered_bytes / 2;
        if full && self.intake_blocked_since.is_none() {
            self.intake_blocked_since = Some(Instant::now());
        } else if roomy {
            self.intake_blocked_since = None;
        }
        let open = *self.circuit_rx.borrow() == CircuitState::Open;
        let stalled = self
            .intake_blocked_since
            .is_some_and(|since| since.elapsed() >= MAX_INTAKE_STOP);
        let want_paused = open || stalled;
        self.paused.retain(|tp| assigned.contains(tp));
        let mut list = TopicPartitionList::new();
        if want_paused {
            for tp in assigned.iter().filter(|tp| !self.paused.contains(*tp)) {
                let _ = list.add_partition(tp.topic, tp.partition);
            }
            if list.count() > 0 {
                match self.consumer.pause(&list) {
                    Ok(()) => {
                        tracing::debug!(
                            partitions = list.count(),
                            records,
                            bytes,
                            open,
                            "Paused partitions."
                        );
                        self.paused.extend(assigned.iter().cloned());
                    }
                    Err(error) => tracing::warn!(%error, "Could not pause partitions."),
                }
            }
        } else if !self.paused.is_empty() {
            for tp in &self.paused {
                let _ = list.add_partition(tp.topic, tp.partition);
            }
            match self.consumer.resume(&list) {
                Ok(()) => {
                    tracing::debug!(partitions = list.count(), "Resumed partitions.");
                    self.paused.clear();
                }
                Err(error) => tracing::warn!(%error, "Could not resume partitions."),
            }
        }
        self.metrics.paused(self.paused.len());
    }

    /// Lag in records and seconds per partition, and the buffers, for /metrics.
    fn report(&mut self) {
        let now_ms = now_millis();
        let mut buffered = 0;
        if let Ok(shared) = self.shared.lock() {
            for (tp, state) in &shared.partitions {
                buffered += state.buffered_records;
                let high = self.consumer.context().end_of(tp);
                let position = state.tracker.as_ref().map(OffsetTracker::watermark);
                let (Some(high), Some(position)) = (high, position) else {
                    continue;
                };
                let lag = (high - position).max(0);
                let lag_seconds = if lag == 0 {
                    0.0
                } else if let Some(oldest) = state
                    .tracker
                    .as_ref()
                    .and_then(OffsetTracker::oldest_pending_timestamp)
                {
                    (now_ms - oldest).max(0) as f64 / 1000.0
                } else {
                    // Records not fetched yet (paused): at least as old as the stall.
                    state.last_progress.elapsed().as_secs_f64()
                };
                self.metrics
                    .partition(tp.topic, tp.partition, lag, lag_seconds, position);
            }
        }
        self.metrics.in_flight(self.in_flight, buffered);
    }

    /// Graceful stop: no new records, finish the ones in flight (bounded by the drain deadline,
    /// kept below the session timeout), store and commit synchronously.
    async fn drain(&mut self) -> anyhow::Result<()> {
        tracing::info!(in_flight = self.in_flight, "Draining before shutdown.");
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
        self.ready.clear();
        let deadline = tokio::time::Instant::now() + self.limits.drain;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(done)) => {
                    self.complete(done);
                    self.ready.clear();
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.in_flight,
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
        if let Ok(shared) = self.shared.lock() {
            for state in shared.partitions.values() {
                state.alive.end();
            }
        }
        outcome
    }
}
