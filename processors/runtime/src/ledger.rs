//! The effect ledger: what a processor did (or started doing) outside Kafka, per effect key, kept
//! in a compacted Kafka topic so that it survives restarts and partitions moving between
//! instances (docs/design.md, promise 5: the topic is the state; the in-memory map is a cache
//! rebuilt from it at start-up).
//!
//! A processor whose effect cannot be made idempotent by its target (Twilio has no idempotency
//! key) uses it like this, per effect key such as `<response_id>:<revision>:sms`:
//! 1. [`Ledger::get`]; if it says [`Entry::Done`], skip. Otherwise [`Ledger::sync_key`] (or
//!    [`Ledger::sync`]) and `get` again, so that what a previous owner of the partition wrote is
//!    seen before deciding the effect was *not* done;
//! 2. if the entry is [`Entry::Attempted`], a previous attempt may have had its effect: reconcile
//!    with the target (e.g. search Twilio's message list for the attempt's reference);
//! 3. [`Ledger::record`] `Attempted` *before* the effect, run the effect, `record` `Done` after.
//!
//! Invariants:
//! - [`Ledger::record`] returns `Ok` only once Kafka acknowledged the entry (idempotent producer,
//!   `acks=all`), and the entry is visible to [`Ledger::get`] of this instance when it returns.
//! - Entries merge the same way whatever order they are read in (a write applied locally may be
//!   read back from the topic later, and a key's history may span partitions if the topic is ever
//!   repartitioned): `Done` is terminal and beats `Attempted`; of two `Attempted`, the later `at`
//!   wins. So the local view never goes back from `Done` to `Attempted`.
//! - After [`Ledger::sync_key`] returns `Ok`, the view holds every entry of that key that Kafka had
//!   acknowledged when the call started. The partitions' ends it waits for are read by one task
//!   for all callers at once ([`answer_ends`]): a caller's end comes from a request sent after
//!   the caller asked, so it is at least the end at the time of the call.
//!
//! Why every instance reads the whole topic: the runtime moves source partitions between instances
//! at any rebalance, without telling the processor, and a record may come back on any instance (a
//! redelivery after a crash, a replay). Reading only "its" ledger partitions would need the ledger
//! loaded before a newly assigned partition is processed, a hook the runtime does not have. Reading
//! everything is simple and always right, at a memory cost:
//!
//! Memory bound: one map entry per effect key ever recorded (compaction keeps one record per key),
//! about 200 bytes each (key of ~50 bytes, entry with a timestamp and a ~34-byte detail, hash map
//! overhead): 1 million effects cost about 200 MB per instance, and start-up reads them all.
//! Effects are only recorded for what was really sent (a collector notification only for flagged
//! responses), which keeps it far below the number of responses for most processors. Pruning old
//! keys with tombstones (which [`Ledger`] already applies as deletions) is left for when it is
//! needed; a pruned key may be notified again if its record is replayed.
//!
//! Values are JSON (`{"state":"done","at":"...","detail":"SM..."}`): internal state, read only by
//! this module, that an operator can inspect with any Kafka tool.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::follow::{Followed, TopicFollower};
use formstream_core::kafka::{client_config_with, partition_count};
use formstream_core::topics::{TopicSpec, ensure_topics};
use futures::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The ledger flags, for processors that keep one (flatten them into the processor's `Args`).
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Compacted topic of the processor's effect ledger; `<processor>.ledger` when unset.
    #[arg(long, env = "FORMSTREAM_LEDGER_TOPIC")]
    pub ledger_topic: Option<String>,

    /// Partitions of the ledger topic when the processor creates it.
    // Like the responses topic's default: writes spread over the brokers as the responses do.
    #[arg(long, env = "FORMSTREAM_LEDGER_PARTITIONS", default_value_t = 12)]
    pub ledger_partitions: i32,

    /// Replication factor of the ledger topic when the processor creates it (3 in production:
    /// the ledger is what prevents a second SMS).
    // 1 so that the single local broker works out of the box, like the dead-letter topic.
    #[arg(
        long,
        env = "FORMSTREAM_LEDGER_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub ledger_replication_factor: i32,
}

