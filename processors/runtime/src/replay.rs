//! Replay: moves a processor's consumer group on its source topic to the earliest offset, the
//! latest, the first record at or after a timestamp, or an explicit offset, for backfills and
//! re-processing. The processor then re-delivers from there (its effects must be idempotent).
//!
//! Invariant: offsets are committed only while the group has no active member. A running instance
//! would overwrite the new offsets with its own at its next commit (and the broker rejects a commit
//! from a non-member of a non-empty group anyway), so replay refuses and says to stop the processor.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use formstream_core::config::{KafkaArgs, TopicNames};
use formstream_core::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long each request to the broker may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The `formstream replay` command.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The processor whose consumer group moves (its group is `formstream-<name>`).
    #[arg(long, env = "FORMSTREAM_REPLAY_PROCESSOR")]
    pub processor: String,

    /// Where to move the group: earliest, latest, an RFC 3339 timestamp (the first record at or
    /// after it), or offset:N (the same offset on every chosen partition).
    #[arg(long, env = "FORMSTREAM_REPLAY_TO", value_name = "TARGET")]
    pub to: Target,

    /// Partition to move (repeatable; comma-separated in the env). All partitions when unset.
    #[arg(
        long = "partition",
        env = "FORMSTREAM_REPLAY_PARTITIONS",
        value_delimiter = ','
    )]
    pub partitions: Vec<i32>,

    /// Consumer group; `formstream-<processor>` when unset.
    #[arg(long, env = "FORMSTREAM_GROUP_ID")]
    pub group_id: Option<String>,

    /// The topic whose offsets move; the responses topic when unset (set it for a processor that
    /// consumes another topic).
    #[arg(long, env = "FORMSTREAM_REPLAY_TOPIC")]
    pub topic: Option<String>,

    /// Print what would move without committing anything.
    #[arg(long, env = "FORMSTREAM_REPLAY_DRY_RUN")]
    pub dry_run: bool,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub topics: TopicNames,
}

impl ReplayArgs {
    pub fn group(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("formstream-{}", self.processor))
    }

    pub fn source_topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| self.topics.responses_topic.clone())
    }
}

/// Where a replay moves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The oldest record still retained.
    Earliest,
    /// The end of each partition: skip everything not yet processed.
    Latest,
    /// The first record whose timestamp is at or after this many milliseconds since the epoch
    /// (the end of the partition when there is none).
    Timestamp(i64),
    /// This offset on every chosen partition.
    Offset(i64),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "earliest" => return Ok(Target::Earliest),
            "latest" => return Ok(Target::Latest),
            _ => {}
        }
        if let Some(offset) = s.strip_prefix("offset:") {
            return match offset.parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(Target::Offset(offset)),
                _ => Err(format!("expected offset:N with N >= 0, got {s:?}")),
            };
        }
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|at| Target::Timestamp((at.unix_timestamp_nanos() / 1_000_000) as i64))
            .map_err(|_| {
                format!(
                    "expected earliest, latest, an RFC 3339 timestamp (2025-01-31T00:00:00Z) or offset:N, got {s:?}"
                )
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Earliest => f.write_str("earliest"),
            Target::Latest => f.write_str("latest"),
            Target::Timestamp(ms) => {
                match OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
                    .ok()
                    .and_then(|at| at.format(&Rfc3339).ok())
                {
                    Some(at) => f.write_str(&at),
                    None => write!(f, "{ms} ms"),
                }
            }
            Target::Offset(offset) => write!(f, "offset:{offset}"),
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: i32,
    /// The group's committed offset before the replay; `None` when it had none.
    pub from: Option<i64>,
    pub to: i64,
}

impl fmt::Display for Move {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(f, "partition {}: {from} -> {}", self.partition, self.to),
            None => write!(
                f,
                "partition {}: (no commit) -> {}",
                self.partition, self.to
            ),
        }
    }
}

