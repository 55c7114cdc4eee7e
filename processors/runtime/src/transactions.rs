//! Kafka transactions for processors that publish records ([`Processor::transactional`]): a
//! partition's outputs and its consumer offset are committed together, or not at all.
//!
//! Invariant: an output is published inside a committed transaction only together with an offset
//! past the record that produced it, so that a `read_committed` reader sees it exactly once. A
//! failed or aborted transaction leaves both the outputs (still held by the engine, to be sent
//! again in the next transaction) and the offsets where they were.
//!
//! Deliveries: a transaction is committed only once Kafka acknowledged every record sent in it
//! (flushed, no failed delivery report). Around a broker restart librdkafka purges queued
//! records (an abort, an epoch bump); should one of them belong to a transaction that then
//! commits with its offsets, its output would be lost for good, so a failed delivery aborts the
//! transaction, to be sent again, instead.
//!
//! Fencing: each instance has its own transactional id, and the offsets travel with the
//! consumer's group metadata (KIP-447), so a zombie that lost its partitions in a rebalance cannot
//! commit for them: the broker rejects its transaction, and the engine drops the work of
//! partitions it no longer owns.
//!
//! [`Processor::transactional`]: crate::Processor::transactional

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;

use crate::processor::Output;

/// How long one transaction step (begin, send offsets, commit, abort) may block.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transaction did not commit, and what the engine should do about it.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// Aborted (or never begun); the outputs and offsets are kept and tried again.
    #[error("transaction aborted, to be retried: {0}")]
    Retry(KafkaError),
    /// The producer cannot go on (fenced by a newer instance, or a fatal error): the processor
    /// stops, and its partitions move to another instance, which redoes the uncommitted work.
    #[error("transactional producer failed fatally: {0}")]
    Fatal(KafkaError),
}

/// A transactional producer, one per processor instance.
pub struct Transactor {
    producer: ThreadedProducer<Deliveries>,
}

/// The producer's delivery reports: how many records Kafka did not take since the count was
/// last reset, and why the last one failed.
#[derive(Default, Clone)]
pub struct Deliveries(Arc<DeliveryCount>);

#[derive(Default)]
pub struct DeliveryCount {
    failed: AtomicUsize,
    last_error: Mutex<Option<KafkaError>>,
}

impl Deliveries {
    /// Failures since the last call, and the last one's error; the count starts again.
    fn take_failures(&self) -> (usize, Option<KafkaError>) {
        let failed = self.0.failed.swap(0, Ordering::AcqRel);
        let error = self
            .0
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        (failed, error)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((error, _)) = result {
            self.0.failed.fetch_add(1, Ordering::AcqRel);
            *self
                .0
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
        }
    }
}

impl Transactor {
    /// Creates the producer and registers its transactional id with the broker (blocking; call
    /// from a blocking context).
    pub fn new(kafka: &KafkaArgs, transactional_id: &str) -> Result<Self, KafkaError> {
        let producer: ThreadedProducer<Deliveries> = client_config(kafka)
            .set("transactional.id", transactional_id)
            // A crashed instance's open transaction holds back its partitions' last stable
            // offset until the broker aborts it: keep that short (Kafka's default is 60 s).
            // Transactions here last one commit interval plus one commit.
            .set("transaction.timeout.ms", "15000")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create_with_context(Deliveries::default())?;
        producer.init_transactions(Timeout::After(STEP_TIMEOUT))?;
        Ok(Transactor { producer })
    }

    /// Publishes `outputs` and commits `offsets` for `group` in one transaction (blocking).
    pub fn commit(
        &self,
        outputs: &[Output],
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TransactionError> {
        self.producer.begin_transaction().map_err(classify)?;
        // Reports of an earlier transaction's purged records may still come in: they can only
        // make this one abort and go again, never commit with a record missing.
        let deliveries = self.producer.context().clone();
        deliveries.take_failures();
        let outcome = self
            .send_all(outputs)
            .and_then(|()| self.producer.flush(Timeout::After(STEP_TIMEOUT)))
            .and_then(|()| match deliveries.take_failures() {
                (0, _) => Ok(()),
                (_, Some(error)) => Err(error),
                (_, None) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail)),
            })
            .and_then(|()| {
                self.producer.send_offsets_to_transaction(
                    offsets,
                    group,
                    Timeout::After(STEP_TIMEOUT),
                )
            })
            .and_then(|()| {
                // Nothing may have failed since the flush either.
                match deliveries.take_failures() {
                    (0, _) => self
                        .producer
                        .commit_transaction(Timeout::After(STEP_TIMEOUT)),
                    (_, Some(error)) => Err(error),
                    (_, None) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail)),
                }
            });
        match outcome {
            Ok(()) => Ok(()),
            Err(error) => {
                let classified = classify(error);
                if let TransactionError::Retry(_) = classified
                    && let Err(abort) = self
                        .producer
                        .abort_transaction(Timeout::After(STEP_TIMEOUT))
                {
                    return Err(TransactionError::Fatal(abort));
                }
                Err(classified)
            }
        }
    }

    fn send_all(&self, outputs: &[Output]) -> Result<(), KafkaError> {
        for output in outputs {
            let mut headers = OwnedHeaders::new_with_capacity(output.headers.len());
            for (name, value) in &output.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&output.topic)
                .payload(output.payload.as_slice())
                .headers(headers);
            if let Some(key) = &output.key {
                record = record.key(key.as_slice());
            }
            // A full local queue only means librdkafka has not sent earlier records yet: wait
            // for room (its own thread is sending) rather than fail the transaction.
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((error, _)) => return Err(error),
                }
            }
        }
        Ok(())
    }
}

/// Fatal only when librdkafka says the producer cannot go on (e.g. fenced); anything else is
/// aborted and retried with the next transaction.
fn classify(error: KafkaError) -> TransactionError {
    if matches!(&error, KafkaError::Transaction(e) if e.is_fatal()) {
        TransactionError::Fatal(error)
    } else {
        TransactionError::Retry(error)
    }
}
