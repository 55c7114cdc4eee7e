//! The gateway's durable Kafka producer.
//!
//! Invariant: `Publisher::publish` and `Publisher::publish_batch` report a record `Ok` only after
//! the broker acknowledged it with acks=all on an idempotent producer, and return within their
//! answer timeout (plus scheduling) either way. A record not answered by then stays with
//! librdkafka, which keeps delivering it for the delivery timeout, and its `OnSettled` hook hears
//! Kafka's final answer whenever it comes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config_with;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Why a record was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    #[error("the producer queue is full")]
    QueueFull,
    #[error("Kafka rejected the record: {0}")]
    Kafka(#[source] KafkaError),
}

impl PublishError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Timeout(_) => "timeout",
            PublishError::QueueFull => "queue_full",
            PublishError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )) => "timeout",
            PublishError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge,
            )) => "too_large",
            PublishError::Kafka(_) => "broker",
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// One record to publish: the key, the encoded value and its headers.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub key: &'a str,
    pub payload: &'a [u8],
    pub headers: &'a [(&'a str, &'a str)],
}

/// The delivery reports of one `publish_batch` call, filled in by librdkafka's polling thread.
///
/// Invariant: `remaining` is the number of unsettled slots; each slot is settled at most once, and
/// `done` is notified exactly once, by whoever settles the last slot. One wake-up per batch, however
/// many records it holds, instead of one per record.
struct Acks {
    outcomes: Box<[OnceLock<Result<Delivered, PublishError>>]>,
    remaining: AtomicUsize,
    done: Notify,
    on_settled: Option<OnSettled>,
}

/// Called with each record's index and outcome as soon as it is known: on librdkafka's polling
/// thread for a delivery report. It runs whether or not anyone still waits for the batch, so what
/// must follow Kafka's answer (the gateway's retry cache) does even when the client went away.
pub type OnSettled = Box<dyn Fn(usize, &Result<Delivered, PublishError>) + Send + Sync>;

impl Acks {
    fn new(records: usize, on_settled: Option<OnSettled>) -> Self {
        Acks {
            outcomes: (0..records).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(records),
            done: Notify::new(),
            on_settled,
        }
    }