impl LedgerArgs {
    /// The ledger topic of `processor`.
    pub fn topic(&self, processor: &str) -> String {
        self.ledger_topic
            .clone()
            .unwrap_or_else(|| format!("{processor}.ledger"))
    }
}

/// What the ledger knows about one effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Entry {
    /// Written before an effect whose outcome may be unknown afterwards (a timeout after the
    /// request was sent). `reference` is what the effect carries so that it can be found in the
    /// target later (e.g. a reference in an SMS body).
    Attempted {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        reference: String,
    },
    /// The effect happened; `detail` says how it can be found (a Twilio message sid, an HTTP status).
    Done {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        detail: String,
    },
}

impl Entry {
    /// An attempt starting now.
    pub fn attempted(reference: impl Into<String>) -> Self {
        Entry::Attempted {
            at: OffsetDateTime::now_utc(),
            reference: reference.into(),
        }
    }

    /// An effect done now.
    pub fn done(detail: impl Into<String>) -> Self {
        Entry::Done {
            at: OffsetDateTime::now_utc(),
            detail: detail.into(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Entry::Done { .. })
    }

    /// Whether `self`, arriving, replaces `held` (see the module invariants): `Done` is terminal
    /// and beats `Attempted`; of two `Attempted`, the later (or equal) `at` wins.
    fn supersedes(&self, held: &Entry) -> bool {
        match (held, self) {
            (Entry::Done { .. }, _) => false,
            (_, Entry::Done { .. }) => true,
            (Entry::Attempted { at: held, .. }, Entry::Attempted { at: new, .. }) => new >= held,
        }
    }
}

/// An entry as JSON, flat: read straight into its fields (serde reads an internally tagged enum
/// through a buffer of its whole content, several times slower, and start-up reads every entry).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Attempted,
    Done,
}

#[derive(Deserialize)]
struct WireEntry {
    state: State,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    reference: Option<String>,
    detail: Option<String>,
}

impl Entry {
    /// The entry `payload` holds (JSON as [`Entry`] serialises it).
    fn decode(payload: &[u8]) -> Result<Entry, serde_json::Error> {
        let wire: WireEntry = serde_json::from_slice(payload)?;
        let missing = |field| <serde_json::Error as serde::de::Error>::missing_field(field);
        Ok(match wire.state {
            State::Attempted => Entry::Attempted {
                at: wire.at,
                reference: wire.reference.ok_or_else(|| missing("reference"))?,
            },
            State::Done => Entry::Done {
                at: wire.at,
                detail: wire.detail.ok_or_else(|| missing("detail"))?,
            },
        })
    }
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("Kafka did not acknowledge the ledger entry: {0}")]
    Write(#[source] KafkaError),
    #[error("Kafka did not acknowledge the ledger entry within {0:?}")]
    WriteTimeout(Duration),
    #[error("could not read the ledger topic's end offsets: {0}")]
    Watermarks(#[source] KafkaError),
    #[error("the ledger view did not reach the topic's end within {0:?}")]
    SyncTimeout(Duration),
    #[error("the ledger has stopped following its topic")]
    Stopped,
    #[error("setting up the ledger: {0}")]
    Setup(String),
}

/// The follower's view, shared with the task that reads the topic.
#[derive(Default)]
struct View {
    /// foldhash: every entry of the topic is hashed at start-up (a million and more).
    entries: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Per partition, the offset after the last record read: the view holds everything below it.
    positions: HashMap<i32, i64>,
    caught_up: bool,
    /// The follower task has ended (shutdown, or the ledger dropped): no further progress.
    stopped: bool,
}

impl View {
    fn apply(&mut self, key: String, entry: Option<Entry>) {
        match entry {
            // A tombstone: the key was pruned.
            None => {
                self.entries.remove(&key);
            }
            Some(entry) => match self.entries.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    if entry.supersedes(held.get()) {
                        held.insert(entry);
                    }
                }
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert(entry);
                }
            },
        }
    }

    /// Applies one record of the topic and moves its partition's position past it.
    fn read(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let key = message.key().map(String::from_utf8_lossy);
        let entry = message.payload().map(Entry::decode);
        match (key, entry) {
            (Some(key), None) => self.apply(key.into_owned(), None),
            (Some(key), Some(Ok(entry))) => self.apply(key.into_owned(), Some(entry)),
            // Not written by this module; nothing to learn from it, but say so: a lost
            // entry could mean a repeated effect.
            (key, entry) => tracing::error!(
                topic = message.topic(),
                partition,
                offset,
                has_key = key.is_some(),
                error = ?entry.and_then(Result::err).map(|e| e.to_string()),
                "Ledger record that is not a ledger entry; ignored."
            ),
        }
        self.positions.insert(partition, offset + 1);
    }
}

