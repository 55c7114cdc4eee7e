//! Rebalances, through the consumer's context: an assigned partition gets a fresh state (and the
//! processor's own start offset, when it keeps one); a revoked one commits its finished offsets
//! and stops its workers. The context also takes librdkafka's statistics (partition ends, for
//! lag) and counts commit results.
//!
//! Invariant: a revoked partition's state is gone before the revocation returns, so no
//! completion of that assignment is ever stored or committed afterwards; what is committed on the
//! way out is its watermark, and nothing at all when the partitions were lost (another instance
//! may own them already) or when the processor commits only in transactions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::offset_list;
use super::companion::Companion;
use super::lag::PartitionEnds;
use super::partitions::{Partitions, TopicPartition};
use crate::metrics::Metrics;

/// A processor's [`crate::Processor::start_offsets`], boxed so that the consumer's context stays
/// non-generic: (topic, assigned partitions) to the next offset to read per partition.
pub type StartOffsets = Box<dyn Fn(&str, &[i32]) -> Option<HashMap<i32, i64>> + Send + Sync>;

/// The consumer's context: commits finished offsets when partitions are revoked, keeps the
/// partition state in step with the assignment, and starts assigned partitions where the
/// processor says when it keeps its own offsets.
pub struct RuntimeContext {
    pub(super) partitions: Arc<Mutex<Partitions>>,
    metrics: Metrics,
    /// End of each partition, for lag.
    pub(super) ends: PartitionEnds,
    /// Offsets are committed only inside transactions (with the outputs): none on revoke.
    transactional: bool,
    /// The processor's own start offsets, consulted on every assignment.
    start_offsets: Option<StartOffsets>,
    /// The re-drive topic, assigned and revoked with the source partition by partition.
    companion: Option<Companion>,
}

impl RuntimeContext {
    pub fn new(metrics: Metrics, transactional: bool) -> Self {
        RuntimeContext {
            partitions: Arc::new(Mutex::new(Partitions::default())),
            metrics,
            ends: PartitionEnds::default(),
            transactional,
            start_offsets: None,
            companion: None,
        }
    }

    /// Consumes `companion`'s partitions with the source's (see [`Companion`]), if there is one.
    pub fn with_companion(mut self, companion: Option<Companion>) -> Self {
        self.companion = companion;
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.companion = companion;
        }
        self
    }

    /// Starts assigned partitions at the offsets `hook` gives instead of the group's commits.
    pub fn with_start_offsets(mut self, hook: StartOffsets) -> Self {
        self.start_offsets = Some(hook);
        self
    }
}

/// Writes the processor's start offsets into an assignment before it is applied: librdkafka
/// starts an assigned partition at the offset its assignment entry carries, and at the group's
/// committed offset only when the entry has none (`Offset::Invalid`).
fn apply_start_offsets(hook: &StartOffsets, assignment: &mut TopicPartitionList) {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for element in assignment.elements() {
        by_topic
            .entry(element.topic().to_owned())
            .or_default()
            .push(element.partition());
    }
    for (topic, partitions) in by_topic {
        let Some(offsets) = hook(&topic, &partitions) else {
            continue;
        };
        for partition in partitions {
            let Some(&offset) = offsets.get(&partition) else {
                continue;
            };
            match assignment.set_partition_offset(&topic, partition, Offset::Offset(offset)) {
                Ok(()) => tracing::info!(
                    %topic,
                    partition,
                    offset,
                    "Starting at the processor's own offset."
                ),
                Err(error) => tracing::warn!(
                    %error,
                    %topic,
                    partition,
                    "Could not set the processor's start offset; starting at the group's."
                ),
            }
        }
    }
}

/// Partitions leave this instance: their states go (their workers stop, their completions will
/// be dropped). Returns the offsets to commit on the way out: each revoked partition's
/// watermark, when `commit` (not lost, not transactional) and it fetched anything.
fn revoke(
    partitions: &mut Partitions,
    revoked: impl IntoIterator<Item = TopicPartition>,
    commit: bool,
    mut forget: impl FnMut(&TopicPartition),
) -> Vec<(TopicPartition, i64)> {
    let mut offsets = Vec::new();
    for tp in revoked {
        let Some(state) = partitions.revoke(&tp) else {
            continue;
        };
        // A transactional processor's finished work is committed only with its outputs; what no
        // transaction committed yet is redone by the new owner, exactly once.
        if commit && let Some(watermark) = state.watermark() {
            offsets.push((tp, watermark));
        }
        forget(&tp);
    }
    offsets
}

fn elements(list: &TopicPartitionList) -> impl Iterator<Item = TopicPartition> + '_ {
    list.elements()
        .into_iter()
        .map(|element| TopicPartition::new(element.topic(), element.partition()))
}

impl ClientContext for RuntimeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error.");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.ends.update(statistics);
    }
}