/// What a replay did (or, with `--dry-run`, would do).
#[derive(Debug, Clone)]
pub struct Replayed {
    pub group: String,
    pub topic: String,
    pub target: Target,
    pub committed: bool,
    pub moves: Vec<Move>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "stop every instance of the processor first: consumer group {group} has {} active member(s) ({}), and a running instance would overwrite the replayed offsets",
        members.len(),
        members.join(", ")
    )]
    GroupActive { group: String, members: Vec<String> },
    #[error(
        "stop every instance of the processor first: the broker refused the commit for consumer group {group} because it has active members ({0})",
        .source
    )]
    CommitRefused {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        count: usize,
    },
    #[error(
        "offset {offset} is outside partition {partition}'s retained range [{low}, {high}]; use earliest or latest"
    )]
    OffsetOutOfRange {
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error("{what}: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> ReplayError {
    move |source| ReplayError::Kafka { what, source }
}

/// Moves the group (see the module header). Blocking Kafka calls run off the async runtime.
pub async fn replay(args: ReplayArgs) -> Result<Replayed, ReplayError> {
    tokio::task::spawn_blocking(move || replay_blocking(&args))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

fn replay_blocking(args: &ReplayArgs) -> Result<Replayed, ReplayError> {
    let group = args.group();
    let topic = args.source_topic();
    // A consumer of the group that never subscribes: it only reads metadata and commits.
    let consumer: BaseConsumer = client_config(&args.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka("creating the consumer"))?;

    let partitions = partitions(&consumer, &topic, &args.partitions)?;
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(&topic, partition);
    }
    let committed =
        while_coordinator_settles(|| consumer.committed_offsets(list.clone(), BROKER_TIMEOUT))
            .map_err(kafka("reading the group's committed offsets"))?;

    let targets = target_offsets(&consumer, &topic, &partitions, args.to)?;
    let moves: Vec<Move> = partitions
        .iter()
        .zip(targets)
        .map(|(&partition, to)| Move {
            partition,
            from: committed
                .find_partition(&topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                }),
            to,
        })
        .collect();

    ensure_no_members(&consumer, &group)?;
    if !args.dry_run {
        commit(&consumer, &group, &topic, &moves)?;
        tracing::info!(%group, %topic, target = %args.to, partitions = moves.len(), "Consumer group moved.");
    }
    Ok(Replayed {
        group,
        topic,
        target: args.to,
        committed: !args.dry_run,
        moves,
    })
}

/// Commits the moves as the group's offsets. The broker refuses a commit from outside the group
/// while the group has members (a member that joined after [`ensure_no_members`] looked).
fn commit(
    consumer: &BaseConsumer,
    group: &str,
    topic: &str,
    moves: &[Move],
) -> Result<(), ReplayError> {
    let mut list = TopicPartitionList::new();
    for m in moves {
        list.add_partition_offset(topic, m.partition, Offset::Offset(m.to))
            .map_err(kafka("building the commit"))?;
    }
    while_coordinator_settles(|| consumer.commit(&list, CommitMode::Sync)).map_err(|source| {
        match source {
            KafkaError::ConsumerCommit(
                RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::StaleMemberEpoch
                | RDKafkaErrorCode::FencedMemberEpoch,
            ) => ReplayError::CommitRefused {
                group: group.to_owned(),
                source,
            },
            source => ReplayError::Kafka {
                what: "committing the new offsets",
                source,
            },
        }
    })
}

/// Runs a group-coordinator request again while the coordinator is still loading or moving (as
/// just after a broker starts): those errors say "try again", and the request is idempotent.
fn while_coordinator_settles<T>(mut request: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
    let deadline = std::time::Instant::now() + BROKER_TIMEOUT;
    loop {
        match request() {
            Err(error)
                if std::time::Instant::now() < deadline
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::CoordinatorLoadInProgress
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::NotCoordinator
                        )
                    ) =>
            {
                tracing::debug!(%error, "Group coordinator not ready; retrying.");
                std::thread::sleep(Duration::from_millis(250));
            }
            outcome => return outcome,
        }
    }
}

