//! The operations on a processor's dead letters: list, show, re-drive and discard, for an
//! operator (every organisation) or on behalf of one organisation (the gateway).
//!
//! How a re-drive (or a discard) stays exactly once, with any number of operators:
//! 1. The operator's producer initialises the dead-letter topic's one transactional id
//!    ([`RedriveTopics::transactional_id`]). Kafka then aborts any transaction another operator
//!    still has open with it, and fences that operator: it can no longer commit.
//! 2. It reads the state topic (committed records only) and the dead-letter topic to their ends:
//!    every state another operator committed before step 1 is seen.
//! 3. It picks the pending dead letters asked for and, in one transaction, writes each one's copy
//!    to the re-drive topic (re-drive only) and its state record, then commits.
//!
//! If another operator starts meanwhile, the commit fails as fenced, nothing of it is visible
//! (readers are `read_committed`, the runtime's consumer included), and the operation starts over
//! from step 1. A crash leaves an open transaction, which the next operator's step 1 (or Kafka's
//! transaction timeout) aborts.
//!
//! Invariant: one dead letter is copied to the re-drive topic at most once in a committed
//! transaction, and only while it was pending; an organisation sees, re-drives and discards only
//! dead letters whose record is its own, and cannot tell another's from one that does not exist.

use std::collections::BTreeSet;
use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use formstream_core::time::now_millis;
use formstream_schemas::Codec;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use serde::Serialize;

use crate::dlq::headers;
use crate::redrive::letter::{DeadLetter, Status};
use crate::redrive::snapshot::{ReadError, Snapshot, StateRecord, topic_shape};
use crate::redrive::{Filter, LetterId, RedriveTopics};

/// How long one transaction step (init, commit, abort) may block.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an operation starts over after another operator fenced it, before it gives up.
const ATTEMPTS: u32 = 4;

/// Whose dead letters an operation sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every organisation's, and records that cannot be decoded (an operator, on the CLI).
    Everything,
    /// Only those whose record belongs to this organisation (the gateway, for an API key).
    Organisation(String),
}

impl Scope {
    fn sees(&self, letter: &DeadLetter) -> bool {
        match self {
            Scope::Everything => true,
            Scope::Organisation(organisation) => letter.organisation() == Some(organisation),
        }
    }
}

/// Which dead letters a re-drive or a discard is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These (each must exist and be visible; one that is no longer pending is skipped).
    Ids(Vec<LetterId>),
    /// Every pending one that matches.
    Matching(Filter),
}

/// What an operation does to each dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Redrive,
    Discard,
}

impl Action {
    fn status(self) -> Status {
        match self {
            Action::Redrive => Status::Redriven,
            Action::Discard => Status::Discarded,
        }
    }
}

/// What a re-drive or a discard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub action: Action,
    /// The dead letters re-driven (or discarded) now.
    pub done: Vec<LetterId>,
    /// Asked for by id but no longer pending: what had become of them.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub id: LetterId,
    pub status: Status,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Ids that do not exist or are not visible in the scope (the two look the same).
    #[error("no such dead letter: {}", ids(.0))]
    NotFound(Vec<LetterId>),
    /// The dead-letter topic does not exist.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// Other operators kept changing the same dead letters; nothing was done.
    #[error(
        "other operators kept changing the dead letters of {0} at the same time; nothing was done, try again"
    )]
    Busy(String),
    /// A dead letter that cannot be handed back (its source partition is unknown).
    #[error("dead letter {id} cannot be re-driven: {reason}")]
    NotRedrivable { id: LetterId, reason: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0:#}")]
    Topics(anyhow::Error),
}

