//! What this instance holds for each partition assigned to it: the assignment's epoch, the offset
//! tracker, the records waiting behind an earlier record of their key, and the records and bytes
//! fetched and not finished.
//!
//! Invariant: a partition has a state exactly while it is assigned here, and every assignment gets
//! a new epoch, so that work of an earlier assignment (completions arriving after a revoke) is
//! recognised and dropped; a record is buffered (counted, tracked, keyed) from the moment it is
//! admitted until its completion in the same assignment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::companion::Companion;
use crate::keyed::KeyedQueue;
use crate::processor::Output;
use crate::raw::RawRecord;
use crate::tracker::OffsetTracker;
use crate::worker::{Alive, Completion, Job};

/// A topic partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicPartition {
    pub topic: &'static str,
    pub partition: i32,
}

impl TopicPartition {
    /// The partition `partition` of `topic`, its name interned (see [`intern`]).
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition {
            topic: intern(topic),
            partition,
        }
    }
}

/// The one copy of a topic's name, kept for the life of the process. Every record carries its
/// topic from the engine to a lane and back: as a reference count, that was several atomic
/// writes per record to one cache line, from the engine's thread and every lane's. A process
/// reads a handful of topics, so keeping their names costs nothing.
pub fn intern(topic: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = names.iter().find(|name| **name == topic) {
        return name;
    }
    let name: &'static str = Box::leak(topic.into());
    names.push(name);
    name
}

/// Maps and sets keyed by [`TopicPartition`], touched for every record: foldhash rather than
/// SipHash (the keys are topic names and partition numbers from the broker, not from clients).
pub type PartitionMap<V> = HashMap<TopicPartition, V, foldhash::fast::RandomState>;
pub type PartitionSet = HashSet<TopicPartition, foldhash::fast::RandomState>;

/// What this instance holds for one assigned partition.
pub struct PartitionState {
    /// Changes with every assignment, so that completions of a revoked assignment are recognised.
    pub epoch: u64,
    /// Cleared on revoke: workers of this assignment stop retrying and never dead-letter.
    pub alive: Arc<Alive>,
    /// Created at the first record fetched after the assignment.
    pub tracker: Option<OffsetTracker>,
    /// Records waiting behind an earlier record of the same key.
    pub keyed: KeyedQueue<Job>,
    /// Fetched and not finished.
    pub buffered_records: usize,
    pub buffered_bytes: usize,
    /// The last offset stored for commit (committed, for a transactional processor).
    pub stored: i64,
    /// A transactional processor's outputs of finished records, by offset, until a transaction
    /// commits them together with an offset past them.
    pub outputs: BTreeMap<i64, Vec<Output>>,
    /// When the watermark last moved, for lag in seconds when no record is buffered.
    pub last_progress: Instant,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            alive: Arc::new(Alive::default()),
            tracker: None,
            keyed: KeyedQueue::new(),
            buffered_records: 0,
            buffered_bytes: 0,
            stored: -1,
            outputs: BTreeMap::new(),
            last_progress: Instant::now(),
        }
    }

    /// The offset below which every record fetched in this assignment has finished; `None`
    /// before the first record.
    pub fn watermark(&self) -> Option<i64> {
        self.tracker.as_ref().map(OffsetTracker::watermark)
    }
}

/// Records and bytes fetched and not finished, over every assigned partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffered {
    pub records: usize,
    pub bytes: usize,
}

/// What became of a fetched record handed to [`Partitions::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Its key is free: run it.
    Runnable(Job),
    /// It waits behind an earlier record of its key.
    Queued,
    /// Not for this assignment: its partition is not (or no longer) assigned here, or the
    /// offset was tracked already (a redelivery after a seek back).
    Ignored,
}

/// The state of every partition assigned to this instance. Shared (behind a mutex) by the engine
/// and the consumer's rebalance callbacks, which run inside the consumer's poll on the engine's
/// task while it does not hold the lock.
#[derive(Default)]
pub struct Partitions {
    pub states: PartitionMap<PartitionState>,
    next_epoch: u64,
    /// Partitions revoked so far: work kept elsewhere for a partition (records waiting for
    /// their target) is checked for ended assignments when it grows.
    pub revocations: u64,
    /// The re-drive topic, whose records queue in their source partition's keyed queue.
    pub companion: Option<Companion>,
}