/// The chosen partitions of `topic` (all when `chosen` is empty), checked against its metadata.
fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    chosen: &[i32],
) -> Result<Vec<i32>, ReplayError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(kafka("reading the topic's metadata"))?;
    let all: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if all.is_empty() {
        return Err(ReplayError::UnknownTopic(topic.to_owned()));
    }
    if chosen.is_empty() {
        let mut all = all;
        all.sort_unstable();
        return Ok(all);
    }
    let mut partitions = Vec::with_capacity(chosen.len());
    for &partition in chosen {
        if !all.contains(&partition) {
            return Err(ReplayError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                count: all.len(),
            });
        }
        if !partitions.contains(&partition) {
            partitions.push(partition);
        }
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// The offset each partition moves to, in the order of `partitions`.
fn target_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    target: Target,
) -> Result<Vec<i64>, ReplayError> {
    let mut watermarks = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        watermarks.push(
            consumer
                .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
                .map_err(kafka("reading the partitions' watermarks"))?,
        );
    }
    match target {
        Target::Earliest => Ok(watermarks.iter().map(|&(low, _)| low).collect()),
        Target::Latest => Ok(watermarks.iter().map(|&(_, high)| high).collect()),
        Target::Offset(offset) => partitions
            .iter()
            .zip(&watermarks)
            .map(|(&partition, &(low, high))| {
                if (low..=high).contains(&offset) {
                    Ok(offset)
                } else {
                    Err(ReplayError::OffsetOutOfRange {
                        partition,
                        offset,
                        low,
                        high,
                    })
                }
            })
            .collect(),
        Target::Timestamp(ms) => {
            let mut list = TopicPartitionList::new();
            for &partition in partitions {
                list.add_partition_offset(topic, partition, Offset::Offset(ms))
                    .map_err(kafka("building the timestamp query"))?;
            }
            let found = consumer
                .offsets_for_times(list, BROKER_TIMEOUT)
                .map_err(kafka("looking up offsets by timestamp"))?;
            partitions
                .iter()
                .zip(&watermarks)
                .map(|(&partition, &(_, high))| {
                    let element = found.find_partition(topic, partition);
                    if let Some(Err(source)) = element.as_ref().map(|e| e.error()) {
                        return Err(ReplayError::Kafka {
                            what: "looking up offsets by timestamp",
                            source,
                        });
                    }
                    // No record at or after the timestamp: the end of the partition.
                    Ok(match element.map(|e| e.offset()) {
                        Some(Offset::Offset(offset)) => offset,
                        _ => high,
                    })
                })
                .collect()
        }
    }
}

