//! The command-line argument groups every component shares (Kafka, topic names and settings, the
//! schema registry) and the parsers of their values.
//!
//! Every flag has an `env` twin (`FORMSTREAM_...`) and a doc comment, which is its `--help` text and its
//! README entry. Every default says why it is the default.

use std::fmt;
use std::time::Duration;

use clap::Args;

/// How to reach Kafka. Shared by every component that talks to the broker.
///
/// `Debug` shows every `-X` key but hides the values of those that may hold a credential (see
/// [`is_secret_property`]), so that the configuration can be logged.
#[derive(Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    // The local broker started by deploy/local/kafka.sh listens here.
    #[arg(
        long = "kafka-bootstrap",
        env = "FORMSTREAM_KAFKA_BOOTSTRAP",
        default_value = "localhost:9092"
    )]
    pub bootstrap: String,

    /// Extra librdkafka property, as key=value (repeatable), e.g. security.protocol=SASL_SSL.
    /// In the environment, separate several with commas, or set one variable per property:
    /// FORMSTREAM_KAFKA_X_SASL_PASSWORD sets sasl.password (`_` reads as `.`, `__` as `_`); a flag
    /// overrides such a variable.
    #[arg(
        long = "kafka-property",
        short = 'X',
        env = "FORMSTREAM_KAFKA_PROPERTIES",
        hide_env_values = true,
        value_delimiter = ',',
        value_parser = parse_key_value
    )]
    pub properties: Vec<(String, String)>,
}

/// Names of the project's topics. Tests use fresh names per run.
#[derive(Debug, Clone, Args)]
pub struct TopicNames {
    /// Compacted topic of form definitions, keyed by form id.
    #[arg(long, env = "FORMSTREAM_FORMS_TOPIC", default_value = "forms")]
    pub forms_topic: String,

    /// Topic of response revisions, keyed by form id.
    #[arg(long, env = "FORMSTREAM_RESPONSES_TOPIC", default_value = "responses")]
    pub responses_topic: String,

    /// Topic of validation outcomes, keyed by form id (written by the validate processor).
    #[arg(long, env = "FORMSTREAM_FLAGS_TOPIC", default_value = "response-flags")]
    pub flags_topic: String,
}

/// How the project's topics are created.
#[derive(Debug, Clone, Args)]
pub struct TopicSettings {
    /// Partitions of the responses and response-flags topics.
    // 12 lets up to 12 instances of each processor share the load; more can be added later.
    #[arg(long, env = "FORMSTREAM_RESPONSES_PARTITIONS", default_value_t = 12)]
    pub responses_partitions: i32,

    /// Partitions of the forms topic.
    // Forms are few and small; every instance reads all of them anyway.
    #[arg(long, env = "FORMSTREAM_FORMS_PARTITIONS", default_value_t = 3)]
    pub forms_partitions: i32,

    /// Replication factor of created topics.
    // 1 suits the single local broker; use 3 on a production cluster.
    #[arg(long, env = "FORMSTREAM_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,

    /// retention.ms of the responses and response-flags topics; -1 keeps records forever.
    // Forever, so that a new processor can backfill from the very first response.
    #[arg(long, env = "FORMSTREAM_RESPONSES_RETENTION_MS", default_value_t = -1, allow_hyphen_values = true)]
    pub responses_retention_ms: i64,

    /// min.insync.replicas of created topics.
    // 1 suits one broker; with replication factor 3 use 2, so acks=all survives one broker down.
    #[arg(long, env = "FORMSTREAM_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub min_insync_replicas: i32,
}

/// Where to find a Confluent-compatible schema registry, if any.
///
/// `Debug` shows the URL (without any user or password it carries) and hides the credentials.
#[derive(Clone, Args)]
pub struct RegistryArgs {
    /// Schema registry URL. When set, values use the Confluent wire format; otherwise Avro
    /// single-object encoding with the compiled-in schemas.
    #[arg(long, env = "FORMSTREAM_SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// Schema registry basic-auth user.
    #[arg(long, env = "FORMSTREAM_SCHEMA_REGISTRY_USERNAME")]
    pub schema_registry_username: Option<String>,

    /// Schema registry basic-auth password.
    #[arg(
        long,
        env = "FORMSTREAM_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub schema_registry_password: Option<String>,
}

/// What a hidden value prints as.
const HIDDEN: &str = "***";

/// Whether a librdkafka property may hold a credential or key material: its value is never
/// printed. Errs on the side of hiding (a path such as `ssl.key.location` is hidden too).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "credential",
        "sasl.username",
        "oauthbearer.config",
        "extensions",
    ]
    .iter()
    .any(|word| key.contains(word))
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    HIDDEN
                } else {
                    value
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaArgs")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &properties)
            .finish()
    }
}

impl fmt::Debug for RegistryArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |value: &Option<String>| value.as_ref().map(|_| HIDDEN);
        f.debug_struct("RegistryArgs")
            .field(
                "schema_registry_url",
                &self
                    .schema_registry_url
                    .as_deref()
                    .map(formstream_schemas::without_userinfo),
            )
            .field(
                "schema_registry_username",
                &hidden(&self.schema_registry_username),
            )
            .field(
                "schema_registry_password",
                &hidden(&self.schema_registry_password),
            )
            .finish()
    }
}

/// Parses `key=value`. The error never repeats the text: it may be a misplaced secret.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        Some(_) => Err("expected key=value, got an empty key".to_owned()),
        None => Err("expected key=value, got no '='".to_owned()),
    }
}

/// Parses durations such as `500ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 5s or 2m, got {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown duration unit in {s:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn debug_hides_credentials() {
        let kafka = KafkaArgs {
            bootstrap: "broker:9093".into(),
            properties: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into()),
                ("sasl.username".into(), "api-key-7".into()),
                ("sasl.password".into(), "pw-s3cret".into()),
                ("ssl.key.password".into(), "kp-s3cret".into()),
                (
                    "sasl.oauthbearer.client.secret".into(),
                    "oidc-s3cret".into(),
                ),
            ],
        };
        let shown = format!("{kafka:?}");
        for secret in ["api-key-7", "pw-s3cret", "kp-s3cret", "oidc-s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        for visible in ["broker:9093", "SASL_SSL", "sasl.password", "PLAIN"] {
            assert!(shown.contains(visible), "{shown}");
        }

        let registry = RegistryArgs {
            schema_registry_url: Some("https://u:url-s3cret@registry.example/base".into()),
            schema_registry_username: Some("sr-user".into()),
            schema_registry_password: Some("sr-s3cret".into()),
        };
        let shown = format!("{registry:?}");
        for secret in ["url-s3cret", "sr-user", "sr-s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("registry.example/base"), "{shown}");
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("nothing").is_err());
        // A misplaced secret is not repeated in the error clap prints.
        assert!(!parse_key_value("hunter2").unwrap_err().contains("hunter2"));
    }
}