fn ids(ids: &[LetterId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A processor's dead letters: the operations of the module header.
pub struct DeadLetterAdmin {
    kafka: KafkaArgs,
    codec: Codec,
    processor: String,
    topics: RedriveTopics,
    /// Longest read of one topic.
    read_timeout: Duration,
    /// One re-drive or discard at a time in this process, so that its own operations do not
    /// fence each other (other processes are handled by fencing).
    writing: tokio::sync::Mutex<()>,
}

/// One record of an operation's transaction.
struct Planned {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetterAdmin {
    /// The dead letters of `processor`, on `dlq_topic` (its `--dlq-topic`, by default
    /// `<processor>.dlq`).
    pub fn new(kafka: KafkaArgs, codec: Codec, processor: &str, dlq_topic: &str) -> Self {
        DeadLetterAdmin {
            kafka,
            codec,
            processor: processor.to_owned(),
            topics: RedriveTopics::of(dlq_topic),
            read_timeout: Duration::from_secs(60),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn processor(&self) -> &str {
        &self.processor
    }

    pub fn topics(&self) -> &RedriveTopics {
        &self.topics
    }

    /// Every dead letter, whatever its state and organisation.
    pub async fn snapshot(&self) -> Result<Snapshot, AdminError> {
        Ok(Snapshot::read(&self.kafka, &self.codec, &self.topics, self.read_timeout).await?)
    }

    /// The pending dead letters visible in `scope` that match `filter`, oldest first.
    pub async fn list(
        &self,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<Vec<DeadLetter>, AdminError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot
            .letters
            .into_iter()
            .filter(|l| l.state.status == Status::Pending && scope.sees(l) && filter.matches(l))
            .collect())
    }

    /// One dead letter, in any state, if it is visible in `scope`.
    pub async fn show(&self, scope: &Scope, id: LetterId) -> Result<DeadLetter, AdminError> {
        let snapshot = self.snapshot().await?;
        snapshot
            .get(id)
            .filter(|letter| scope.sees(letter))
            .cloned()
            .ok_or(AdminError::NotFound(vec![id]))
    }

    /// Hands the selected pending dead letters back to the processor (see the module header).
    pub async fn redrive(
        &self,
        scope: &Scope,
        selection: &Selection,
        by: &str,
    ) -> Result<Outcome, AdminError> {
        self.apply(Action::Redrive, scope, selection, by).await
    }

    /// Marks the selected pending dead letters discarded: they leave `list` and are never
    /// re-driven.
    pub async fn discard(
        &self,
        scope: &Scope,
        selection: &Selection,
        by: &str,
    ) -> Result<Outcome, AdminError> {
        self.apply(Action::Discard, scope, selection, by).await
    }

    async fn apply(
        &self,
        action: Action,
        scope: &Scope,
        selection: &Selection,
        by: &str,
    ) -> Result<Outcome, AdminError> {
        let _one_at_a_time = self.writing.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // 1. Fence every other operator of this dead-letter topic.
            let producer = self.fence().await?;
            // 2. Read what they committed.
            let snapshot = self.snapshot().await?;
            let (chosen, skipped) = choose(&snapshot, scope, selection)?;
            let outcome = Outcome {
                action,
                done: chosen.iter().map(|letter| letter.id).collect(),
                skipped,
            };
            if chosen.is_empty() {
                return Ok(outcome);
            }
            let mut planned = Vec::with_capacity(chosen.len() * 2);
            if action == Action::Redrive {
                let partitions = self.redrive_partitions(&chosen).await?;
                for letter in &chosen {
                    planned.push(self.copy_of(letter, partitions)?);
                }
            }
            for letter in &chosen {
                planned.push(self.state_of(letter, action, by));
            }
            // 3. Copies and states, all or nothing.
            let committed = tokio::task::spawn_blocking(move || commit(&producer, &planned))
                .await
                .unwrap_or(Err(KafkaError::Canceled));
            match committed {
                Ok(()) => {
                    tracing::info!(
                        processor = %self.processor,
                        action = ?action,
                        count = outcome.done.len(),
                        %by,
                        "Dead letters handled."
                    );
                    return Ok(outcome);
                }
                Err(error) if is_fenced(&error) && attempt < ATTEMPTS => {
                    tracing::info!(processor = %self.processor, %error, "Another operator fenced this one; starting over.");
                    let jitter = rand::random_range(20..200 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(error) if is_fenced(&error) => {
                    return Err(AdminError::Busy(self.processor.clone()));
                }
                Err(error) => return Err(AdminError::Kafka(error)),
            }
        }
    }

    /// A transactional producer with the dead-letter topic's transactional id, initialised:
    /// every other operator is fenced from now on.
    async fn fence(&self) -> Result<ThreadedProducer<DefaultProducerContext>, AdminError> {
        let config = {
            let mut config = client_config(&self.kafka);
            config
                .set("transactional.id", self.topics.transactional_id())
                // An operator that crashed mid-transaction holds the state topic's readers back
                // until the transaction is aborted: by the next operator, or after this.
                .set("transaction.timeout.ms", "60000")
                .set("enable.idempotence", "true")
                .set("acks", "all");
            config
        };
        let producer = tokio::task::spawn_blocking(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
            producer.init_transactions(Timeout::After(STEP_TIMEOUT))?;
            Ok::<_, KafkaError>(producer)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))?;
        Ok(producer)
    }

    /// The re-drive topic's partition count, after creating it (or growing it) to match the
    /// source topic of the letters if needed.
    async fn redrive_partitions(&self, letters: &[&DeadLetter]) -> Result<usize, AdminError> {
        let source = letters
            .iter()
            .filter_map(|letter| letter.source().0)
            .find(|topic| *topic != self.topics.redrive)
            .map(str::to_owned);
        if let Some(source) = source
            && let Some((partitions, _)) = topic_shape(&self.kafka, &source).await?
        {
            let replication = topic_shape(&self.kafka, &self.topics.dlq)
                .await?
                .map_or(1, |(_, replicas)| replicas);
            self.topics
                .ensure(&self.kafka, partitions as i32, replication as i32, None)
                .await
                .map_err(AdminError::Topics)?;
        }
        Ok(topic_shape(&self.kafka, &self.topics.redrive)
            .await?
            .map_or(0, |(partitions, _)| partitions))
    }

    /// The copy of `letter` for the re-drive topic: its key, value and source headers, the
    /// re-drive headers, on the partition its record came from.
    fn copy_of(&self, letter: &DeadLetter, partitions: usize) -> Result<Planned, AdminError> {
        let (topic, partition, offset) = letter.source();
        let partition = partition
            .filter(|p| (*p as usize) < partitions)
            .ok_or_else(|| AdminError::NotRedrivable {
                id: letter.id,
                reason: format!(
                    "its source partition ({}) is not one of the {partitions} of {}; restart the processor so that it grows the re-drive topic",
                    partition.map_or("missing".to_owned(), |p| p.to_string()),
                    self.topics.redrive
                ),
            })?;
        let origin = letter
            .header(headers::REDRIVE_ORIGIN)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "{}:{partition}:{}",
                    topic.unwrap_or_default(),
                    offset.unwrap_or(-1)
                )
            });
        let mut copied: Vec<(String, Vec<u8>)> = letter
            .headers
            .iter()
            .filter(|(name, _)| {
                !name.starts_with(headers::PREFIX) && !name.starts_with(headers::REDRIVE_PREFIX)
            })
            .cloned()
            .collect();
        for (name, value) in [
            (
                headers::REDRIVE_COUNT,
                (letter.redrive_count() + 1).to_string(),
            ),
            (
                headers::REDRIVE_FROM,
                format!("{}:{}", self.topics.dlq, letter.id),
            ),
            (headers::REDRIVE_ORIGIN, origin),
        ] {
            copied.push((name.to_owned(), value.into_bytes()));
        }
        Ok(Planned {
            topic: self.topics.redrive.clone(),
            partition: Some(partition),
            key: letter.key.clone(),
            payload: letter.payload.clone(),
            headers: copied,
        })
    }

    /// The state record saying what became of `letter`.
    fn state_of(&self, letter: &DeadLetter, action: Action, by: &str) -> Planned {
        let summary = letter.record.summary();
        let record = StateRecord {
            status: action.status(),
            at_ms: now_millis(),
            by: by.to_owned(),
            organisation: summary.as_ref().map(|s| s.organisation.to_owned()),
            form_id: summary.as_ref().map(|s| s.form_id.to_owned()),
            response_id: letter.response_id(),
        };
        Planned {
            topic: self.topics.state.clone(),
            partition: None,
            key: Some(letter.id.to_string().into_bytes()),
            payload: serde_json::to_vec(&record).ok(),
            headers: Vec::new(),
        }
    }
}

/// The pending dead letters `selection` asks for, and those asked for by id that are not pending.
fn choose<'s>(
    snapshot: &'s Snapshot,
    scope: &Scope,
    selection: &Selection,
) -> Result<(Vec<&'s DeadLetter>, Vec<Skipped>), AdminError> {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    match selection {
        Selection::Ids(ids) => {
            let mut missing = Vec::new();
            for id in ids.iter().copied().collect::<BTreeSet<_>>() {
                match snapshot.get(id).filter(|letter| scope.sees(letter)) {
                    None => missing.push(id),
                    Some(letter) if letter.state.status == Status::Pending => chosen.push(letter),
                    Some(letter) => skipped.push(Skipped {
                        id,
                        status: letter.state.status,
                    }),
                }
            }
            if !missing.is_empty() {
                return Err(AdminError::NotFound(missing));
            }
        }
        Selection::Matching(filter) => chosen.extend(snapshot.letters.iter().filter(|letter| {
            letter.state.status == Status::Pending && scope.sees(letter) && filter.matches(letter)
        })),
    }
    Ok((chosen, skipped))
}

/// Sends every planned record and commits, in one transaction (blocking); aborts on failure.
fn commit(
    producer: &ThreadedProducer<DefaultProducerContext>,
    planned: &[Planned],
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let sent = planned.iter().try_for_each(|record| send(producer, record));
    let outcome = sent.and_then(|()| producer.commit_transaction(Timeout::After(STEP_TIMEOUT)));
    if outcome.is_err() {
        // Fenced producers cannot abort; the broker has aborted for them.
        let _ = producer.abort_transaction(Timeout::After(STEP_TIMEOUT));
    }
    outcome
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    planned: &Planned,
) -> Result<(), KafkaError> {
    let mut owned = OwnedHeaders::new_with_capacity(planned.headers.len());
    for (name, value) in &planned.headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&planned.topic).headers(owned);
    if let Some(partition) = planned.partition {
        record = record.partition(partition);
    }
    if let Some(key) = &planned.key {
        record = record.key(key.as_slice());
    }
    if let Some(payload) = &planned.payload {
        record = record.payload(payload.as_slice());
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            // librdkafka's own thread is sending earlier records: wait for room.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Whether the transaction failed because another operator initialised the same transactional id.
fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}