struct Shared {
    view: Mutex<View>,
    /// Woken whenever the view makes progress (a record read, caught up, stopped).
    progress: Notify,
}

impl Shared {
    fn view(&self) -> MutexGuard<'_, View> {
        // A poisoned lock means a panic elsewhere while holding it; the map is still consistent
        // (every mutation is a single insert or remove).
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Inner {
    topic: String,
    partitions: i32,
    producer: FutureProducer,
    shared: Arc<Shared>,
    write_timeout: Duration,
    sync_timeout: Duration,
    /// Requests for partitions' ends, to the task that reads them ([`answer_ends`]); it ends
    /// when this is dropped.
    ends: mpsc::UnboundedSender<EndRequest>,
    /// Dropped with the last clone of the ledger, which stops the follower task.
    _stop: watch::Sender<bool>,
}

/// An effect ledger on a compacted topic; see the module header. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.inner.topic)
            .field("partitions", &self.inner.partitions)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Creates the compacted topic if it is missing, reads it from the beginning, and returns
    /// once the view has caught up with it; `Ok(None)` when `shutdown` completes first. The view
    /// keeps following the topic until `shutdown` completes or the last clone is dropped.
    pub async fn open(
        kafka: &KafkaArgs,
        args: &LedgerArgs,
        processor: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Option<Ledger>, LedgerError> {
        let topic = args.topic(processor);
        let spec = TopicSpec {
            name: topic.clone(),
            partitions: args.ledger_partitions,
            replication_factor: args.ledger_replication_factor,
            // Compaction keeps the newest entry per key (Done, once there is one), for ever.
            config: vec![("cleanup.policy", "compact".to_owned())],
        };
        ensure_topics(kafka, &[spec], Duration::from_secs(30))
            .await
            .map_err(|e| LedgerError::Setup(format!("creating the ledger topic {topic}: {e:#}")))?;

        let write_timeout = Duration::from_secs(30);
        let producer: FutureProducer = client_config_with(kafka, &[])
            // Promise 1's producer: an acknowledged entry is durable and written once, in order.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", write_timeout.as_millis().to_string())
            .create()
            .map_err(|e| LedgerError::Setup(format!("creating the ledger producer: {e}")))?;
        // A topic just created may show no partitions in the first metadata answers: ask again
        // for a few seconds before concluding it has none.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let partitions = loop {
            let producer = producer.clone();
            let topic = topic.clone();
            let partitions = tokio::task::spawn_blocking(move || {
                partition_count(producer.client(), &topic, METADATA_TIMEOUT)
            })
            .await
            .map_err(|e| LedgerError::Setup(e.to_string()))?
            .map_err(|e| LedgerError::Setup(format!("reading the ledger topic's metadata: {e}")))?;
            if partitions > 0 || std::time::Instant::now() >= deadline {
                break partitions;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if partitions == 0 {
            return Err(LedgerError::Setup(format!(
                "the ledger topic {topic} has no partitions"
            )));
        }

        let (stop, mut stopped) = watch::channel(false);
        let Some(follower) = TopicFollower::start(kafka, &topic, "ledger", &[], &mut stopped)
            .await
            .map_err(|e| LedgerError::Setup(format!("following the ledger topic: {e}")))?
        else {
            return Ok(None);
        };
        let shared = Arc::new(Shared {
            view: Mutex::new(View::default()),
            progress: Notify::new(),
        });
        tokio::spawn(follow(follower, stopped, shutdown, shared.clone()));
        let (ends, requests) = mpsc::unbounded_channel();
        tokio::spawn(answer_ends(producer.clone(), topic.clone(), requests));
        let ledger = Ledger {
            inner: Arc::new(Inner {
                topic,
                partitions: partitions as i32,
                producer,
                shared,
                write_timeout,
                // Far above a healthy follower's lag (milliseconds), below the runtime's retry
                // budget: a stuck view costs a retry, not a guess.
                sync_timeout: Duration::from_secs(15),
                ends,
                _stop: stop,
            }),
        };
        let loaded = ledger
            .wait_for(|view| view.caught_up.then_some(()), None)
            .await;
        match loaded {
            Ok(()) => {
                let entries = ledger.inner.shared.view().entries.len();
                tracing::info!(topic = %ledger.inner.topic, entries, "Ledger loaded.");
                Ok(Some(ledger))
            }
            Err(LedgerError::Stopped) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The ledger's topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// What the view holds for `key` now. `None` or `Attempted` may be stale for a key another
    /// instance wrote moments ago: [`Ledger::sync_key`] first before acting on them.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.inner.shared.view().entries.get(key).cloned()
    }

    /// How many keys the view holds (for logs and tests).
    pub fn len(&self) -> usize {
        self.inner.shared.view().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `entry` for `key` and returns once Kafka acknowledged it; the entry is then in this
    /// instance's view (merged as the module header says).
    pub async fn record(&self, key: &str, entry: Entry) -> Result<(), LedgerError> {
        let payload = serde_json::to_vec(&entry)
            .map_err(|e| LedgerError::Setup(format!("encoding a ledger entry: {e}")))?;
        let record = FutureRecord::to(&self.inner.topic)
            .partition(self.partition_of(key))
            .key(key)
            .payload(&payload);
        let timeout = self.inner.write_timeout;
        match self
            .inner
            .producer
            .send(record, Timeout::After(timeout))
            .await
        {
            Ok(_) => {}
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)) => {
                return Err(LedgerError::WriteTimeout(timeout));
            }
            Err((error, _)) => return Err(LedgerError::Write(error)),
        }
        self.inner.shared.view().apply(key.to_owned(), Some(entry));
        Ok(())
    }

    /// Waits until the view has read the partition of `key` up to the end it had when the call
    /// started: every entry of `key` acknowledged before then is in the view. One watermark
    /// request; call it before concluding from [`Ledger::get`] that an effect was not done.
    pub async fn sync_key(&self, key: &str) -> Result<(), LedgerError> {
        self.sync_partitions(vec![self.partition_of(key)]).await
    }

    /// [`Ledger::sync_key`] for every partition: the whole view is at least as recent as the
    /// topic was when the call started. One watermark request per partition.
    pub async fn sync(&self) -> Result<(), LedgerError> {
        self.sync_partitions((0..self.inner.partitions).collect())
            .await
    }

    async fn sync_partitions(&self, partitions: Vec<i32>) -> Result<(), LedgerError> {
        // Every request is sent before any answer is awaited: they join the same reading.
        let mut answers = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (reply, answer) = oneshot::channel();
            self.inner
                .ends
                .send(EndRequest { partition, reply })
                .map_err(|_| LedgerError::Stopped)?;
            answers.push((partition, answer));
        }
        let mut ends = Vec::with_capacity(answers.len());
        for (partition, answer) in answers {
            let end = answer
                .await
                .map_err(|_| LedgerError::Stopped)?
                .map_err(LedgerError::Watermarks)?;
            ends.push((partition, end));
        }
        // The ledger's producer is idempotent, never transactional, and the newest record of a
        // partition sits in its active segment, which compaction never touches: the record just
        // below the high watermark exists and the follower will read it. So "position >= high"
        // is reachable, and means the view has everything below it.
        self.wait_for(
            |view| {
                ends.iter()
                    .all(|(partition, end)| {
                        view.positions.get(partition).copied().unwrap_or(0) >= *end
                    })
                    .then_some(())
            },
            Some(self.inner.sync_timeout),
        )
        .await
    }

    /// Waits until `ready` says yes about the view, the follower stops, or `deadline` passes.
    async fn wait_for<T>(
        &self,
        ready: impl Fn(&View) -> Option<T>,
        deadline: Option<Duration>,
    ) -> Result<T, LedgerError> {
        let shared = &self.inner.shared;
        let wait = async {
            loop {
                // Registered before looking, so that progress between the look and the wait
                // is not missed.
                let notified = shared.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let view = shared.view();
                    if let Some(value) = ready(&view) {
                        return Ok(value);
                    }
                    if view.stopped {
                        return Err(LedgerError::Stopped);
                    }
                }
                notified.await;
            }
        };
        match deadline {
            None => wait.await,
            Some(deadline) => tokio::time::timeout(deadline, wait)
                .await
                .unwrap_or(Err(LedgerError::SyncTimeout(deadline))),
        }
    }

