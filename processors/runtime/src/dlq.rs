//! The dead-letter topic: records whose effect failed for good (or that cannot be decoded) go
//! here, with headers saying where they came from and why, in the spirit of Kafka Connect's
//! `__connect.errors.*` headers.
//!
//! Invariant: `send` returns `Ok` only once Kafka acknowledged the dead letter (idempotent
//! producer, acks=all); only then may the source record's offset be committed. The error message
//! header never holds a phone number in full (E.164 numbers in it are redacted at write).

use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::raw::RawRecord;

/// Header names, all under `formstream.dlq.`.
pub mod headers {
    pub const TOPIC: &str = "formstream.dlq.topic";
    pub const PARTITION: &str = "formstream.dlq.partition";
    pub const OFFSET: &str = "formstream.dlq.offset";
    pub const PROCESSOR: &str = "formstream.dlq.processor";
    pub const ERROR_KIND: &str = "formstream.dlq.error.kind";
    pub const ERROR_MESSAGE: &str = "formstream.dlq.error.message";
    pub const ATTEMPTS: &str = "formstream.dlq.attempts";
    pub const FIRST_ATTEMPT_MS: &str = "formstream.dlq.first.attempt.ms";
    pub const LAST_ATTEMPT_MS: &str = "formstream.dlq.last.attempt.ms";

    /// Every dead-letter header starts with this.
    pub const PREFIX: &str = "formstream.dlq.";

    /// On a re-driven copy (see [`crate::redrive`]): how many times the record has been re-driven.
    pub const REDRIVE_COUNT: &str = "formstream.redrive.count";
    /// On a re-driven copy: the dead letter it is a copy of, `<dead-letter topic>:<partition>-<offset>`.
    pub const REDRIVE_FROM: &str = "formstream.redrive.from";
    /// On a re-driven copy: where the record was first consumed, `<topic>:<partition>:<offset>`
    /// (kept through later re-drives).
    pub const REDRIVE_ORIGIN: &str = "formstream.redrive.origin";
    /// Every re-drive header starts with this.
    pub const REDRIVE_PREFIX: &str = "formstream.redrive.";
}

/// Why a record was dead-lettered (a bounded set: it is also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The processor said the effect can never succeed.
    Permanent,
    /// Retriable failures used up the retry budget.
    RetriesExhausted,
    /// The bytes could not be decoded with the known schemas.
    Undecodable,
    /// The form the record refers to never appeared in the forms view.
    UnknownForm,
    /// The record's target refused access for longer than `--forbidden-timeout`.
    Forbidden,
}

impl Kind {
    /// Every kind, in the order they are documented.
    pub const ALL: [Kind; 4] = [
        Kind::Permanent,
        Kind::RetriesExhausted,
        Kind::Undecodable,
        Kind::UnknownForm,
    ];

    /// The kind named `name` (its `formstream.dlq.error.kind` header value).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Permanent => "permanent",
            Kind::RetriesExhausted => "retries_exhausted",
            Kind::Undecodable => "undecodable",
            Kind::UnknownForm => "unknown_form",
            Kind::Forbidden => "forbidden",
        }
    }
}

/// One dead letter: the source record as it was, and why it failed.
#[derive(Debug, Clone)]
pub struct Letter {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The source record as fetched: its key, value and headers are copied over.
    pub record: RawRecord,
    pub kind: Kind,
    pub message: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub last_attempt_ms: i64,
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    processor: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, topic: String, processor: String) -> Result<Self, KafkaError> {
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        Ok(DeadLetters {
            producer,
            topic,
            processor,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes the letter and waits for Kafka's acknowledgement (at most `timeout`).
    pub async fn send(&self, letter: &Letter, timeout: Duration) -> Result<(), KafkaError> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let attempts = letter.attempts.to_string();
        let first = letter.first_attempt_ms.to_string();
        let last = letter.last_attempt_ms.to_string();
        // Error messages can be long (cause chains); keep the header bounded. They may quote a
        // phone number (a provider refusing a recipient): redacted before it is written, as in
        // logs, since a dead letter is kept for --dlq-retention-ms and read by operators.
        let message: String = letter.message.chars().take(2_000).collect();
        let message = crate::redrive::letter::scrub_phones(&message);
        let mut owned = OwnedHeaders::new_with_capacity(letter.record.headers().count() + 9);
        for (name, value) in letter.record.headers() {
            owned = owned.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        for (name, value) in [
            (headers::TOPIC, letter.source_topic.as_str()),
            (headers::PARTITION, &partition),
            (headers::OFFSET, &offset),
            (headers::PROCESSOR, &self.processor),
            (headers::ERROR_KIND, letter.kind.as_str()),
            (headers::ERROR_MESSAGE, &message),
            (headers::ATTEMPTS, &attempts),
            (headers::FIRST_ATTEMPT_MS, &first),
            (headers::LAST_ATTEMPT_MS, &last),
        ] {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(owned);
        if let Some(key) = letter.record.key() {
            record = record.key(key);
        }
        if let Some(payload) = letter.record.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, timeout)
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}
