//! The companion topic: a topic consumed beside the source partition by partition, never
//! subscribed (the re-drive topic of [`crate::redrive`]). Partition p of it is assigned, revoked
//! and committed together with partition p of the source, so both always live on the same
//! instance, and its records share the source partition's ordering keys: a re-driven record never
//! runs beside a source record of the same response, and follows those fetched before it.
//!
//! Invariant: a rebalance list that holds source partition p holds companion partition p too,
//! and the ordering key of a companion record is queued in its source partition's keyed queue.

use rdkafka::TopicPartitionList;

use super::partitions::TopicPartition;

/// The source topic and its companion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Companion {
    pub source: &'static str,
    pub companion: &'static str,
}

impl Companion {
    /// The partition whose keyed queue `tp`'s records join: the source's, for the companion.
    pub fn owner(companion: Option<Companion>, tp: TopicPartition) -> TopicPartition {
        match companion {
            Some(c) if tp.topic == c.companion => TopicPartition {
                topic: c.source,
                partition: tp.partition,
            },
            _ => tp,
        }
    }

    /// Adds to a rebalance's list (assigned or revoked) the companion partition of each source
    /// partition in it; added partitions start at the group's committed offset.
    pub fn add_to(&self, list: &mut TopicPartitionList) {
        let partitions: Vec<i32> = list
            .elements()
            .iter()
            .filter(|e| e.topic() == self.source)
            .map(|e| e.partition())
            .collect();
        for partition in partitions {
            if list.find_partition(self.companion, partition).is_none() {
                list.add_partition(self.companion, partition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Offset;

    use super::*;
    use crate::engine::partitions::intern;

    fn redrive() -> Companion {
        Companion {
            source: intern("responses"),
            companion: intern("journal.dlq.redrive"),
        }
    }

    #[test]
    fn each_source_partition_brings_its_companion() {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("responses", 0, Offset::Offset(42))
            .expect("a valid offset");
        list.add_partition("responses", 3);
        redrive().add_to(&mut list);
        let mut elements: Vec<(String, i32, Offset)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect();
        elements.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert_eq!(
            elements,
            vec![
                ("journal.dlq.redrive".to_owned(), 0, Offset::Invalid),
                ("journal.dlq.redrive".to_owned(), 3, Offset::Invalid),
                ("responses".to_owned(), 0, Offset::Offset(42)),
                ("responses".to_owned(), 3, Offset::Invalid),
            ]
        );
        // Twice changes nothing.
        redrive().add_to(&mut list);
        assert_eq!(list.count(), 4);
    }

    #[test]
    fn companion_records_queue_with_their_source_partition() {
        let companion = Some(redrive());
        let source = TopicPartition::new("responses", 2);
        let copy = TopicPartition::new("journal.dlq.redrive", 2);
        assert_eq!(Companion::owner(companion, copy), source);
        assert_eq!(Companion::owner(companion, source), source);
        assert_eq!(Companion::owner(None, copy), copy);
    }
}
