//! Dead-letter re-drive: an operator (the `formstream dlq` command, or the gateway on behalf of
//! an organisation) lists a processor's dead letters, looks at one, and sends them back through
//! that processor (re-drive) or drops them (discard).
//!
//! The Kafka shape, per dead-letter topic `<dlq>` (by default `<processor>.dlq`):
//! - `<dlq>.redrive`: the re-driven copies. The processor consumes it beside its source, in the
//!   same consumer group, co-partitioned with the source (a copy goes to the partition its record
//!   came from, and the runtime assigns partition p of both topics together, see
//!   [`crate::engine::Companion`]), so that a copy is ordered with the source's records of the same
//!   response, and decoded, retried, dead-lettered, committed and measured like them.
//! - `<dlq>.state`: compacted, keyed by the dead letter's id (`<partition>-<offset>` in `<dlq>`):
//!   what became of it (re-driven or discarded, when, by whom). A dead letter without a state
//!   record is pending.
//!
//! Modules: [`letter`] (a dead letter as read, and how it is shown), [`filter`] (which ones an
//! operator asks for), [`snapshot`] (reading both topics), [`admin`] (the operations)
//! and [`command`] (`formstream dlq`).
//!
//! Invariant: a dead letter is re-driven at most once. The copy and its state record are written
//! in one Kafka transaction, after the transactional id of the dead-letter topic has fenced every
//! other operator and the state topic has been read to its end: two operators, or an operator's
//! crash, can never produce two copies of one dead letter (see [`admin`]).

pub mod admin;
pub mod command;
pub mod filter;
pub mod letter;
pub mod snapshot;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use formstream_core::topics::{TopicOutcome, TopicSpec, ensure_retention, ensure_topics};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::util::Timeout;

pub use admin::{Action, AdminError, DeadLetterAdmin, Outcome, Scope, Selection};
pub use filter::Filter;
pub use letter::{DeadLetter, Decoded, State, Status};

/// The topics of one dead-letter topic's re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveTopics {
    /// The dead letters (written by the runtime).
    pub dlq: String,
    /// The re-driven copies (consumed by the runtime beside its source).
    pub redrive: String,
    /// What became of each dead letter (compacted).
    pub state: String,
}

impl RedriveTopics {
    /// The topics that go with dead-letter topic `dlq`.
    pub fn of(dlq: &str) -> Self {
        RedriveTopics {
            dlq: dlq.to_owned(),
            redrive: format!("{dlq}.redrive"),
            state: format!("{dlq}.state"),
        }
    }

    /// Creates the re-drive topic (as many partitions as the source topic, `source_partitions`)
    /// and the state topic if they are missing, and grows the re-drive topic to the source's
    /// partition count if the source has grown: a copy goes to its source partition. Copies
    /// are kept a week, or the dead letters' own retention if shorter (a copy holds the same
    /// personal data as its dead letter): the runtime passes `dlq_retention_ms` (its
    /// `--dlq-retention-ms`) and applies it to an existing re-drive topic too; an operator's
    /// command passes `None` (it creates the topic only if no runtime has yet).
    pub async fn ensure(
        &self,
        kafka: &KafkaArgs,
        source_partitions: i32,
        replication_factor: i32,
        dlq_retention_ms: Option<i64>,
    ) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(30);
        // Copies are consumed soon after they are written; a week covers a long outage of the
        // processor (and a replay of its re-drives).
        const WEEK_MS: i64 = 7 * 24 * 3_600_000;
        let retention_ms = match dlq_retention_ms {
            Some(ms) if ms > 0 => ms.min(WEEK_MS),
            _ => WEEK_MS,
        };
        let specs = [
            TopicSpec {
                name: self.redrive.clone(),
                partitions: source_partitions,
                replication_factor,
                config: vec![("retention.ms", retention_ms.to_string())],
            },
            TopicSpec {
                name: self.state.clone(),
                // Written a few times per operator action, read whole by each.
                partitions: 1,
                replication_factor,
                // One record per dead letter ever handled, its latest state.
                config: vec![("cleanup.policy", "compact".to_owned())],
            },
        ];
        let outcomes = ensure_topics(kafka, &specs, timeout)
            .await
            .context("creating the re-drive topics")?;
        for (topic, outcome) in outcomes {
            if matches!(outcome, TopicOutcome::Existed { .. })
                && topic == self.redrive
                && dlq_retention_ms.is_some()
            {
                ensure_retention(kafka, &self.redrive, retention_ms, timeout)
                    .await
                    .context("setting the re-drive topic's retention")?;
            }
            if let TopicOutcome::Existed { partitions } = outcome
                && topic == self.redrive
                && (partitions as i32) < source_partitions
            {
                let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
                let options = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
                let grown = admin
                    .create_partitions(
                        &[NewPartitions::new(
                            &self.redrive,
                            source_partitions as usize,
                        )],
                        &options,
                    )
                    .await?;
                for result in grown {
                    result.map_err(|(topic, code)| {
                        anyhow::anyhow!(
                            "could not grow {topic} to {source_partitions} partitions: {code}"
                        )
                    })?;
                }
                tracing::info!(topic = %self.redrive, from = partitions, to = source_partitions, "Grew the re-drive topic with its source.");
            }
        }
        Ok(())
    }

    /// The transactional id every operator of this dead-letter topic writes with: a new operator
    /// fences the one before (see [`admin`]).
    pub fn transactional_id(&self) -> String {
        format!("formstream-dlq-admin-{}", self.dlq)
    }
}

/// A dead letter's place in its dead-letter topic, written `<partition>-<offset>`: its id in the
/// CLI, the HTTP API and the state topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LetterId {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.offset)
    }
}

impl FromStr for LetterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            || format!("{s:?} is not a dead-letter id: expected <partition>-<offset>, e.g. 2-17");
        let (partition, offset) = s.trim().split_once('-').ok_or_else(invalid)?;
        let partition: i32 = partition.parse().map_err(|_| invalid())?;
        let offset: i64 = offset.parse().map_err(|_| invalid())?;
        if partition < 0 || offset < 0 {
            return Err(invalid());
        }
        Ok(LetterId { partition, offset })
    }
}

impl serde::Serialize for LetterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_write_as_partition_dash_offset() {
        let id: LetterId = "2-17".parse().expect("an id");
        assert_eq!(
            id,
            LetterId {
                partition: 2,
                offset: 17
            }
        );
        assert_eq!(id.to_string(), "2-17");
        for bad in ["", "2", "2-", "-17", "a-1", "1-b", "-1-2", "1--2", "1-2-3"] {
            assert!(bad.parse::<LetterId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn topics_follow_the_dead_letter_topic() {
        let topics = RedriveTopics::of("journal.dlq");
        assert_eq!(topics.redrive, "journal.dlq.redrive");
        assert_eq!(topics.state, "journal.dlq.state");
        assert_eq!(
            topics.transactional_id(),
            "formstream-dlq-admin-journal.dlq"
        );
    }
}
