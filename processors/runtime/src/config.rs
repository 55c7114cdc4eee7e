//! Configuration of a processor's runtime: consumer group, concurrency and memory bounds, retry
//! budget, circuit breaker, commits and the metrics endpoint.
//!
//! Every flag has an `env` twin (`FORMSTREAM_...`) and a doc comment (its `--help`, and its entry
//! in docs/configuration.md); every default says why it is the default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use formstream_core::config::{KafkaArgs, RegistryArgs, TopicNames, parse_duration};

use crate::backoff::RetryPolicy;
use crate::targets::CircuitSettings;

#[derive(Debug, Clone, Args)]
pub struct RuntimeConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub topics: TopicNames,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Consumer group; `formstream-<processor>` when unset.
    #[arg(long, env = "FORMSTREAM_GROUP_ID")]
    pub group_id: Option<String>,

    /// Dead-letter topic; `<processor>.dlq` when unset.
    #[arg(long, env = "FORMSTREAM_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    /// Partitions of the dead-letter topic when the runtime creates it.
    // Dead letters are rare; 3 leaves room for a re-processing consumer to scale a little.
    #[arg(long, env = "FORMSTREAM_DLQ_PARTITIONS", default_value_t = 3)]
    pub dlq_partitions: i32,

    /// Replication factor of the dead-letter topic when the runtime creates it.
    #[arg(
        long = "dlq-replication-factor",
        env = "FORMSTREAM_DLQ_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub dlq_replication_factor: i32,

    /// retention.ms of the dead-letter topic, set when the runtime creates it and applied to it
    /// at every start (with --create-dlq-topic); -1 keeps dead letters forever.
    // 14 days: a dead letter copies the response it failed on (answers, phone numbers), so it
    // must not outlive the need for it; two weeks is time to see, fix and re-drive it.
    #[arg(
        long = "dlq-retention-ms",
        env = "FORMSTREAM_DLQ_RETENTION_MS",
        default_value_t = 14 * 24 * 60 * 60 * 1000,
        allow_hyphen_values = true
    )]
    pub dlq_retention_ms: i64,

    /// Records handled at once (across partitions; one at a time per key).
    // 512 keeps a 50 ms effect at ~10,000 records/s per instance.
    #[arg(long, env = "FORMSTREAM_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Records fetched but not yet finished; at it, the runtime stops taking records until half
    /// are done. Records waiting for a target's open circuit count for at most half of it (past
    /// half, their partitions pause), and fetched records never pass twice it.
    // Bounds memory (with --max-buffered-bytes) when the effect is slower than the topic.
    #[arg(
        long,
        env = "FORMSTREAM_MAX_BUFFERED_RECORDS",
        default_value_t = 10_000
    )]
    pub max_buffered_records: usize,

    /// Bytes of fetched, unfinished records; at it, the runtime stops taking records until half
    /// are done.
    #[arg(long, env = "FORMSTREAM_MAX_BUFFERED_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// First retry delay; doubles per attempt (full jitter).
    #[arg(long, env = "FORMSTREAM_RETRY_BASE", default_value = "200ms", value_parser = parse_duration)]
    pub retry_base: Duration,

    /// Longest delay between two attempts (unless the target's Retry-After asks for more).
    #[arg(long, env = "FORMSTREAM_RETRY_MAX_DELAY", default_value = "60s", value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Attempts of one record before it is dead-lettered.
    #[arg(long, env = "FORMSTREAM_RETRY_MAX_ATTEMPTS", default_value_t = 20)]
    pub retry_max_attempts: u32,

    /// Time from a record's first attempt after which it is dead-lettered. While the circuit is
    /// open the clock does not run: an outage pauses the pipeline, it does not dead-letter it.
    #[arg(long, env = "FORMSTREAM_RETRY_MAX_ELAPSED", default_value = "15m", value_parser = parse_duration)]
    pub retry_max_elapsed: Duration,

    /// Consecutive retriable failures that open the circuit and pause the partitions.
    #[arg(long, env = "FORMSTREAM_CIRCUIT_THRESHOLD", default_value_t = 5)]
    pub circuit_threshold: u32,

    /// First interval between probes while the circuit is open; doubles up to --probe-max.
    #[arg(long, env = "FORMSTREAM_PROBE_BASE", default_value = "1s", value_parser = parse_duration)]
    pub probe_base: Duration,

    /// Longest interval between probes while the circuit is open.
    #[arg(long, env = "FORMSTREAM_PROBE_MAX", default_value = "30s", value_parser = parse_duration)]
    pub probe_max: Duration,

    /// How long a target (a spreadsheet, a webhook receiver) may refuse access (a 403) before its
    /// records are dead-lettered with the reason; until then they wait, as for an outage, while
    /// someone fixes the sharing or the credentials.
    // As long as --retry-max-elapsed: a refusal gets the same time to be fixed as any failure.
    #[arg(long, env = "FORMSTREAM_FORBIDDEN_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub forbidden_timeout: Duration,

    /// How often finished offsets are committed (librdkafka auto.commit.interval.ms).
    #[arg(long, env = "FORMSTREAM_COMMIT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// Consumer session timeout. The shutdown drain is kept below it.
    // librdkafka's default; the broker's group.min.session.timeout.ms is 6 s.
    #[arg(long, env = "FORMSTREAM_SESSION_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// Longest wait for in-flight records at shutdown; capped below the session timeout.
    #[arg(long, env = "FORMSTREAM_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest a record waits for its form to appear in the forms view before it is dead-lettered.
    #[arg(long, env = "FORMSTREAM_FORM_WAIT", default_value = "2m", value_parser = parse_duration)]
    pub form_wait: Duration,

    /// Address of the processor's /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "FORMSTREAM_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// A stable name for this instance (e.g. a StatefulSet pod name). The consumer joins its
    /// group as a static member (`group.instance.id`): restarted under the same name, even after
    /// a crash, it takes its partitions back at once, without a rebalance of the other members;
    /// a transactional processor also uses it as its transactional id, so a restart fences its
    /// crashed predecessor at once. The price: a static member's partitions move to the others
    /// only after --session-timeout, also when it stops cleanly. Unset: a dynamic member with a
    /// random transactional id. Never share one between two live instances: the newer fences
    /// the older.
    #[arg(long, env = "FORMSTREAM_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Create the dead-letter topic at start-up if it is missing, and its re-drive topics
    /// (`<dlq>.redrive`, grown to the source's partition count, and `<dlq>.state`).
    #[arg(long = "create-dlq-topic", env = "FORMSTREAM_CREATE_DLQ_TOPIC", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_dlq_topic: bool,
}