    /// The partition every entry of `key` is written to: a stable hash (FNV-1a), so that
    /// [`Ledger::sync_key`] knows which partition to wait for without asking librdkafka's
    /// partitioner. If the topic is ever given more partitions, a key's later entries may land in
    /// another partition than its earlier ones; the merge rule keeps that correct.
    fn partition_of(&self, key: &str) -> i32 {
        partition_for(key, self.inner.partitions)
    }
}

/// A caller of [`Ledger::sync_key`] asking for the end (high watermark) of `partition`.
struct EndRequest {
    partition: i32,
    reply: oneshot::Sender<Result<i64, KafkaError>>,
}

/// Answers the requests for partitions' ends until the ledger is dropped. Each round takes every
/// request waiting, reads the end of each partition they name once, and answers them all: every
/// request of a round was sent before its reading started, so each caller gets an end at least as
/// recent as the topic's when it asked. With hundreds of records in flight, one reading serves
/// dozens of them, where a reading per record (a blocking thread and a broker round trip each)
/// cost the receipts processor more CPU than anything else it does per record.
async fn answer_ends(
    producer: FutureProducer,
    topic: String,
    mut requests: mpsc::UnboundedReceiver<EndRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut round = vec![first];
        while let Ok(request) = requests.try_recv() {
            round.push(request);
        }
        let mut partitions: Vec<i32> = round.iter().map(|r| r.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let producer = producer.clone();
        let topic = topic.clone();
        // fetch_watermarks blocks on the network.
        let read = tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|partition| {
                    let end = producer
                        .client()
                        .fetch_watermarks(&topic, partition, Timeout::After(METADATA_TIMEOUT))
                        .map(|(_, high)| high);
                    (partition, end)
                })
                .collect::<HashMap<i32, Result<i64, KafkaError>>>()
        })
        .await;
        // A panicked reading drops the round's replies: its callers see the ledger stopped.
        let Ok(ends) = read else { continue };
        for request in round {
            if let Some(end) = ends.get(&request.partition) {
                // The caller may have given up (its record was cancelled); nothing to do.
                let _ = request.reply.send(end.clone());
            }
        }
    }
}