/// Refuses while the group has members: they would overwrite the new offsets.
fn ensure_no_members(consumer: &BaseConsumer, group: &str) -> Result<(), ReplayError> {
    let groups = consumer
        .fetch_group_list(Some(group), BROKER_TIMEOUT)
        .map_err(kafka("describing the consumer group"))?;
    let members: Vec<String> = groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| format!("{} on {}", m.client_id(), m.client_host()))
        .collect();
    if members.is_empty() {
        Ok(())
    } else {
        Err(ReplayError::GroupActive {
            group: group.to_owned(),
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use clap::Parser;
    use formstream_core::topics::{TopicSpec, ensure_topics};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("earliest".parse(), Ok(Target::Earliest));
        assert_eq!("latest".parse(), Ok(Target::Latest));
        assert_eq!("offset:42".parse(), Ok(Target::Offset(42)));
        assert_eq!(
            "2025-01-31T00:00:00Z".parse(),
            Ok(Target::Timestamp(1_738_281_600_000))
        );
        assert_eq!(
            "2025-01-31T05:30:00.250+05:30".parse(),
            Ok(Target::Timestamp(1_738_281_600_250))
        );
        assert!("offset:-1".parse::<Target>().is_err());
        assert!("yesterday".parse::<Target>().is_err());
        assert_eq!(
            Target::Timestamp(1_738_281_600_000).to_string(),
            "2025-01-31T00:00:00Z"
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }

    fn bootstrap() -> String {
        std::env::var("FORMSTREAM_TEST_BOOTSTRAP").unwrap_or_else(|_| "localhost:9092".to_owned())
    }

    fn args(topic: &str, group: &str, to: &str, extra: &[&str]) -> ReplayArgs {
        let bootstrap = bootstrap();
        let mut argv = vec![
            "replay",
            "--processor",
            "test",
            "--group-id",
            group,
            "--topic",
            topic,
            "--kafka-bootstrap",
            &bootstrap,
            "--to",
            to,
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().replay
    }

    fn committed(kafka: &KafkaArgs, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = client_config(kafka)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let list = consumer.committed_offsets(list, BROKER_TIMEOUT).unwrap();
        (0..partitions)
            .map(|p| match list.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// Against the real broker: a fresh topic of 2 partitions with 5 records each, timestamps
    /// 1000..1004 ms, a fresh group committed at the end; replays move it and are read back.
    #[tokio::test]
    async fn replay_moves_a_stopped_group_and_refuses_a_running_one() {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("test-{id}-replay");
        let group = format!("test-{id}-group");
        let base = args(&topic, &group, "earliest", &[]);
        ensure_topics(
            &base.kafka,
            &[TopicSpec {
                name: topic.clone(),
                partitions: 2,
                replication_factor: 1,
                // The records are stamped in 1970: without this, the broker's time-based
                // retention (checked every 5 minutes) may delete them mid-test.
                config: vec![("retention.ms", "-1".to_owned())],
            }],
            BROKER_TIMEOUT,
        )
        .await
        .unwrap();
        let producer: FutureProducer = client_config(&base.kafka).create().unwrap();
        for partition in 0..2 {
            for i in 0..5i64 {
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(partition)
                            .payload("x")
                            .timestamp(1_000 + i),
                        BROKER_TIMEOUT,
                    )
                    .await
                    .unwrap();
            }
        }

        // A fresh group has no commits; latest commits the ends.
        let moved = replay(args(&topic, &group, "latest", &[])).await.unwrap();
        assert!(moved.committed);
        assert_eq!(
            moved.moves,
            [
                Move {
                    partition: 0,
                    from: None,
                    to: 5
                },
                Move {
                    partition: 1,
                    from: None,
                    to: 5
                }
            ]
        );
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(5), Some(5)]
        );

        // Earliest, one partition only.
        let moved = replay(args(&topic, &group, "earliest", &["--partition", "1"]))
            .await
            .unwrap();
        assert_eq!(
            moved.moves,
            [Move {
                partition: 1,
                from: Some(5),
                to: 0
            }]
        );
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(5), Some(0)]
        );

        // A timestamp: the first record at or after it; after the last record, the end.
        replay(args(&topic, &group, "1970-01-01T00:00:01.003Z", &[]))
            .await
            .unwrap();
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(3), Some(3)]
        );
        replay(args(&topic, &group, "2000-01-01T00:00:00Z", &[]))
            .await
            .unwrap();
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(5), Some(5)]
        );

        // An explicit offset; out of range is refused; a dry run commits nothing.
        replay(args(&topic, &group, "offset:2", &["--partition", "0"]))
            .await
            .unwrap();
        assert!(matches!(
            replay(args(&topic, &group, "offset:9", &[])).await,
            Err(ReplayError::OffsetOutOfRange { offset: 9, .. })
        ));
        let dry = replay(args(&topic, &group, "earliest", &["--dry-run"]))
            .await
            .unwrap();
        assert!(!dry.committed);
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(2), Some(5)]
        );

        // A running member of the group: replay refuses and says what to do.
        let member: rdkafka::consumer::StreamConsumer = client_config(&base.kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        member.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(Instant::now() < deadline, "the member never joined");
            let _ = tokio::time::timeout(Duration::from_millis(200), member.recv())
                .await
                .map(|m| m.map(|m| m.offset()));
        }
        let refused = replay(args(&topic, &group, "earliest", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ReplayError::GroupActive { .. }),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .starts_with("stop every instance of the processor first"),
            "{refused}"
        );
        drop(member);
        assert_eq!(
            committed(&base.kafka, &group, &topic, 2),
            [Some(2), Some(5)]
        );

        assert!(matches!(
            replay(args(&format!("{topic}-missing"), &group, "earliest", &[])).await,
            Err(ReplayError::UnknownTopic(_))
        ));
        assert!(matches!(
            replay(args(&topic, &group, "earliest", &["--partition", "7"])).await,
            Err(ReplayError::UnknownPartition { partition: 7, .. })
        ));
    }
}
