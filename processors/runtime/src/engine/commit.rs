//! Commits: what may be committed on each partition, and the bookkeeping once it is. A plain
//! processor stores each partition's watermark for librdkafka's auto-commit (and the engine
//! commits it on revoke and at shutdown); a transactional processor commits the watermarks in a
//! Kafka transaction together with the outputs of the records below them.
//!
//! Invariant (docs/design.md, promise 3): the offset offered for commit on a partition is its
//! tracker's watermark in the current assignment, so every record below it has finished (its
//! effect succeeded, or Kafka acknowledged its dead letter); it is offered only when it grew; and
//! a transaction carries exactly the outputs of the records below the offsets it commits.

use std::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::Engine;
use super::partitions::{PartitionSet, Partitions, TopicPartition};
use crate::processor::{Output, Processor};
use crate::transactions::TransactionError;

/// One transaction's worth of finished work: every partition's watermark that grew since the
/// last commit, and the outputs of the records below it.
#[derive(Debug, Default)]
pub struct Transaction {
    pub offsets: Vec<(TopicPartition, i64)>,
    pub outputs: Vec<Output>,
    /// (partition, epoch, watermark) of each offset: once committed, a partition still in the
    /// same assignment drops the outputs below it.
    covered: Vec<(TopicPartition, u64, i64)>,
}

impl Partitions {
    /// The watermark of each partition in `moved` that grew past what was stored, marking it
    /// stored; `moved` is emptied.
    pub fn offsets_to_store(&mut self, moved: &mut PartitionSet) -> Vec<(TopicPartition, i64)> {
        let mut offsets = Vec::with_capacity(moved.len());
        for tp in moved.drain() {
            let Some(state) = self.states.get_mut(&tp) else {
                continue;
            };
            let Some(watermark) = state.watermark() else {
                continue;
            };
            if watermark > state.stored {
                state.stored = watermark;
                offsets.push((tp, watermark));
            }
        }
        offsets
    }

    /// The next transaction: the partitions whose watermark grew past the last committed one,
    /// with the outputs of their records below it. `None` when nothing grew.
    pub fn next_transaction(&self) -> Option<Transaction> {
        let mut transaction = Transaction::default();
        for (tp, state) in &self.states {
            let Some(watermark) = state.watermark() else {
                continue;
            };
            if watermark <= state.stored {
                continue;
            }
            transaction.offsets.push((*tp, watermark));
            transaction.outputs.extend(
                state
                    .outputs
                    .range(..watermark)
                    .flat_map(|(_, outputs)| outputs.iter().cloned()),
            );
            transaction.covered.push((*tp, state.epoch, watermark));
        }
        (!transaction.offsets.is_empty()).then_some(transaction)
    }

    /// `transaction` committed: its offsets are stored and its outputs dropped, for the
    /// partitions still in the assignment it was built from (a partition revoked meanwhile keeps
    /// nothing here any more, and one assigned again starts over).
    pub fn transaction_committed(&mut self, transaction: &Transaction) {
        for &(tp, epoch, watermark) in &transaction.covered {
            if let Some(state) = self.states.get_mut(&tp)
                && state.epoch == epoch
            {
                state.stored = watermark;
                state.outputs = state.outputs.split_off(&watermark);
            }
        }
    }
}

/// `offsets` as librdkafka takes them; an entry it refuses is left out.
pub fn offset_list(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (tp, offset) in offsets {
        let _ = list.add_partition_offset(tp.topic, tp.partition, Offset::Offset(*offset));
    }
    list
}

impl<P: Processor> Engine<P> {
    /// Tells the processor, and stores for librdkafka's auto-commit, the watermark of every
    /// partition whose watermark moved (a transactional processor's go in its next transaction).
    pub(super) fn store_offsets(&mut self) {
        if self.moved.is_empty() {
            return;
        }
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        for tp in &self.moved {
            if let Some(watermark) = partitions.get(tp).and_then(|state| state.watermark()) {
                self.worker
                    .processor
                    .finished_below(tp.topic, tp.partition, watermark);
            }
        }
        if self.transactor.is_some() {
            // Committed by transactions only (see `commit_transaction`).
            self.moved.clear();
            return;
        }
        let offsets = partitions.offsets_to_store(&mut self.moved);
        drop(partitions);
        if !offsets.is_empty()
            && let Err(error) = self.consumer.store_offsets(&offset_list(&offsets))
        {
            // A partition revoked in between: its new owner starts from the last commit.
            tracing::debug!(%error, "Could not store offsets.");
        }
    }

