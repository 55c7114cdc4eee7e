//! Kafka client configuration shared by every component: bootstrap servers, the component's own
//! tunables, then every `-X key=value` (from flags or the environment), then the settings a
//! guarantee rests on.
//!
//! Invariant: a `-X` property overrides a component's tunable default, never a setting a guarantee
//! rests on (the caller sets those after [`client_config_with`]).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use rdkafka::util::Timeout;

use crate::config::KafkaArgs;

/// A base librdkafka configuration: bootstrap servers plus every `-X key=value`.
pub fn client_config(kafka: &KafkaArgs) -> ClientConfig {
    client_config_with(kafka, &[])
}

/// Like [`client_config`], with the component's own tunable defaults applied first, so that a
/// `-X key=value` overrides them. Settings a guarantee rests on (idempotence, acks, manual offset
/// store) are set by the caller afterwards, so that no `-X` can weaken them.
pub fn client_config_with(kafka: &KafkaArgs, tunables: &[(&str, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap);
    for (key, value) in tunables {
        config.set(*key, value);
    }
    // Environment before flags, as clap ranks a flag above its variable.
    for (key, value) in env_properties(std::env::vars_os()) {
        config.set(key, value);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Prefix of the one-variable-per-property form of `-X`: `FORMSTREAM_KAFKA_X_SASL_PASSWORD=...`
/// sets `sasl.password`.
pub const ENV_PROPERTY_PREFIX: &str = "FORMSTREAM_KAFKA_X_";

/// librdkafka properties given as `FORMSTREAM_KAFKA_X_<KEY>` variables: the key lower-cased, `_`
/// read as `.` and `__` as `_` (the convention of the Confluent images' `KAFKA_*` variables).
///
/// Why a second environment form next to `FORMSTREAM_KAFKA_PROPERTIES`: a Kubernetes Secret or a
/// compose `env_file` maps naturally to one variable per secret, and a comma-separated list
/// cannot carry a value that contains a comma (a SCRAM password, `sasl.oauthbearer.extensions`).
/// Variables that are not valid UTF-8 are skipped; an unknown key fails client creation with
/// librdkafka's error naming it, so a typo is not silently ignored.
pub fn env_properties(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let key = name.to_str()?.strip_prefix(ENV_PROPERTY_PREFIX)?;
            if key.is_empty() {
                return None;
            }
            let key = key
                .to_ascii_lowercase()
                .split("__")
                .map(|part| part.replace('_', "."))
                .collect::<Vec<_>>()
                .join("_");
            Some((key, value.into_string().ok()?))
        })
        .collect();
    // The environment has no order; sorting makes the resulting configuration deterministic.
    properties.sort();
    properties
}

/// The number of partitions of `topic`, or 0 when the broker does not know the topic (yet).
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), Timeout::After(timeout))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn env_properties_map_names_to_librdkafka_keys() {
        let found = env_properties(vars(&[
            ("FORMSTREAM_KAFKA_X_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("FORMSTREAM_KAFKA_X_SASL_PASSWORD", "p,a=ss"),
            ("FORMSTREAM_KAFKA_X_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("FORMSTREAM_KAFKA_X_SOME__ODD_KEY", "x"),
            ("FORMSTREAM_KAFKA_X_", "ignored"),
            ("FORMSTREAM_KAFKA_BOOTSTRAP", "ignored"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(
            found,
            vec![
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
                ("sasl.password".to_owned(), "p,a=ss".to_owned()),
                ("some_odd.key".to_owned(), "x".to_owned()),
                ("ssl.ca.location".to_owned(), "/etc/ca.pem".to_owned()),
            ]
        );
    }

    /// The build links librdkafka with SSL, so SASL_SSL clusters (PLAIN, SCRAM, OAUTHBEARER with
    /// OIDC) work; the default rdkafka build has none of them, and a feature lost in a dependency
    /// update would otherwise only show on a production cluster.
    #[test]
    fn librdkafka_has_ssl_and_sasl() {
        let features = ClientConfig::new()
            .create_native_config()
            .expect("a native configuration")
            .get("builtin.features")
            .expect("builtin.features");
        let features: Vec<&str> = features.split(',').collect();
        for wanted in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "oidc",
        ] {
            assert!(
                features.contains(&wanted),
                "librdkafka lacks {wanted}: {features:?}"
            );
        }
    }
}