impl ConsumerContext for RuntimeContext {
    /// rust-rdkafka's own rebalance handling (pre-rebalance, then (incremental) assign or
    /// unassign, then post-rebalance), with two additions: the list first takes the companion
    /// partitions of its source partitions ([`Companion`]), and an assignment takes the
    /// processor's start offsets ([`RuntimeContext::with_start_offsets`]). Setting them in the
    /// list handed to `incremental_assign` is atomic with the assignment, unlike a seek after
    /// it, which races with the fetcher and fails for a partition not yet fetching.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if let Some(companion) = &self.companion {
            companion.add_to(tpl);
        }
        if assign && let Some(hook) = &self.start_offsets {
            apply_start_offsets(hook, tpl);
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Rebalance error.");
                Rebalance::Error(KafkaError::Rebalance(code))
            }
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let applied = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(error) = applied {
            tracing::error!(%error, assign, "Could not apply the rebalance.");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let lost = consumer.assignment_lost();
        let offsets = match self.partitions.lock() {
            Ok(mut partitions) => revoke(
                &mut partitions,
                elements(revoked),
                !lost && !self.transactional,
                |tp| self.metrics.forget_partition(tp.topic, tp.partition),
            ),
            Err(_) => Vec::new(),
        };
        self.metrics
            .rebalance(if lost { "lost" } else { "revoked" }, revoked.count());
        if lost {
            tracing::warn!(
                partitions = revoked.count(),
                "Partitions lost; their work is abandoned uncommitted."
            );
            return;
        }
        if !offsets.is_empty() {
            // Commit what is finished before the partitions move to another instance.
            match consumer.commit(&offset_list(&offsets), CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = offsets.len(),
                    "Committed finished offsets of revoked partitions."
                ),
                Err(error) => {
                    tracing::warn!(%error, "Commit on revoke failed; the new owner will redo some records.")
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        if let Ok(mut partitions) = self.partitions.lock() {
            for tp in elements(assigned) {
                partitions.assign(tp);
            }
        }
        self.metrics.rebalance("assigned", assigned.count());
        tracing::info!(partitions = assigned.count(), "Partitions assigned.");
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => self.metrics.commit(true),
            // Nothing to commit is not a failure.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.commit(false);
                tracing::warn!(%error, "Offset commit failed; it is retried with the next one.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::partitions::PartitionSet;
    use crate::engine::partitions::tests::{admit, completion, runnable, tp};

    /// Partitions 0 to 2 assigned; partition 0 finished offsets 0 and 1, partition 1 has offset 0
    /// running, partition 2 fetched nothing.
    fn busy() -> Partitions {
        let mut partitions = Partitions::default();
        for partition in 0..3 {
            partitions.assign(tp(partition));
        }
        let mut moved = PartitionSet::default();
        for offset in 0..2 {
            let job = runnable(admit(&mut partitions, tp(0), offset, None));
            partitions.complete(completion(&job), Instant::now(), &mut moved);
        }
        runnable(admit(&mut partitions, tp(1), 0, None));
        partitions
    }

    #[test]
    fn revoking_commits_each_watermark_and_forgets_the_partitions() {
        let mut partitions = busy();
        let alive = partitions.get(&tp(1)).expect("assigned").alive.clone();
        let mut forgotten = Vec::new();
        let mut offsets = revoke(&mut partitions, [tp(0), tp(1), tp(2), tp(7)], true, |tp| {
            forgotten.push(tp.partition)
        });
        offsets.sort_by_key(|(tp, _)| tp.partition);
        // Partition 1's running record is not finished: its watermark stays below it. Partition
        // 2 fetched nothing, and 7 was never assigned here: nothing to commit for them.
        assert_eq!(offsets, vec![(tp(0), 2), (tp(1), 0)]);
        assert_eq!(forgotten, vec![0, 1, 2]);
        assert_eq!(partitions.assigned().count(), 0);
        assert!(!alive.holds(), "the revoked assignment's workers stop");
    }

    #[test]
    fn lost_or_transactional_partitions_commit_nothing_on_revoke() {
        let mut partitions = busy();
        let offsets = revoke(&mut partitions, [tp(0), tp(1)], false, |_| {});
        assert!(offsets.is_empty());
        assert_eq!(partitions.assigned().count(), 1);
    }

    #[test]
    fn start_offsets_are_written_into_the_assignment() {
        let hook: StartOffsets = Box::new(|topic, partitions| {
            assert_eq!(topic, "responses");
            assert_eq!(partitions, &[0, 1, 2]);
            Some(HashMap::from([(0, 42), (2, 0)]))
        });
        let mut assignment = TopicPartitionList::new();
        for partition in 0..3 {
            assignment.add_partition("responses", partition);
        }
        apply_start_offsets(&hook, &mut assignment);
        let offset = |partition| {
            assignment
                .find_partition("responses", partition)
                .expect("assigned")
                .offset()
        };
        assert_eq!(offset(0), Offset::Offset(42));
        // A partition the processor does not name starts at the group's committed offset.
        assert_eq!(offset(1), Offset::Invalid);
        assert_eq!(offset(2), Offset::Offset(0));
    }

    #[test]
    fn no_start_offsets_leave_the_assignment_alone() {
        let hook: StartOffsets = Box::new(|_, _| None);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("responses", 0);
        apply_start_offsets(&hook, &mut assignment);
        assert_eq!(
            assignment
                .find_partition("responses", 0)
                .expect("assigned")
                .offset(),
            Offset::Invalid
        );
    }
}