/// A fetched record, as [`Partitions::admit`] takes it: copied out of librdkafka only once it is
/// known to be admitted.
pub struct Fetched<'a> {
    pub tp: TopicPartition,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// Copies the record and computes its ordering key (see [`super::intake`]).
    pub copy: &'a mut dyn FnMut() -> (RawRecord, Option<u64>),
}

impl Partitions {
    /// A new assignment of `tp`: a fresh state under a new epoch, which it returns.
    pub fn assign(&mut self, tp: TopicPartition) -> u64 {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.states.insert(tp, PartitionState::new(epoch));
        epoch
    }

    /// `tp` leaves this instance: its state is dropped and its workers stop (they will neither
    /// retry nor dead-letter, and their completions will be dropped). Returns the state, for the
    /// offset to commit on the way out.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<PartitionState> {
        let state = self.states.remove(tp)?;
        state.alive.end();
        self.revocations += 1;
        Some(state)
    }

    /// The partitions assigned here.
    pub fn assigned(&self) -> impl Iterator<Item = TopicPartition> + '_ {
        self.states.keys().copied()
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionState> {
        self.states.get(tp)
    }

    /// Tracks a fetched record and queues it behind its key: it is buffered from now until its
    /// completion.
    pub fn admit(&mut self, fetched: Fetched<'_>) -> Admission {
        let Some(state) = self.states.get_mut(&fetched.tp) else {
            // Not (or no longer) assigned here: the owner will handle it.
            return Admission::Ignored;
        };
        let tracker = state
            .tracker
            .get_or_insert_with(|| OffsetTracker::new(fetched.offset));
        if !tracker.track(fetched.offset, fetched.timestamp_ms) {
            return Admission::Ignored;
        }
        let (raw, ordering_key) = (fetched.copy)();
        // The record's share of the buffer bound: its bytes and the job around them.
        let bytes = raw.len() + 64;
        state.buffered_records += 1;
        state.buffered_bytes += bytes;
        let job = Job {
            tp: fetched.tp,
            epoch: state.epoch,
            alive: state.alive.clone(),
            offset: fetched.offset,
            raw,
            timestamp_ms: fetched.timestamp_ms,
            ordering_key,
            bytes,
            resume: None,
        };
        let owner = Companion::owner(self.companion, fetched.tp);
        let runnable = match ordering_key {
            Some(ordering_key) => match self.states.get_mut(&owner) {
                Some(owner) => owner.keyed.push(ordering_key, job),
                None => Some(job),
            },
            None => Some(job),
        };
        match runnable {
            Some(job) => Admission::Runnable(job),
            None => Admission::Queued,
        }
    }

    /// A job finished (its effect succeeded, or it was dead-lettered): it leaves the buffers, its
    /// offset is complete, and its key is free. Returns the next job of its key, if one waited.
    /// A partition whose watermark moved is added to `moved`. A completion of an earlier
    /// assignment is dropped: that work is the new owner's now.
    pub fn complete(
        &mut self,
        done: Completion,
        now: Instant,
        moved: &mut PartitionSet,
    ) -> Option<Job> {
        let state = self.states.get_mut(&done.tp)?;
        if state.epoch != done.epoch {
            return None;
        }
        state.buffered_records = state.buffered_records.saturating_sub(1);
        state.buffered_bytes = state.buffered_bytes.saturating_sub(done.bytes);
        if !done.outputs.is_empty() {
            state.outputs.insert(done.offset, done.outputs);
        }
        if let Some(tracker) = state.tracker.as_mut()
            && tracker.complete(done.offset)
        {
            state.last_progress = now;
            if !moved.contains(&done.tp) {
                moved.insert(done.tp);
            }
        }
        let owner = Companion::owner(self.companion, done.tp);
        let key = done.ordering_key?;
        self.states.get_mut(&owner)?.keyed.finish(key)
    }

    /// The consumer handed over everything of `tp` below `position` (its position passes
    /// transaction markers too, which are never delivered): the tracker counts the offsets it did
    /// not see there as done (see [`OffsetTracker::pass_to`]). A partition whose watermark moved
    /// is added to `moved`.
    pub fn pass_to(&mut self, tp: TopicPartition, position: i64, moved: &mut PartitionSet) {
        let Some(state) = self.states.get_mut(&tp) else {
            return;
        };
        let tracker = state
            .tracker
            .get_or_insert_with(|| OffsetTracker::new(position));
        if tracker.pass_to(position) {
            state.last_progress = Instant::now();
            moved.insert(tp);
        }
    }

    /// Records and bytes fetched and not finished, over every partition.
    pub fn buffered(&self) -> Buffered {
        let mut buffered = Buffered::default();
        for state in self.states.values() {
            buffered.records += state.buffered_records;
            buffered.bytes += state.buffered_bytes;
        }
        buffered
    }

    /// Ends every assignment (at shutdown): workers still running must not dead-letter or retry
    /// after the instance leaves the group.
    pub fn end_all(&self) {
        for state in self.states.values() {
            state.alive.end();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("responses", partition)
    }

    /// Admits a record with ordering key `key` (and a 10-byte value).
    pub fn admit(
        partitions: &mut Partitions,
        tp: TopicPartition,
        offset: i64,
        key: Option<u64>,
    ) -> Admission {
        let mut copy = || {
            (
                RawRecord::new(None, Some(&[0u8; 10]), std::iter::empty),
                key,
            )
        };
        partitions.admit(Fetched {
            tp,
            offset,
            timestamp_ms: Some(1_000 + offset),
            copy: &mut copy,
        })
    }

    pub fn completion(job: &Job) -> Completion {
        Completion::of(job)
    }

    pub fn runnable(admission: Admission) -> Job {
        match admission {
            Admission::Runnable(job) => job,
            other => panic!("expected a runnable job, got {other:?}"),
        }
    }

    #[test]
    fn a_redriven_record_waits_behind_its_source_partitions_record_of_the_same_key() {
        let mut partitions = Partitions {
            companion: Some(Companion {
                source: intern("responses"),
                companion: intern("responses.dlq.redrive"),
            }),
            ..Partitions::default()
        };
        let copy_tp = TopicPartition::new("responses.dlq.redrive", 0);
        partitions.assign(tp(0));
        partitions.assign(copy_tp);
        let running = runnable(admit(&mut partitions, tp(0), 7, Some(42)));
        // Same key on the re-drive partition: it waits; another key runs.
        assert!(matches!(
            admit(&mut partitions, copy_tp, 0, Some(42)),
            Admission::Queued
        ));
        let other = runnable(admit(&mut partitions, copy_tp, 1, Some(43)));
        let mut moved = PartitionSet::default();
        let next = partitions
            .complete(completion(&running), Instant::now(), &mut moved)
            .expect("the waiting copy runs next");
        assert_eq!((next.tp, next.offset), (copy_tp, 0));
        // The copy's own partition keeps its own offsets.
        assert!(
            partitions
                .complete(completion(&other), Instant::now(), &mut moved)
                .is_none()
        );
        assert!(
            partitions
                .complete(completion(&next), Instant::now(), &mut moved)
                .is_none()
        );
        assert_eq!(
            partitions.get(&copy_tp).and_then(PartitionState::watermark),
            Some(2)
        );
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(8)
        );
    }

    #[test]
    fn interned_names_are_one_copy() {
        let a = intern("some-topic");
        let b = intern(&String::from("some-topic"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(TopicPartition::new("some-topic", 3).topic, a);
    }

    #[test]
    fn records_of_unassigned_partitions_are_ignored() {
        let mut partitions = Partitions::default();
        assert!(matches!(
            admit(&mut partitions, tp(0), 0, None),
            Admission::Ignored
        ));
        assert_eq!(partitions.buffered(), Buffered::default());
    }

    #[test]
    fn a_record_is_buffered_from_admission_to_completion() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let job = runnable(admit(&mut partitions, tp(0), 5, Some(1)));
        assert_eq!(partitions.buffered().records, 1);
        assert_eq!(partitions.buffered().bytes, job.bytes);
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(5)
        );

        let mut moved = PartitionSet::default();
        assert!(
            partitions
                .complete(completion(&job), Instant::now(), &mut moved)
                .is_none()
        );
        assert_eq!(partitions.buffered(), Buffered::default());
        assert!(moved.contains(&tp(0)));
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(6)
        );
    }

    #[test]
    fn a_redelivered_offset_is_ignored() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        runnable(admit(&mut partitions, tp(0), 5, Some(1)));
        assert!(matches!(
            admit(&mut partitions, tp(0), 5, Some(2)),
            Admission::Ignored
        ));
        assert!(matches!(
            admit(&mut partitions, tp(0), 4, Some(2)),
            Admission::Ignored
        ));
        assert_eq!(partitions.buffered().records, 1);
    }

    #[test]
    fn a_key_runs_one_record_at_a_time_in_offset_order() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let first = runnable(admit(&mut partitions, tp(0), 0, Some(7)));
        assert!(matches!(
            admit(&mut partitions, tp(0), 1, Some(7)),
            Admission::Queued
        ));
        // Another key, or no key at all, runs at once.
        runnable(admit(&mut partitions, tp(0), 2, Some(8)));
        runnable(admit(&mut partitions, tp(0), 3, None));
        assert_eq!(partitions.buffered().records, 4);

        let mut moved = PartitionSet::default();
        let next = partitions
            .complete(completion(&first), Instant::now(), &mut moved)
            .expect("the key's next record");
        assert_eq!(next.offset, 1);
        assert_eq!(partitions.buffered().records, 3);
    }

    #[test]
    fn out_of_order_completions_hold_the_watermark_at_the_oldest_unfinished() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let jobs: Vec<Job> = (0..3)
            .map(|offset| runnable(admit(&mut partitions, tp(0), offset, Some(offset as u64))))
            .collect();
        let mut moved = PartitionSet::default();
        partitions.complete(completion(&jobs[2]), Instant::now(), &mut moved);
        partitions.complete(completion(&jobs[1]), Instant::now(), &mut moved);
        assert!(
            moved.is_empty(),
            "offset 0 is unfinished: nothing to store yet"
        );
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(0)
        );
        partitions.complete(completion(&jobs[0]), Instant::now(), &mut moved);
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(3)
        );
    }

    #[test]
    fn completions_of_an_earlier_assignment_are_dropped() {
        let mut partitions = Partitions::default();
        let first_epoch = partitions.assign(tp(0));
        let old = runnable(admit(&mut partitions, tp(0), 0, Some(1)));
        let revoked = partitions.revoke(&tp(0)).expect("assigned");
        assert!(
            !revoked.alive.holds(),
            "workers of a revoked assignment stop"
        );
        assert!(!old.alive.holds());

        let second_epoch = partitions.assign(tp(0));
        assert!(second_epoch > first_epoch);
        let new = runnable(admit(&mut partitions, tp(0), 0, Some(1)));
        let mut moved = PartitionSet::default();
        // The old assignment's record finishes late: it moves nothing and frees nothing.
        assert!(
            partitions
                .complete(completion(&old), Instant::now(), &mut moved)
                .is_none()
        );
        assert!(moved.is_empty());
        assert_eq!(partitions.buffered().records, 1);
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(0)
        );
        partitions.complete(completion(&new), Instant::now(), &mut moved);
        assert_eq!(
            partitions.get(&tp(0)).and_then(PartitionState::watermark),
            Some(1)
        );
    }

    #[test]
    fn buffered_sums_every_partition() {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        partitions.assign(tp(1));
        runnable(admit(&mut partitions, tp(0), 0, None));
        runnable(admit(&mut partitions, tp(1), 0, None));
        runnable(admit(&mut partitions, tp(1), 1, None));
        assert_eq!(partitions.buffered().records, 3);
        partitions.revoke(&tp(1));
        assert_eq!(partitions.buffered().records, 1);
    }
}
