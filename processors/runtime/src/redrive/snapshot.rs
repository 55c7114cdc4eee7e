//! Reading a dead-letter topic and its state topic, each from the beginning to its end, into a
//! snapshot: every dead letter with its decoded value and its state.
//!
//! Invariant: a snapshot has read every record committed to either topic before the read began
//! (both are read `read_committed`, to the end each partition had when the read started or later),
//! so a state written by an operator whose transaction committed before is always in it; and it
//! holds each dead letter once, though the topic may hold it twice (see [`one_per_source`]).

use std::collections::HashMap;
use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::follow::{Followed, TopicFollower};
use formstream_core::kafka::client_config;
use formstream_schemas::{Codec, CodecError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::redrive::letter::{DeadLetter, Decoded, State, Status};
use crate::redrive::{LetterId, RedriveTopics};

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The dead-letter topic does not exist: the processor never ran with it (or its name is wrong).
    #[error("the dead-letter topic {0} does not exist")]
    NoTopic(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The schema registry could not be asked about a dead letter's schema.
    #[error("decoding a dead letter: {0}")]
    Codec(#[from] CodecError),
    #[error("reading {topic} took longer than {timeout:?}")]
    Timeout { topic: String, timeout: Duration },
}

/// A state record's value: what an operator did to a dead letter. The key is the dead letter's
/// id; the organisation, form and response are kept beside it for whoever reads the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub status: Status,
    pub at_ms: i64,
    pub by: String,
    #[serde(default)]
    pub organisation: Option<String>,
    #[serde(default)]
    pub form_id: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
}

/// Every dead letter of one topic, oldest dead-lettered first.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub letters: Vec<DeadLetter>,
}

impl Snapshot {
    pub fn get(&self, id: LetterId) -> Option<&DeadLetter> {
        self.letters.iter().find(|letter| letter.id == id)
    }

    /// Reads the state topic, then the dead-letter topic (each to its end), within `timeout` each.
    pub async fn read(
        kafka: &KafkaArgs,
        codec: &Codec,
        topics: &RedriveTopics,
        timeout: Duration,
    ) -> Result<Snapshot, ReadError> {
        if topic_partitions(kafka, &topics.dlq).await? == 0 {
            return Err(ReadError::NoTopic(topics.dlq.clone()));
        }
        let mut states: HashMap<LetterId, State> = HashMap::new();
        if topic_partitions(kafka, &topics.state).await? > 0 {
            read_topic(kafka, &topics.state, timeout, |message| {
                let Some(id) = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<LetterId>().ok())
                else {
                    return;
                };
                match message
                    .payload()
                    .map(serde_json::from_slice::<StateRecord>)
                {
                    Some(Ok(record)) => {
                        states.insert(
                            id,
                            State {
                                status: record.status,
                                at_ms: Some(record.at_ms),
                                by: Some(record.by),
                            },
                        );
                    }
                    // Nothing writes tombstones; one would mean "pending again".
                    None => {
                        states.remove(&id);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(topic = %topics.state, %id, %error, "Unreadable dead-letter state; ignored.")
                    }
                }
            })
            .await?;
        }
        let mut raw = Vec::new();
        read_topic(kafka, &topics.dlq, timeout, |message| {
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            raw.push(DeadLetter {
                id: LetterId {
                    partition: message.partition(),
                    offset: message.offset(),
                },
                timestamp_ms: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
                record: Decoded::Undecodable(String::new()),
                state: State::PENDING,
            });
        })
        .await?;
        let mut letters = Vec::with_capacity(raw.len());
        for mut letter in raw {
            letter.record = Decoded::of(codec, letter.payload.as_deref()).await?;
            if let Some(state) = states.get(&letter.id) {
                letter.state = state.clone();
            }
            letters.push(letter);
        }
        letters.sort_by_key(|letter| (letter.dead_lettered_ms(), letter.id));
        Ok(Snapshot {
            letters: one_per_source(letters),
        })
    }
}

/// Keeps one dead letter per source record. A processor writes a dead letter and then commits the
/// source offset; killed between the two, it redoes the record after its restart and writes the
/// dead letter again, with the same source topic, partition and offset (dead letters are written at
/// least once, as in Kafka Connect). Those copies are one dead letter: the first, which carries
/// an operator's state (a copy's own state, if only the copy was acted on). A copy written after
/// an operator acted on the first is another dead letter: the record failed again after a replay.
/// Letters without complete source headers are kept as they are. `letters` is oldest first.
fn one_per_source(letters: Vec<DeadLetter>) -> Vec<DeadLetter> {
    let mut kept: Vec<DeadLetter> = Vec::with_capacity(letters.len());
    let mut first_of: HashMap<(String, i32, i64), usize> = HashMap::new();
    for letter in letters {
        let (Some(topic), Some(partition), Some(offset)) = letter.source() else {
            kept.push(letter);
            continue;
        };
        let source = (topic.to_owned(), partition, offset);
        if let Some(&i) = first_of.get(&source) {
            let first = &mut kept[i];
            let acted_on_before = first.state.status != Status::Pending
                && first
                    .state
                    .at_ms
                    .zip(letter.timestamp_ms)
                    .is_some_and(|(acted, written)| acted <= written);
            if !acted_on_before {
                if first.state.status == Status::Pending {
                    first.state = letter.state;
                }
                continue;
            }
        }
        first_of.insert(source, kept.len());
        kept.push(letter);
    }
    kept
}