impl RuntimeConfig {
    pub fn group_id(&self, processor: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("formstream-{processor}"))
    }

    pub fn dlq_topic(&self, processor: &str) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{processor}.dlq"))
    }

    /// The consumer's static membership (`group.instance.id`), when an instance id is set. The
    /// same name for every processor of a process is fine: each processor has its own group.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// The transactional id of a transactional processor's producer (see `instance_id`).
    pub fn transactional_id(&self, processor: &str) -> String {
        match &self.instance_id {
            Some(instance) => format!("formstream-{processor}-{instance}"),
            None => format!("formstream-{processor}-{}", uuid::Uuid::new_v4()),
        }
    }

    /// The settings of each target's circuit (see [`crate::targets`]).
    pub fn target_circuits(&self) -> CircuitSettings {
        CircuitSettings {
            threshold: self.circuit_threshold,
            probe_base: self.probe_base,
            probe_max: self.probe_max,
            forbidden_timeout: self.forbidden_timeout,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            max_delay: self.retry_max_delay,
            max_attempts: self.retry_max_attempts,
            max_elapsed: self.retry_max_elapsed,
        }
    }

    /// The drain deadline actually used: below the session timeout, so that the group does not
    /// move our partitions while we are still finishing them.
    pub fn drain(&self) -> Duration {
        self.drain_timeout
            .min(self.session_timeout.saturating_sub(Duration::from_secs(2)))
    }
}
