//! Command-line and environment configuration of the gateway. The groups it shares with the
//! processors (Kafka, topics, registry) are `formstream_core::config`'s.
//!
//! Every flag has an `env` twin (`FORMSTREAM_...`) and a doc comment, which is its `--help` text and its
//! entry in docs/configuration.md. Every default says why it is the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use formstream_core::api::HttpLimits;
use formstream_core::config::{KafkaArgs, RegistryArgs, TopicNames, TopicSettings, parse_duration};
use formstream_core::forms::FormActions;
use formstream_core::organisations::OrganisationsArgs;

/// The `formstream gateway` command.
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "FORMSTREAM_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub topics: TopicNames,

    #[command(flatten)]
    pub topic_settings: TopicSettings,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub http: HttpLimits,

    /// The form actions of the registered processors (not a flag: the binary sets it from its
    /// processor list); a form with an action (in `actions`, or a top-level field such as
    /// `receipt`) none of them owns is refused.
    #[arg(skip)]
    pub form_actions: FormActions,

    /// Create missing topics at start-up (from the topic settings).
    #[arg(long, env = "FORMSTREAM_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,

    /// TOML file of API keys (SHA-256 hashes), each belonging to one organisation.
    /// `formstream keys new` prints an entry.
    #[arg(
        long,
        env = "FORMSTREAM_API_KEYS_FILE",
        default_value = "deploy/local/api-keys.toml"
    )]
    pub api_keys_file: PathBuf,

    #[command(flatten)]
    pub organisations: OrganisationsArgs,

    /// Longest the gateway waits for Kafka to acknowledge a record before answering 503.
    // Well below client timeouts (usually 30 s); long enough to ride out a leader election.
    #[arg(long, env = "FORMSTREAM_PRODUCE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub produce_timeout: Duration,

    /// Longest librdkafka keeps delivering a response's record (its message.timeout.ms) after
    /// the client got its 503 at --produce-timeout. Meanwhile the response id stays claimed: a
    /// retry is answered 503 until Kafka has answered, then 202 without publishing again (or it
    /// is published, if Kafka refused the record). Forms are never delivered after their 503.
    // Kafka's own delivery.timeout.ms: longer than a broker restart or a leader election, so a
    // record the broker wrote but could not acknowledge in time is never published twice.
    #[arg(long, env = "FORMSTREAM_DELIVERY_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// Retry-After, in seconds, sent with a 503.
    #[arg(long, env = "FORMSTREAM_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,

    /// Producer linger.ms: how long librdkafka waits to fill a batch.
    // Every request waits for its record's batch, so linger is a floor on latency and, with a
    // fixed number of client connections, a ceiling on throughput; 1 ms still batches well under
    // load (bench/RESULTS.md: 5 ms held single POSTs to about 11,000/s at 64 connections).
    #[arg(long, env = "FORMSTREAM_PRODUCER_LINGER_MS", default_value_t = 1)]
    pub linger_ms: u64,

    /// Largest request body, in bytes; larger requests get 413.
    // A batch of 1,000 responses of ~1 KiB fits.
    #[arg(long, env = "FORMSTREAM_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest text answer, in characters, for questions that do not set their own max_length.
    #[arg(long, env = "FORMSTREAM_MAX_TEXT_CHARS", default_value_t = 10_000)]
    pub max_text_chars: usize,

    /// Most items in one batch request.
    #[arg(long, env = "FORMSTREAM_MAX_BATCH_ITEMS", default_value_t = 1_000)]
    pub max_batch_items: usize,

    /// Recent (response id, revision) pairs remembered so that a retried submission is answered
    /// without publishing again. A cache only: downstream effects are idempotent regardless.
    #[arg(long, env = "FORMSTREAM_IDEMPOTENCY_CACHE", default_value_t = 100_000)]
    pub idempotency_cache: usize,

    /// Longest the gateway waits for in-flight requests and the producer at shutdown.
    #[arg(long, env = "FORMSTREAM_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The web console: a session ends after this long without a request.
    // 30 minutes: a data manager reviewing flags keeps it alive; a forgotten tab does not.
    #[arg(long, env = "FORMSTREAM_CONSOLE_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub console_idle_timeout: Duration,

    /// The web console: a session ends this long after sign-in, however active.
    // 720m = 12 hours: a working day; the API key is asked again the next day.
    #[arg(long, env = "FORMSTREAM_CONSOLE_MAX_SESSION", default_value = "720m", value_parser = parse_duration)]
    pub console_max_session: Duration,

    /// The web console's Live page: the processors whose lag it shows, each `name` (consumer group
    /// `formstream-<name>`) or `name=group`, comma-separated.
    // Every registered processor under its default group, as `formstream dev` runs them.
    #[arg(
        long,
        env = "FORMSTREAM_CONSOLE_PROCESSORS",
        value_delimiter = ',',
        value_parser = crate::console::live::parse_processor,
        default_value = "validate,notify-collectors,receipts,sheets,slang,journal"
    )]
    pub console_processors: Vec<(String, String)>,

    /// The web console's Live page: where each processor serves its Prometheus metrics, for its
    /// circuit state, comma-separated `name=url` (e.g.
    /// `journal=http://127.0.0.1:9464/metrics`). A processor not listed, or not answering within
    /// a second, shows its circuit as unknown.
    // Empty: where each processor's --metrics-listen is depends on the deployment (every
    // processor's default, 127.0.0.1:9464, is the same port), so the gateway guesses none.
    #[arg(
        long,
        env = "FORMSTREAM_CONSOLE_PROCESSOR_METRICS",
        value_delimiter = ',',
        value_parser = crate::console::live::parse_metrics_url
    )]
    pub console_processor_metrics: Vec<(String, String)>,

    /// The web console's Slang page: base URL of the slang processor's search API (its
    /// `--search-listen`, e.g. `http://127.0.0.1:8090`), which the gateway calls as the signed-in
    /// organisation. Unset, the page says slang search is not configured.
    // Unset: where the search API listens depends on the deployment (`formstream dev` sets it to
    // the slang processor it runs).
    #[arg(long, env = "FORMSTREAM_CONSOLE_SLANG_URL", value_parser = crate::console::slang::parse_base_url)]
    pub console_slang_url: Option<reqwest::Url>,

    /// Processors whose dead letters `/v1/dead-letters` serves, comma-separated: `name`
    /// (dead-letter topic `<name>.dlq`) or `name=topic` (a processor run with another
    /// `--dlq-topic`).
    // Empty by default, which `formstream gateway` and `formstream dev` read as every registered
    // processor on its default dead-letter topic: what `formstream dev` runs.
    #[arg(long, env = "FORMSTREAM_DEAD_LETTER_PROCESSORS", value_delimiter = ',', value_parser = DeadLetterProcessor::parse)]
    pub dead_letter_processors: Vec<DeadLetterProcessor>,
}

/// A processor whose dead letters the gateway serves, and its dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterProcessor {
    pub name: String,
    pub dlq_topic: String,
}

impl DeadLetterProcessor {
    /// The processor `name` on its default dead-letter topic, `<name>.dlq`.
    pub fn named(name: &str) -> Self {
        DeadLetterProcessor {
            name: name.to_owned(),
            dlq_topic: format!("{name}.dlq"),
        }
    }

    /// `name` or `name=topic`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, topic) = match text.trim().split_once('=') {
            Some((name, topic)) => (name.trim(), Some(topic.trim())),
            None => (text.trim(), None),
        };
        if name.is_empty() || topic.is_some_and(str::is_empty) {
            return Err(format!(
                "{text:?} is not a processor: expected name or name=dead-letter-topic"
            ));
        }
        let mut processor = DeadLetterProcessor::named(name);
        if let Some(topic) = topic {
            processor.dlq_topic = topic.to_owned();
        }
        Ok(processor)
    }
}
