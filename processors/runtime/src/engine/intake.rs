//! Intake: a record fetched from the consumer becomes a job, copied out of librdkafka once and
//! given its ordering key (none for a processor that does not order revisions,
//! [`Processor::orders_revisions`]).
//!
//! Invariant: two records get the same ordering key exactly when they carry the same
//! `response_id` header ([`ORDERING_HEADER`]) and the same `organisation` header
//! ([`ORGANISATION_HEADER`], or both lack it), or, both lacking a response id, the same Kafka key
//! (up to a 64-bit hash collision, which only costs concurrency: the two wait for each other); a
//! header and a Kafka key that happen to be equal are different keys. So a response id that
//! another organisation reuses never holds a record back behind the other's (docs/design.md, promise 8).

use std::hash::BuildHasher;
use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::Engine;
use super::partitions::{Admission, Fetched, TopicPartition, intern};
use crate::processor::{ORDERING_HEADER, ORGANISATION_HEADER, Processor};
use crate::raw::RawRecord;

/// Where a record's ordering key comes from; hashed with the key, so that a header value and a
/// Kafka key that happen to be equal are still different keys.
#[derive(Debug, Clone, Copy, Hash)]
enum OrderedBy {
    /// The `response_id` header ([`ORDERING_HEADER`]), within the `organisation` header.
    Header,
    /// The Kafka key (the form id), for a record without the header.
    Key,
}

/// The record's ordering key: the (organisation, response id) orders a response's revisions;
/// without a response id, the Kafka key (the form id) does; a record with neither is ordered by
/// nothing but its offset. One more header read and a few more bytes hashed per record: the
/// cost stays flat.
pub fn ordering_key(hasher: &impl BuildHasher, raw: &RawRecord) -> Option<u64> {
    match raw.header(ORDERING_HEADER) {
        Some(id) if std::str::from_utf8(id).is_ok() => {
            Some(hasher.hash_one((OrderedBy::Header, raw.header(ORGANISATION_HEADER), id)))
        }
        _ => raw.key().map(|key| hasher.hash_one((OrderedBy::Key, key))),
    }
}

impl<P: Processor> Engine<P> {
    /// The interned name of a consumed topic (without the lock of [`intern`] per record).
    fn topic_name(&mut self, topic: &str) -> &'static str {
        if let Some(name) = self.topic_names.iter().find(|name| **name == topic) {
            return name;
        }
        let name = intern(topic);
        self.topic_names.push(name);
        name
    }

    /// Tracks a fetched record and queues it behind its key, or makes it ready.
    pub(super) fn on_message(&mut self, message: &BorrowedMessage<'_>) {
        let tp = TopicPartition {
            topic: self.topic_name(message.topic()),
            partition: message.partition(),
        };
        let hasher = &self.key_hasher;
        let ordered = self.ordered;
        // The record outlives librdkafka's copy (it is handed to a lane): copied out once, and
        // only when it is admitted.
        let mut copy = || {
            let headers = message.headers();
            let raw = RawRecord::new(message.key(), message.payload(), || {
                headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|header| (header.key, header.value.unwrap_or_default()))
            });
            let key = if ordered {
                ordering_key(hasher, &raw)
            } else {
                None
            };
            (raw, key)
        };
        let admission = match self.partitions.lock() {
            Ok(mut partitions) => partitions.admit(Fetched {
                tp,
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
                copy: &mut copy,
            }),
            Err(_) => return,
        };
        if let Admission::Runnable(job) = admission {
            self.lanes.push(job, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&[u8]>, headers: &[(&str, &[u8])]) -> RawRecord {
        RawRecord::new(key, Some(b"value"), || headers.iter().copied())
    }

    #[test]
    fn the_response_id_header_orders_records() {
        let hasher = foldhash::fast::RandomState::default();
        let a = ordering_key(
            &hasher,
            &record(Some(b"form-1"), &[(ORDERING_HEADER, b"r1")]),
        );
        let b = ordering_key(
            &hasher,
            &record(Some(b"form-2"), &[(ORDERING_HEADER, b"r1")]),
        );
        let c = ordering_key(
            &hasher,
            &record(Some(b"form-1"), &[(ORDERING_HEADER, b"r2")]),
        );
        assert!(a.is_some());
        assert_eq!(a, b, "one response, whatever the Kafka key");
        assert_ne!(a, c, "two responses of one form run concurrently");
    }

    #[test]
    fn a_response_id_reused_by_another_organisation_is_another_key() {
        let hasher = foldhash::fast::RandomState::default();
        let of = |organisation: &[u8]| {
            ordering_key(
                &hasher,
                &record(
                    Some(b"household"),
                    &[
                        (ORDERING_HEADER, b"r1"),
                        (ORGANISATION_HEADER, organisation),
                    ],
                ),
            )
        };
        assert_eq!(of(b"acme"), of(b"acme"));
        assert_ne!(of(b"acme"), of(b"globex"));
        // A record written without the header (before it existed) is a key of its own too.
        let bare = ordering_key(
            &hasher,
            &record(Some(b"household"), &[(ORDERING_HEADER, b"r1")]),
        );
        assert_ne!(of(b"acme"), bare);
    }

    #[test]
    fn without_the_header_the_kafka_key_orders_records() {
        let hasher = foldhash::fast::RandomState::default();
        let a = ordering_key(&hasher, &record(Some(b"form-1"), &[]));
        let b = ordering_key(&hasher, &record(Some(b"form-1"), &[("other", b"x")]));
        assert!(a.is_some());
        assert_eq!(a, b);
        // A response id that is not UTF-8 is no response id.
        let c = ordering_key(
            &hasher,
            &record(Some(b"form-1"), &[(ORDERING_HEADER, b"\xff")]),
        );
        assert_eq!(a, c);
    }

    #[test]
    fn a_header_and_an_equal_kafka_key_are_different_keys() {
        let hasher = foldhash::fast::RandomState::default();
        let by_header = ordering_key(&hasher, &record(None, &[(ORDERING_HEADER, b"same")]));
        let by_key = ordering_key(&hasher, &record(Some(b"same"), &[]));
        assert_ne!(by_header, by_key);
    }

    #[test]
    fn a_record_with_neither_has_no_key() {
        let hasher = foldhash::fast::RandomState::default();
        assert_eq!(ordering_key(&hasher, &record(None, &[])), None);
    }
}
