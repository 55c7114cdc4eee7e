//! Topic administration: the topics the project needs, and their creation.
//!
//! Invariant: [`ensure_topics`] only creates what is missing; an existing topic is left as it is
//! (a different partition count is logged, never changed). [`ensure_retention`] changes one
//! setting of an existing topic and keeps every other setting the topic has.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::config::{KafkaArgs, TopicNames, TopicSettings};
use crate::kafka::client_config;

/// One topic the project needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: Vec<(&'static str, String)>,
}

/// The topics the gateway writes, with their configuration.
pub fn spine_topics(names: &TopicNames, settings: &TopicSettings) -> Vec<TopicSpec> {
    let min_isr = settings.min_insync_replicas.to_string();
    let retention = settings.responses_retention_ms.to_string();
    vec![
        TopicSpec {
            name: names.forms_topic.clone(),
            partitions: settings.forms_partitions,
            replication_factor: settings.replication_factor,
            config: vec![
                // Compaction keeps the newest record per form id, which carries every version.
                ("cleanup.policy", "compact".into()),
                ("min.insync.replicas", min_isr.clone()),
                // A form with its whole history can outgrow the 1 MB default.
                ("max.message.bytes", (8 * 1024 * 1024).to_string()),
            ],
        },
        TopicSpec {
            name: names.responses_topic.clone(),
            partitions: settings.responses_partitions,
            replication_factor: settings.replication_factor,
            config: vec![
                ("retention.ms", retention.clone()),
                ("min.insync.replicas", min_isr.clone()),
            ],
        },
        TopicSpec {
            name: names.flags_topic.clone(),
            partitions: settings.responses_partitions,
            replication_factor: settings.replication_factor,
            config: vec![
                ("retention.ms", retention),
                ("min.insync.replicas", min_isr),
            ],
        },
    ]
}

/// What `ensure_topics` did with each topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    Existed { partitions: usize },
}

/// Creates each topic that does not exist yet; existing topics are left as they are.
pub async fn ensure_topics(
    kafka: &KafkaArgs,
    specs: &[TopicSpec],
    timeout: Duration,
) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            );
            for (key, value) in &spec.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
    let results = tokio::time::timeout(timeout, admin.create_topics(&new_topics, &options))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "Kafka at {} did not answer within {timeout:?}",
                kafka.bootstrap
            )
        })??;

    let mut existing: HashMap<String, usize> = HashMap::new();
    let mut outcomes = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(name) => outcomes.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                if existing.is_empty() {
                    existing = partition_counts(&admin, timeout)?;
                }
                let partitions = existing.get(&name).copied().unwrap_or(0);
                outcomes.push((name, TopicOutcome::Existed { partitions }));
            }
            Err((name, code)) => anyhow::bail!("could not create topic {name}: {code}"),
        }
    }
    for (name, outcome) in &outcomes {
        let wanted = specs.iter().find(|s| &s.name == name).map(|s| s.partitions);
        if let (TopicOutcome::Existed { partitions }, Some(wanted)) = (outcome, wanted)
            && *partitions != wanted as usize
        {
            tracing::warn!(
                topic = %name,
                partitions,
                configured = wanted,
                "Topic exists with a different partition count; it was left as it is."
            );
        }
    }
    Ok(outcomes)
}

/// Sets `retention.ms` of the existing `topic` to `retention_ms` unless it already is; returns
/// whether it changed. Kafka's AlterConfigs replaces a topic's whole configuration, so every
/// other setting the topic has of its own is read first and written back with it.
pub async fn ensure_retention(
    kafka: &KafkaArgs,
    topic: &str,
    retention_ms: i64,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
    let wanted = retention_ms.to_string();
    let described = tokio::time::timeout(
        timeout,
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Kafka did not describe topic {topic} within {timeout:?}"))??;
    let resource = match described.into_iter().next() {
        Some(Ok(resource)) => resource,
        Some(Err(code)) => anyhow::bail!("could not describe topic {topic}: {code}"),
        None => anyhow::bail!("Kafka described nothing for topic {topic}"),
    };
    if resource
        .get("retention.ms")
        .is_some_and(|entry| entry.value.as_deref() == Some(wanted.as_str()))
    {
        return Ok(false);
    }
    let own: Vec<(&str, &str)> = resource
        .entries
        .iter()
        .filter(|entry| entry.source == ConfigSource::DynamicTopic && entry.name != "retention.ms")
        .filter_map(|entry| Some((entry.name.as_str(), entry.value.as_deref()?)))
        .collect();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.ms", &wanted);
    for (key, value) in own {
        alter = alter.set(key, value);
    }
    let altered = tokio::time::timeout(timeout, admin.alter_configs(&[alter], &options))
        .await
        .map_err(|_| anyhow::anyhow!("Kafka did not alter topic {topic} within {timeout:?}"))??;
    for result in altered {
        if let Err((_, code)) = result {
            anyhow::bail!("could not set retention.ms of topic {topic}: {code}");
        }
    }
    Ok(true)
}

fn partition_counts(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, usize>> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, Timeout::After(timeout))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}
