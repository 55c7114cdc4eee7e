//! Dead letters copy the responses they failed on (answers, phone numbers), so the dead-letter
//! topic does not keep them forever: `--dlq-retention-ms` (default 14 days) is its retention,
//! set when the runtime creates it and applied to one that already exists, without losing the
//! topic's other settings.

use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use formstream_core::topics::{TopicSpec, ensure_topics};
use formstream_tests::runtime::{RuntimeTopics, TestProcessor, spawn_runtime};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

const FOURTEEN_DAYS_MS: &str = "1209600000";

/// The topic's own value of `key`, as the broker describes it.
async fn topic_setting(kafka: &KafkaArgs, topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create().expect("admin");
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("described");
    resource.get(key).and_then(|entry| entry.value.clone())
}

#[tokio::test]
async fn a_new_dead_letter_topic_keeps_letters_fourteen_days() {
    let topics = RuntimeTopics::create(1).await;
    let runtime = spawn_runtime(TestProcessor::new(), topics.config(&[])).await;
    let kafka = topics.kafka();
    assert_eq!(
        topic_setting(&kafka, &topics.dlq, "retention.ms")
            .await
            .as_deref(),
        Some(FOURTEEN_DAYS_MS)
    );
    runtime.stop().await.expect("stops");
    topics.delete().await;
}

/// A dead-letter topic created by an earlier version (which kept letters forever) takes the
/// configured retention at the next start, and keeps its other settings.
#[tokio::test]
async fn an_existing_dead_letter_topic_takes_the_configured_retention() {
    let topics = RuntimeTopics::create(1).await;
    let kafka = topics.kafka();
    let old = TopicSpec {
        name: topics.dlq.clone(),
        partitions: 1,
        replication_factor: 1,
        config: vec![
            ("retention.ms", "-1".to_owned()),
            ("max.message.bytes", "2000000".to_owned()),
        ],
    };
    ensure_topics(&kafka, &[old], Duration::from_secs(30))
        .await
        .expect("the old dead-letter topic");
    assert_eq!(
        topic_setting(&kafka, &topics.dlq, "retention.ms")
            .await
            .as_deref(),
        Some("-1")
    );

    let runtime = spawn_runtime(
        TestProcessor::new(),
        topics.config(&["--dlq-retention-ms", "3600000"]),
    )
    .await;
    assert_eq!(
        topic_setting(&kafka, &topics.dlq, "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );
    assert_eq!(
        topic_setting(&kafka, &topics.dlq, "max.message.bytes")
            .await
            .as_deref(),
        Some("2000000"),
        "the topic's other settings are kept"
    );
    runtime.stop().await.expect("stops");
    topics.delete().await;
}