/// FNV-1a over `key`, modulo `partitions`.
fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % partitions.max(1) as u32) as i32
}

/// Records of the topic applied under one lock of the view, at most.
const BATCH: usize = 4096;

fn read_followed(view: &mut View, followed: Followed<'_>) {
    match followed {
        Followed::CaughtUp => view.caught_up = true,
        Followed::Record(message) => view.read(&message),
    }
}

/// Reads the ledger topic into the view until `shutdown` completes or the ledger is dropped.
async fn follow(
    mut follower: TopicFollower,
    mut stopped: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    shared: Arc<Shared>,
) {
    tokio::pin!(shutdown);
    'following: loop {
        let next = tokio::select! {
            _ = &mut shutdown => None,
            next = follower.next(&mut stopped) => next,
        };
        let Some(first) = next else {
            break;
        };
        {
            let mut view = shared.view();
            read_followed(&mut view, first);
            // What the consumer has already fetched is applied under the same lock, and the
            // waiters are woken once for all of it: at start-up the whole topic comes in bulk,
            // and a wake-up per record (the opening waits for the view to catch up) cost more
            // than the records themselves. A batch ends as soon as nothing more is at hand, so
            // a waiter never waits for more than what has arrived.
            for _ in 1..BATCH {
                match follower.next(&mut stopped).now_or_never() {
                    Some(Some(followed)) => read_followed(&mut view, followed),
                    Some(None) => {
                        drop(view);
                        shared.progress.notify_waiters();
                        break 'following;
                    }
                    None => break,
                }
            }
        }
        shared.progress.notify_waiters();
    }
    shared.view().stopped = true;
    shared.progress.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    fn attempted(seconds: i64, reference: &str) -> Entry {
        Entry::Attempted {
            at: at(seconds),
            reference: reference.to_owned(),
        }
    }

    fn done(seconds: i64, detail: &str) -> Entry {
        Entry::Done {
            at: at(seconds),
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn done_is_terminal_whatever_the_order() {
        let entries = [attempted(10, "a"), done(11, "SM1"), attempted(12, "b")];
        // Every order in which the three can be applied ends in the same Done.
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let mut view = View::default();
            for index in order {
                view.apply("k".into(), Some(entries[index].clone()));
            }
            assert_eq!(view.entries.get("k"), Some(&done(11, "SM1")), "{order:?}");
        }
    }

    #[test]
    fn the_latest_attempt_wins_and_the_first_done_stays() {
        let mut view = View::default();
        view.apply("k".into(), Some(attempted(20, "new")));
        view.apply("k".into(), Some(attempted(10, "old")));
        assert_eq!(view.entries.get("k"), Some(&attempted(20, "new")));
        view.apply("k".into(), Some(done(30, "SM1")));
        view.apply("k".into(), Some(done(31, "SM2")));
        assert_eq!(view.entries.get("k"), Some(&done(30, "SM1")));
        // A tombstone prunes the key; other keys are untouched.
        view.apply("other".into(), Some(attempted(1, "x")));
        view.apply("k".into(), None);
        assert_eq!(view.entries.get("k"), None);
        assert!(view.entries.contains_key("other"));
    }

    #[test]
    fn entries_are_json_an_operator_can_read() {
        let entry = done(1_700_000_000, "SM0123");
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "done", "at": "2023-11-14T22:13:20Z", "detail": "SM0123"})
        );
        assert_eq!(serde_json::from_value::<Entry>(json).unwrap(), entry);
        let json = serde_json::to_value(attempted(0, "FSABC")).unwrap();
        assert_eq!(json["state"], "attempted");
        assert_eq!(json["reference"], "FSABC");
    }

    #[test]
    fn entries_decode_as_serde_reads_them() {
        for entry in [done(1_700_000_000, "SM0123"), attempted(12, "FSABC")] {
            let json = serde_json::to_vec(&entry).unwrap();
            assert_eq!(Entry::decode(&json).unwrap(), entry);
        }
        // Fields it does not know are ignored, as serde's own reading does; a missing one fails.
        let extra = br#"{"state":"done","at":"2023-11-14T22:13:20Z","detail":"SM1","by":"x"}"#;
        assert_eq!(Entry::decode(extra).unwrap(), done(1_700_000_000, "SM1"));
        for bad in [
            &br#"{"state":"done","at":"2023-11-14T22:13:20Z"}"#[..],
            br#"{"state":"attempted","at":"2023-11-14T22:13:20Z","detail":"SM1"}"#,
            br#"{"state":"gone","at":"2023-11-14T22:13:20Z","detail":"SM1"}"#,
            br#"{"state":"done","at":"yesterday","detail":"SM1"}"#,
            b"not json",
        ] {
            assert!(
                Entry::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(serde_json::from_slice::<Entry>(bad).is_err());
        }
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for partitions in [1, 3, 12] {
            for key in ["", "r1:0:sms", "r1:0:webhook", "0b9e4a44-aaaa:17:sms"] {
                let partition = partition_for(key, partitions);
                assert!((0..partitions).contains(&partition));
                assert_eq!(partition, partition_for(key, partitions));
            }
        }
        // Known FNV-1a 32 value of "a": 0xe40c292c.
        assert_eq!(
            partition_for("a", i32::MAX),
            (0xe40c_292c_u32 % i32::MAX as u32) as i32
        );
        assert_eq!(partition_for("anything", 0), 0);
    }

    #[test]
    fn the_topic_defaults_to_the_processors_name() {
        let args = LedgerArgs {
            ledger_topic: None,
            ledger_partitions: 12,
            ledger_replication_factor: 1,
        };
        assert_eq!(args.topic("notify-collectors"), "notify-collectors.ledger");
        let args = LedgerArgs {
            ledger_topic: Some("custom".into()),
            ..args
        };
        assert_eq!(args.topic("notify-collectors"), "custom");
    }
}