/// The partitions of `topic`; 0 when it does not exist.
pub async fn topic_partitions(kafka: &KafkaArgs, topic: &str) -> Result<usize, KafkaError> {
    Ok(topic_shape(kafka, topic)
        .await?
        .map_or(0, |(partitions, _)| partitions))
}

/// The partition count and replication factor of `topic`; `None` when it does not exist.
pub async fn topic_shape(
    kafka: &KafkaArgs,
    topic: &str,
) -> Result<Option<(usize, usize)>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka).create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .client()
            .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(10)))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| {
                let replicas = t.partitions().first().map_or(1, |p| p.replicas().len());
                (t.partitions().len(), replicas.max(1))
            }))
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// Hands `each` every record of `topic`, from the beginning to the end it has now.
async fn read_topic(
    kafka: &KafkaArgs,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    // Never signalled: the read ends when the follower has caught up.
    let (_keep, mut stop) = watch::channel(false);
    let read = async {
        // Only what committed transactions wrote: an operator's aborted re-drive never counts.
        let settings = [("isolation.level", "read_committed")];
        let Some(mut follower) =
            TopicFollower::start(kafka, topic, "dead-letters", &settings, &mut stop).await?
        else {
            return Ok(());
        };
        while let Some(followed) = follower.next(&mut stop).await {
            match followed {
                Followed::Record(message) => each(&message),
                Followed::CaughtUp => break,
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout {
            topic: topic.to_owned(),
            timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::headers;

    /// A dead letter at `offset` of the dead-letter topic, written at `written_ms`, of source
    /// record `source_offset` of `responses` partition 0.
    fn letter(offset: i64, written_ms: i64, source_offset: i64) -> DeadLetter {
        DeadLetter {
            id: LetterId {
                partition: 0,
                offset,
            },
            timestamp_ms: Some(written_ms),
            key: None,
            payload: None,
            headers: vec![
                (headers::TOPIC.to_owned(), b"responses".to_vec()),
                (headers::PARTITION.to_owned(), b"0".to_vec()),
                (
                    headers::OFFSET.to_owned(),
                    source_offset.to_string().into_bytes(),
                ),
            ],
            record: Decoded::Undecodable(String::new()),
            state: State::PENDING,
        }
    }

    fn acted(mut letter: DeadLetter, status: Status, at_ms: i64) -> DeadLetter {
        letter.state = State {
            status,
            at_ms: Some(at_ms),
            by: Some("ops".to_owned()),
        };
        letter
    }

    fn offsets(letters: &[DeadLetter]) -> Vec<i64> {
        letters.iter().map(|l| l.id.offset).collect()
    }

    #[test]
    fn a_dead_letter_written_twice_by_a_crash_before_the_commit_is_one() {
        let kept = one_per_source(vec![
            letter(0, 1_000, 7),
            letter(1, 1_500, 8),
            letter(2, 2_000, 7),
        ]);
        assert_eq!(offsets(&kept), [0, 1]);
    }

    #[test]
    fn the_first_copy_keeps_the_state_and_hides_later_copies() {
        // Re-driven at 3,000, after both copies were written: the copy is not pending.
        let kept = one_per_source(vec![
            acted(letter(0, 1_000, 7), Status::Redriven, 3_000),
            letter(1, 2_000, 7),
        ]);
        assert_eq!(offsets(&kept), [0]);
        assert_eq!(kept[0].state.status, Status::Redriven);
    }

    #[test]
    fn a_copy_acted_on_alone_gives_the_dead_letter_its_state() {
        let kept = one_per_source(vec![
            letter(0, 1_000, 7),
            acted(letter(1, 2_000, 7), Status::Discarded, 3_000),
        ]);
        assert_eq!(offsets(&kept), [0]);
        assert_eq!(kept[0].state.status, Status::Discarded);
    }

    #[test]
    fn a_record_that_fails_again_after_the_operator_acted_is_a_new_dead_letter() {
        let kept = one_per_source(vec![
            acted(letter(0, 1_000, 7), Status::Redriven, 2_000),
            letter(1, 5_000, 7),
        ]);
        assert_eq!(offsets(&kept), [0, 1]);
        assert_eq!(kept[1].state.status, Status::Pending);
    }

    #[test]
    fn letters_without_their_source_are_all_kept() {
        let mut a = letter(0, 1_000, 7);
        let mut b = letter(1, 2_000, 7);
        a.headers.clear();
        b.headers.clear();
        assert_eq!(offsets(&one_per_source(vec![a, b])), [0, 1]);
    }
}