    fn settle(&self, index: usize, outcome: Result<Delivered, PublishError>) {
        let Some(slot) = self.outcomes.get(index) else {
            return;
        };
        if slot.set(outcome).is_err() {
            return;
        }
        if let (Some(on_settled), Some(outcome)) = (&self.on_settled, slot.get()) {
            on_settled(index, outcome);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` keeps a permit when nobody waits yet, so this wake-up is never lost.
            self.done.notify_one();
        }
    }

    /// Waits until every slot is settled.
    async fn all_settled(&self) {
        while self.remaining.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
    }
}

/// What librdkafka hands back with a record's delivery report: its batch and its place there.
pub struct Pending {
    acks: Arc<Acks>,
    index: usize,
}

/// The producer's context: routes each delivery report to the batch that waits for it.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let outcome = match result {
            Ok(message) => Ok(Delivered {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(PublishError::Kafka(error.clone())),
        };
        pending.acks.settle(pending.index, outcome);
    }
}

/// The gateway's durable producer: idempotent, acks=all, bounded waits.
#[derive(Clone)]
pub struct Publisher {
    producer: ThreadedProducer<DeliveryContext>,
    timeout: Duration,
    metrics: Metrics,
}

impl Publisher {
    /// A producer whose callers wait at most `timeout` for Kafka's answer, while librdkafka keeps
    /// delivering each record for `delivery_timeout` (at least `timeout`).
    pub fn new(
        kafka: &KafkaArgs,
        linger_ms: u64,
        timeout: Duration,
        delivery_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let delivery_ms = delivery_timeout.max(timeout).as_millis().max(1).to_string();
        let tunables = [
            ("linger.ms", linger_ms.to_string()),
            ("compression.type", "lz4".to_owned()),
            // Bounded so that a slow broker costs a quick 503 (queue full), not memory: 32 MiB is
            // seconds of traffic at the gateway's target rates, and keeps its RSS under 100 MB.
            ("queue.buffering.max.messages", "100000".to_owned()),
            ("queue.buffering.max.kbytes", "32768".to_owned()),
        ];
        let producer = client_config_with(kafka, &tunables)
            // Idempotence implies acks=all, retries and per-partition ordering: promise 1.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka gives up on a record only after this (Kafka's delivery.timeout.ms). Giving
            // up sooner than a broker restart takes is what doubles records: a request the broker
            // wrote but could not answer is reported failed, and the client's retry writes it
            // again. Until then the record's outcome is still to come, however the caller was
            // answered.
            .set("message.timeout.ms", &delivery_ms)
            .set("request.timeout.ms", &timeout_ms)
            .create_with_context(DeliveryContext)?;
        Ok(Publisher {
            producer,
            timeout,
            metrics,
        })
    }

    /// Publishes one record and waits for its acknowledgement, at most `timeout` (`on_settled`:
    /// see [`Publisher::publish_batch`]).
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
        on_settled: Option<OnSettled>,
    ) -> Result<Delivered, PublishError> {
        let record = Record {
            key,
            payload,
            headers,
        };
        self.publish_batch(topic, &[record], on_settled)
            .await
            .pop()
            .unwrap_or(Err(PublishError::Timeout(self.timeout)))
    }

    /// Publishes every record and waits, at most `timeout` in all, until Kafka has acknowledged or
    /// rejected each of them. Returns one outcome per record, in order: `Ok` only for a record the
    /// broker acknowledged; a record with no report when the wait ends is a `Timeout`.
    /// `on_settled` hears each record's own outcome from librdkafka, even if this future is
    /// dropped after its first poll (which queues every record).
    pub async fn publish_batch(
        &self,
        topic: &str,
        records: &[Record<'_>],
        on_settled: Option<OnSettled>,
    ) -> Vec<Result<Delivered, PublishError>> {
        if records.is_empty() {
            return Vec::new();
        }
        let acks = Arc::new(Acks::new(records.len(), on_settled));
        let started = Instant::now();
        for (index, record) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let pending = Box::new(Pending {
                acks: acks.clone(),
                index,
            });
            let base = BaseRecord::with_opaque_to(topic, pending)
                .key(record.key)
                .payload(record.payload)
                .headers(headers);
            // Never wait for queue space: a full queue means Kafka is not keeping up, and the
            // client is better served by a quick 503 than by a request that hangs.
            if let Err((error, _)) = self.producer.send(base) {
                let error = match error {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        PublishError::QueueFull
                    }
                    other => PublishError::Kafka(other),
                };
                acks.settle(index, Err(error));
            }
        }
        // The caller's answer is bounded; a record unsettled by then is reported as a timeout
        // here, and librdkafka goes on delivering it (`on_settled` hears how that ends).
        let _ = tokio::time::timeout(self.timeout, acks.all_settled()).await;
        let outcomes: Vec<Result<Delivered, PublishError>> = acks
            .outcomes
            .iter()
            .map(|slot| {
                slot.get()
                    .cloned()
                    .unwrap_or(Err(PublishError::Timeout(self.timeout)))
            })
            .collect();
        self.metrics
            .observe_produced(topic, started.elapsed(), &outcomes);
        outcomes
    }

    /// Waits until every queued record is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offset: i64) -> Result<Delivered, PublishError> {
        Ok(Delivered {
            partition: 0,
            offset,
        })
    }

    #[tokio::test]
    async fn a_batch_is_settled_once_its_last_record_is_reported() {
        // What the hook heard: (index, offset or -1 for a failure).
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook: OnSettled = Box::new({
            let heard = heard.clone();
            move |index, outcome| {
                let offset = outcome.as_ref().map_or(-1, |d| d.offset);
                heard.lock().expect("not poisoned").push((index, offset));
            }
        });
        let acks = Arc::new(Acks::new(3, Some(hook)));
        acks.settle(1, delivered(11));
        acks.settle(1, delivered(99));
        let waiter = tokio::spawn({
            let acks = acks.clone();
            async move { acks.all_settled().await }
        });
        acks.settle(0, Err(PublishError::QueueFull));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one record is still unreported");
        acks.settle(2, delivered(12));
        waiter.await.expect("the waiter finishes");
        let outcomes: Vec<_> = acks
            .outcomes
            .iter()
            .map(|slot| slot.get().cloned())
            .collect();
        assert!(matches!(outcomes[0], Some(Err(PublishError::QueueFull))));
        assert_eq!(
            outcomes[1].as_ref().map(|o| o.as_ref().ok().copied()),
            Some(Some(Delivered {
                partition: 0,
                offset: 11
            })),
            "a second report for one record changes nothing"
        );
        assert_eq!(
            outcomes[2].as_ref().map(|o| o.as_ref().ok().copied()),
            Some(Some(Delivered {
                partition: 0,
                offset: 12
            }))
        );
        assert_eq!(
            *heard.lock().expect("not poisoned"),
            vec![(1, 11), (0, -1), (2, 12)],
            "the hook hears each record once, as it is settled"
        );
    }

    #[tokio::test]
    async fn a_batch_settled_before_anyone_waits_is_not_waited_for() {
        let acks = Acks::new(2, None);
        acks.settle(0, delivered(1));
        acks.settle(1, delivered(2));
        tokio::time::timeout(Duration::from_secs(5), acks.all_settled())
            .await
            .expect("no wake-up is lost");
        // Reports for records outside the batch are ignored rather than panicking.
        acks.settle(7, delivered(3));
    }

    /// With no broker to talk to, every record of a batch is answered, as not acknowledged,
    /// within the produce timeout.
    #[tokio::test]
    async fn without_a_broker_every_record_fails_within_the_timeout() {
        let kafka = KafkaArgs {
            bootstrap: "127.0.0.1:9".into(),
            properties: Vec::new(),
        };
        let timeout = Duration::from_millis(500);
        let publisher =
            Publisher::new(&kafka, 1, timeout, timeout, Metrics::new()).expect("producer");
        let record = Record {
            key: "k",
            payload: b"v",
            headers: &[("h", "1")],
        };
        let started = Instant::now();
        let outcomes = publisher.publish_batch("t", &[record; 3], None).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| o.is_err()), "{outcomes:?}");
    }
}