    /// Commits, in one transaction, every partition's finished offsets and the outputs of the
    /// records below them. A transaction that fails is aborted and its work kept for the next
    /// one; only a fatal producer error is returned.
    pub(super) async fn commit_transaction(&mut self) -> Result<(), TransactionError> {
        let Some(transactor) = self.transactor.clone() else {
            return Ok(());
        };
        let Some(mut transaction) = self
            .partitions
            .lock()
            .ok()
            .and_then(|partitions| partitions.next_transaction())
        else {
            return Ok(());
        };
        let Some(group) = self.consumer.group_metadata() else {
            return Ok(());
        };
        let started = Instant::now();
        let count = transaction.outputs.len();
        let offsets = offset_list(&transaction.offsets);
        let outputs = std::mem::take(&mut transaction.outputs);
        let outcome =
            tokio::task::spawn_blocking(move || transactor.commit(&outputs, &offsets, &group))
                .await
                .unwrap_or_else(|join| {
                    Err(TransactionError::Retry(KafkaError::Canceled)).inspect_err(|_| {
                        tracing::warn!(error = %join, "Transaction task failed.");
                    })
                });
        match outcome {
            Ok(()) => {
                self.metrics.commit(true);
                self.metrics.transaction(started.elapsed(), count);
                if let Ok(mut partitions) = self.partitions.lock() {
                    partitions.transaction_committed(&transaction);
                }
                Ok(())
            }
            Err(TransactionError::Retry(error)) => {
                self.metrics.commit(false);
                tracing::warn!(%error, "Transaction aborted; its outputs and offsets go in the next one.");
                Ok(())
            }
            Err(fatal) => {
                self.metrics.commit(false);
                Err(fatal)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::partitions::tests::{admit, completion, runnable, tp};

    fn output(n: u8) -> Output {
        Output {
            topic: Arc::from("flags"),
            key: None,
            payload: vec![n],
            headers: Vec::new(),
        }
    }

    #[test]
    fn only_a_grown_watermark_is_stored() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        partitions.assign(tp(1));
        let a = runnable(admit(&mut partitions, tp(0), 10, None));
        let b = runnable(admit(&mut partitions, tp(0), 11, None));
        let mut moved = PartitionSet::default();
        partitions.complete(completion(&b), Instant::now(), &mut moved);
        assert!(partitions.offsets_to_store(&mut moved).is_empty());

        partitions.complete(completion(&a), Instant::now(), &mut moved);
        // A partition named without a grown watermark (and one no longer assigned) is skipped.
        moved.insert(tp(1));
        moved.insert(tp(2));
        assert_eq!(partitions.offsets_to_store(&mut moved), vec![(tp(0), 12)]);
        assert!(moved.is_empty());
        moved.insert(tp(0));
        assert!(
            partitions.offsets_to_store(&mut moved).is_empty(),
            "stored once"
        );
    }

    #[test]
    fn a_transaction_carries_the_outputs_below_its_offsets() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let jobs: Vec<_> = (0..3)
            .map(|offset| runnable(admit(&mut partitions, tp(0), offset, Some(offset as u64))))
            .collect();
        // Nothing finished: the position the partition was assigned at, with no outputs.
        let start = partitions.next_transaction().expect("the start position");
        assert_eq!(start.offsets, vec![(tp(0), 0)]);
        assert!(start.outputs.is_empty());
        partitions.transaction_committed(&start);
        assert!(partitions.next_transaction().is_none(), "nothing new");
        let mut moved = PartitionSet::default();
        for (job, n) in [(&jobs[0], 0), (&jobs[2], 2)] {
            let mut done = completion(job);
            done.outputs = vec![output(n)];
            partitions.complete(done, Instant::now(), &mut moved);
        }
        let transaction = partitions.next_transaction().expect("offset 0 finished");
        // Offset 1 is unfinished: the transaction stops below it, without offset 2's output.
        assert_eq!(transaction.offsets, vec![(tp(0), 1)]);
        assert_eq!(transaction.outputs, vec![output(0)]);
        partitions.transaction_committed(&transaction);
        assert!(partitions.next_transaction().is_none(), "committed already");

        partitions.complete(completion(&jobs[1]), Instant::now(), &mut moved);
        let transaction = partitions
            .next_transaction()
            .expect("offsets 1 and 2 finished");
        assert_eq!(transaction.offsets, vec![(tp(0), 3)]);
        assert_eq!(transaction.outputs, vec![output(2)]);
    }

    #[test]
    fn a_transaction_committed_after_a_reassignment_changes_nothing() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let job = runnable(admit(&mut partitions, tp(0), 0, None));
        let mut done = completion(&job);
        done.outputs = vec![output(0)];
        partitions.complete(done, Instant::now(), &mut PartitionSet::default());
        let transaction = partitions.next_transaction().expect("finished work");

        partitions.revoke(&tp(0));
        partitions.assign(tp(0));
        let again = runnable(admit(&mut partitions, tp(0), 0, None));
        let mut done = completion(&again);
        done.outputs = vec![output(9)];
        partitions.complete(done, Instant::now(), &mut PartitionSet::default());
        partitions.transaction_committed(&transaction);
        // The new assignment's work is still to commit, with its own output.
        let next = partitions
            .next_transaction()
            .expect("the new assignment's work");
        assert_eq!(next.outputs, vec![output(9)]);
    }

    #[test]
    fn offset_list_names_every_partition() {
        let list = offset_list(&[(tp(0), 5), (tp(3), 7)]);
        assert_eq!(list.count(), 2);
        let element = list.find_partition("responses", 3).expect("partition 3");
        assert_eq!(element.offset(), Offset::Offset(7));
    }
}
