//! `formstream topics tail`: prints a topic's records decoded to JSON, for people poking at the
//! pipeline (kcat shows Avro as bytes).
//!
//! Invariant: read-only; it joins no consumer group and commits nothing.

use std::time::Duration;

use formstream_schemas::{Codec, Form, Response, ResponseFlag};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaArgs, TopicNames};
use crate::kafka::{client_config, partition_count};

/// Prints up to `count` records of `topic` (from the beginning, or only new ones), each as one JSON
/// line with its partition, offset, key, headers and decoded value. Stops after `idle` without records.
pub async fn tail(
    kafka: &KafkaArgs,
    names: &TopicNames,
    codec: &Codec,
    topic: &str,
    from_beginning: bool,
    count: usize,
    idle: Duration,
) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client_config(kafka)
        .set(
            "group.id",
            format!("formstream-tail-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions = partition_count(consumer.client(), topic, Duration::from_secs(10))?;
    anyhow::ensure!(partitions > 0, "topic {topic} does not exist");
    let mut assignment = TopicPartitionList::new();
    let start = if from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for partition in 0..partitions as i32 {
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;

    let mut printed = 0;
    while printed < count {
        let Some(message) = consumer.poll(idle) else {
            break;
        };
        let message = message?;
        let value = match message.payload() {
            None => serde_json::Value::Null,
            Some(bytes) => decode(codec, names, topic, bytes).await,
        };
        let headers: serde_json::Map<String, serde_json::Value> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), value.into())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = serde_json::json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": value,
        });
        println!("{line}");
        printed += 1;
    }
    Ok(printed)
}

async fn decode(codec: &Codec, names: &TopicNames, topic: &str, bytes: &[u8]) -> serde_json::Value {
    let decoded = if topic == names.forms_topic {
        codec
            .decode::<Form>(bytes)
            .await
            .map(|v| serde_json::to_value(v).unwrap_or_default())
    } else if topic == names.flags_topic {
        codec
            .decode::<ResponseFlag>(bytes)
            .await
            .map(|v| serde_json::to_value(v).unwrap_or_default())
    } else {
        codec
            .decode::<Response>(bytes)
            .await
            .map(|v| serde_json::to_value(v).unwrap_or_default())
    };
    decoded.unwrap_or_else(
        |error| serde_json::json!({ "undecodable": error.to_string(), "bytes": bytes.len() }),
    )
}
