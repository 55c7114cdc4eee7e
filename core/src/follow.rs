//! Following a whole topic into an in-memory view (the forms view, the flags view): every instance
//! reads every partition itself, from the beginning, and keeps reading new records.
//!
//! No consumer group coordinates these readers and nothing is committed: each view is a cache
//! rebuilt from Kafka at start-up (docs/design.md, promise 5), so every instance needs every
//! record.
//!
//! Invariant: [`Followed::CaughtUp`] is reported exactly once, and only after every partition has
//! been read up to the end it had when the follower started (or to its end, whichever comes first),
//! so that a view that says it is ready has seen everything that was on the topic before it started.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::kafka::{client_config, partition_count};

/// How long one metadata or watermark request may take before it is retried (metadata) or given up
/// for end-of-partition alone (watermarks).
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What a follower hands its view next.
pub enum Followed<'a> {
    /// A record, in partition order.
    Record(BorrowedMessage<'a>),
    /// Every partition has been read up to its end at start-up. Reported once.
    CaughtUp,
}

/// A consumer assigned every partition of one topic from the beginning; see the module header.
pub struct TopicFollower {
    consumer: StreamConsumer<FollowerContext>,
    topic: String,
    /// Partitions not yet read up to their end at start-up, with the offset that means caught up
    /// (the high watermark then, or `i64::MAX` when it could not be read: end-of-partition only).
    behind: HashMap<i32, i64>,
    caught_up: bool,
}

impl TopicFollower {
    /// Creates the consumer, waits (until `shutdown` changes) for the topic to exist, and assigns
    /// every partition from the beginning. `settings` are applied after every `-X` property, so that
    /// no `-X` can weaken what the view relies on (e.g. `isolation.level=read_committed`).
    /// Returns `Ok(None)` when shut down before the topic appeared.
    pub async fn start(
        kafka: &KafkaArgs,
        topic: &str,
        view: &'static str,
        settings: &[(&str, &str)],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Self>, KafkaError> {
        let mut config = client_config(kafka);
        // The group id is only a librdkafka requirement: partitions are assigned, not subscribed,
        // and nothing is ever committed.
        config
            .set(
                "group.id",
                format!("formstream-gateway-view-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let consumer: StreamConsumer<FollowerContext> =
            config.create_with_context(FollowerContext { view })?;

        // The broker may still be starting, or the topic not created yet.
        let partitions = loop {
            match partition_count(consumer.client(), topic, METADATA_TIMEOUT) {
                Ok(count) if count > 0 => break count as i32,
                Ok(_) => tracing::warn!(%topic, view, "Topic not found yet; retrying."),
                Err(error) => {
                    tracing::warn!(%topic, view, %error, "Could not read topic metadata; retrying.")
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };

        let mut assignment = TopicPartitionList::new();
        let mut behind = HashMap::new();
        let mut watermarks = true;
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            // Without the watermark, end-of-partition alone says caught up; with it, a partition
            // that producers keep writing to counts as caught up too, once its start-up end is read.
            // After one failure the rest are not asked for: each would wait the whole timeout.
            let end = watermarks
                .then(|| {
                    consumer.fetch_watermarks(topic, partition, Timeout::After(METADATA_TIMEOUT))
                })
                .and_then(|fetched| fetched.ok())
                .map(|(_, high)| high);
            watermarks = end.is_some();
            behind.insert(partition, end.unwrap_or(i64::MAX));
        }
        consumer.assign(&assignment)?;
        tracing::info!(%topic, view, partitions, "Loading the view.");
        Ok(Some(TopicFollower {
            consumer,
            topic: topic.to_owned(),
            behind,
            caught_up: false,
        }))
    }

    /// The next record or catch-up event; `None` once `shutdown` changes. Consumer errors are logged
    /// and retried after a short pause: a view keeps following through broker outages.
    pub async fn next(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<Followed<'_>> {
        let TopicFollower {
            consumer,
            topic,
            behind,
            caught_up,
        } = self;
        loop {
            if !*caught_up && behind.is_empty() {
                *caught_up = true;
                return Some(Followed::CaughtUp);
            }
            let message = tokio::select! {
                _ = shutdown.changed() => return None,
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    let partition = message.partition();
                    if behind
                        .get(&partition)
                        .is_some_and(|end| message.offset() + 1 >= *end)
                    {
                        behind.remove(&partition);
                    }
                    return Some(Followed::Record(message));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    behind.remove(&partition);
                }
                Err(error) => {
                    tracing::warn!(%topic, %error, "Error while following a topic; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The follower's context: end-of-partition is how a view learns it has caught up, so it is not an
/// error worth logging; everything else is logged as librdkafka reports it.
struct FollowerContext {
    view: &'static str,
}

impl ClientContext for FollowerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::error!(%error, reason, view = self.view, "Kafka error in a view consumer.");
        }
    }
}

impl ConsumerContext for FollowerContext {}
