//! The offsets of one partition that were handed out and are not finished yet, and the offset
//! that is safe to commit for it.
//!
//! Records of one partition finish out of order (different keys run concurrently, retries take
//! their time), so the runtime cannot store "this record's offset + 1" as each one finishes.
//! It commits the contiguous watermark instead: the lowest offset that is still unfinished, or
//! one past the highest handed out when everything is finished (Confluent Parallel Consumer does
//! the same).
//!
//! Invariant: the watermark never passes an offset that was tracked and is not complete, and it
//! never moves backwards. Memory is bounded by the number of records in flight: finished offsets
//! are forgotten at once, since the watermark only needs the unfinished ones and the highest.

use std::collections::BTreeMap;

/// Offsets of one partition that were handed out and are not yet finished.
/// Invariant: `watermark()` never passes an offset that was tracked and is not complete.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// The unfinished tracked offsets, each with its record's timestamp (milliseconds since the
    /// epoch) when known. Ordered, so that the lowest one (the watermark) is at hand, and so
    /// that the timestamp of the oldest unfinished record gives the partition's lag in time.
    incomplete: BTreeMap<i64, Option<i64>>,
    /// One past the highest tracked offset, or the assigned position while nothing was tracked.
    /// It is the watermark when nothing is unfinished, and the lowest offset `track` accepts:
    /// anything below it is either tracked already or counts as done (a redelivery after a seek
    /// back), and tracking it again would move the watermark backwards.
    next: i64,
}

impl OffsetTracker {
    /// `start` is the position the partition was assigned at: offsets below it count as done.
    pub fn new(start: i64) -> Self {
        OffsetTracker {
            incomplete: BTreeMap::new(),
            next: start,
        }
    }

    /// A fetched record becomes pending. Offsets arrive strictly increasing but may have gaps
    /// (compaction, transaction markers). A non-increasing offset (a redelivery after the
    /// consumer seeks back), or one below the assigned position, is ignored and `false` is
    /// returned; `true` means the offset is now tracked.
    ///
    /// `i64::MAX` is refused too: one past it, the watermark after it, cannot be represented
    /// (Kafka offsets never get there).
    pub fn track(&mut self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        if offset < self.next {
            return false;
        }
        let Some(next) = offset.checked_add(1) else {
            return false;
        };
        self.incomplete.insert(offset, timestamp_ms);
        self.next = next;
        true
    }

    /// The consumer's position passed `position` without handing over any record at or above
    /// `next` below it: the offsets in between were transaction markers (or aborted records),
    /// which are never delivered. They count as done, so that a trailing marker does not hold the
    /// watermark one below the end. Returns true if the watermark moved. A position at or below
    /// what was tracked changes nothing.
    pub fn pass_to(&mut self, position: i64) -> bool {
        if position <= self.next {
            return false;
        }
        self.next = position;
        self.incomplete.is_empty()
    }

    /// Marks a tracked offset finished (its effect is done, or it was dead-lettered). Returns
    /// true if the watermark advanced. Completing an untracked or already-complete offset is a
    /// no-op returning false.
    pub fn complete(&mut self, offset: i64) -> bool {
        let was_lowest =
            self.incomplete.first_key_value().map(|(&lowest, _)| lowest) == Some(offset);
        // Only the lowest unfinished offset holds the watermark back: finishing any other one
        // changes nothing that can be committed yet.
        self.incomplete.remove(&offset).is_some() && was_lowest
    }

    /// The offset to commit (the next offset to consume): the lowest tracked incomplete offset;
    /// if none is incomplete, highest tracked + 1; if nothing was ever tracked, `start`.
    pub fn watermark(&self) -> i64 {
        self.incomplete
            .first_key_value()
            .map_or(self.next, |(&lowest, _)| lowest)
    }

    /// Timestamp of the lowest incomplete tracked record (for lag in seconds), if any and known.
    pub fn oldest_pending_timestamp(&self) -> Option<i64> {
        self.incomplete
            .first_key_value()
            .and_then(|(_, &timestamp_ms)| timestamp_ms)
    }

    /// Number of tracked records not yet complete.
    pub fn pending(&self) -> usize {
        self.incomplete.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn nothing_tracked_commits_the_assigned_position() {
        let tracker = OffsetTracker::new(42);
        assert_eq!(tracker.watermark(), 42);
        assert_eq!(tracker.pending(), 0);
        assert_eq!(tracker.oldest_pending_timestamp(), None);
    }

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut tracker = OffsetTracker::new(0);
        for offset in 0..3 {
            assert!(tracker.track(offset, None));
        }
        assert_eq!(tracker.watermark(), 0);
        assert!(tracker.complete(0));
        assert_eq!(tracker.watermark(), 1);
        assert!(tracker.complete(1));
        assert!(tracker.complete(2));
        assert_eq!(tracker.watermark(), 3);
        assert_eq!(tracker.pending(), 0);
    }

    #[test]
    fn gaps_are_skipped_once_the_records_around_them_are_done() {
        // 11, 12 and 14 were compacted away or are transaction markers: never delivered.
        let mut tracker = OffsetTracker::new(10);
        assert!(tracker.track(10, None));
        assert!(tracker.track(13, None));
        assert!(tracker.track(15, None));
        assert!(tracker.complete(10));
        assert_eq!(tracker.watermark(), 13);
        assert!(tracker.complete(13));
        assert_eq!(tracker.watermark(), 15);
        assert!(tracker.complete(15));
        assert_eq!(tracker.watermark(), 16);
    }

    #[test]
    fn markers_passed_by_the_consumer_count_as_done() {
        // 0 and 1 are records, 2 the commit marker of their transaction.
        let mut tracker = OffsetTracker::new(0);
        assert!(tracker.track(0, None));
        assert!(tracker.track(1, None));
        assert!(tracker.complete(0));
        // Passed while 1 is unfinished: the watermark stays at 1.
        assert!(!tracker.pass_to(3));
        assert_eq!(tracker.watermark(), 1);
        assert!(tracker.complete(1));
        assert_eq!(tracker.watermark(), 3);
        // Never backwards, and a position already tracked changes nothing.
        assert!(!tracker.pass_to(2));
        assert_eq!(tracker.watermark(), 3);
        assert!(!tracker.track(2, None), "below the passed position");
        assert!(tracker.pass_to(5));
        assert_eq!(tracker.watermark(), 5);
    }

    #[test]
    fn a_gap_at_the_assigned_position_is_skipped() {
        let mut tracker = OffsetTracker::new(5);
        assert!(tracker.track(8, None));
        assert_eq!(tracker.watermark(), 8);
        assert!(tracker.complete(8));
        assert_eq!(tracker.watermark(), 9);
    }

    #[test]
    fn out_of_order_completion_holds_the_watermark_at_the_oldest_unfinished() {
        let mut tracker = OffsetTracker::new(0);
        for offset in 0..4 {
            tracker.track(offset, Some(1_000 + offset));
        }
        assert!(!tracker.complete(2));
        assert!(!tracker.complete(3));
        assert!(!tracker.complete(1));
        assert_eq!(tracker.watermark(), 0);
        assert_eq!(tracker.pending(), 1);
        assert_eq!(tracker.oldest_pending_timestamp(), Some(1_000));
        // The slow record finishes: everything behind it was done already.
        assert!(tracker.complete(0));
        assert_eq!(tracker.watermark(), 4);
        assert_eq!(tracker.pending(), 0);
        assert_eq!(tracker.oldest_pending_timestamp(), None);
    }

    #[test]
    fn oldest_pending_timestamp_follows_the_lowest_unfinished() {
        let mut tracker = OffsetTracker::new(0);
        tracker.track(0, Some(100));
        tracker.track(1, None);
        tracker.track(2, Some(300));
        assert_eq!(tracker.oldest_pending_timestamp(), Some(100));
        tracker.complete(0);
        // Unknown for the oldest unfinished record: not the next one's, which is younger.
        assert_eq!(tracker.oldest_pending_timestamp(), None);
        tracker.complete(1);
        assert_eq!(tracker.oldest_pending_timestamp(), Some(300));
    }

    #[test]
    fn duplicate_completion_is_a_no_op() {
        let mut tracker = OffsetTracker::new(0);
        tracker.track(0, None);
        tracker.track(1, None);
        assert!(tracker.complete(0));
        assert!(!tracker.complete(0));
        assert_eq!(tracker.watermark(), 1);
        assert_eq!(tracker.pending(), 1);
    }

    #[test]
    fn completing_an_untracked_offset_is_a_no_op() {
        let mut tracker = OffsetTracker::new(0);
        tracker.track(0, None);
        tracker.track(5, None);
        assert!(!tracker.complete(3)); // a gap
        assert!(!tracker.complete(9)); // not fetched yet
        assert!(!tracker.complete(-1)); // before the assignment
        assert_eq!(tracker.watermark(), 0);
        assert_eq!(tracker.pending(), 2);
    }

    #[test]
    fn redelivered_offsets_are_ignored() {
        let mut tracker = OffsetTracker::new(0);
        assert!(tracker.track(0, None));
        assert!(tracker.track(1, None));
        assert!(tracker.complete(0));
        // The consumer sought back and fetched 0 and 1 again.
        assert!(!tracker.track(0, None));
        assert!(!tracker.track(1, None));
        assert_eq!(tracker.watermark(), 1);
        assert_eq!(tracker.pending(), 1);
        assert!(tracker.track(2, None));
        assert_eq!(tracker.pending(), 2);
    }

    #[test]
    fn offsets_below_the_assigned_position_are_ignored() {
        let mut tracker = OffsetTracker::new(100);
        assert!(!tracker.track(99, None));
        assert_eq!(tracker.watermark(), 100);
        assert_eq!(tracker.pending(), 0);
    }

    #[test]
    fn the_largest_offset_is_refused_rather_than_overflowing() {
        let mut tracker = OffsetTracker::new(0);
        assert!(!tracker.track(i64::MAX, None));
        assert!(tracker.track(i64::MAX - 1, None));
        assert!(!tracker.track(i64::MAX, None));
        assert!(tracker.complete(i64::MAX - 1));
        assert_eq!(tracker.watermark(), i64::MAX);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Track the next offset, `gap` past one after the previous one.
        Track { gap: i64, timestamp_ms: Option<i64> },
        /// Complete the tracked offset picked by this index (modulo the number tracked), which
        /// may be complete already.
        Complete(prop::sample::Index),
        /// Redeliver the tracked offset picked by this index.
        Redeliver(prop::sample::Index),
        /// Complete an offset that was never tracked (a gap or past the end).
        CompleteUntracked(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4i64, proptest::option::of(0..1_000_000i64))
                .prop_map(|(gap, timestamp_ms)| Op::Track { gap, timestamp_ms }),
            4 => any::<prop::sample::Index>().prop_map(Op::Complete),
            1 => any::<prop::sample::Index>().prop_map(Op::Redeliver),
            1 => (-3..40i64).prop_map(Op::CompleteUntracked),
        ]
    }

    /// The tracker's answers, checked against a model that keeps every offset.
    struct Model {
        start: i64,
        /// Every tracked offset with its timestamp, in order.
        tracked: Vec<(i64, Option<i64>)>,
        incomplete: BTreeSet<i64>,
        last_watermark: i64,
    }

    impl Model {
        fn check(&mut self, tracker: &OffsetTracker) -> Result<(), TestCaseError> {
            let watermark = tracker.watermark();
            // (a) never past the lowest unfinished offset.
            if let Some(&lowest) = self.incomplete.first() {
                prop_assert!(watermark <= lowest, "watermark {watermark} passed {lowest}");
                prop_assert_eq!(watermark, lowest);
            }
            // (b) never backwards.
            prop_assert!(
                watermark >= self.last_watermark,
                "watermark went back from {} to {watermark}",
                self.last_watermark
            );
            self.last_watermark = watermark;
            // (c) everything done: one past the last tracked offset (or the start).
            if self.incomplete.is_empty() {
                let expected = self
                    .tracked
                    .last()
                    .map_or(self.start, |&(last, _)| last + 1);
                prop_assert_eq!(watermark, expected);
            }
            // (d) pending counts exactly the unfinished ones.
            prop_assert_eq!(tracker.pending(), self.incomplete.len());
            let oldest_timestamp = self.incomplete.first().and_then(|lowest| {
                self.tracked
                    .iter()
                    .find(|&&(offset, _)| offset == *lowest)
                    .and_then(|&(_, timestamp_ms)| timestamp_ms)
            });
            prop_assert_eq!(tracker.oldest_pending_timestamp(), oldest_timestamp);
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn watermark_never_passes_unfinished_work(
            start in 0..10i64,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut tracker = OffsetTracker::new(start);
            let mut model = Model {
                start,
                tracked: Vec::new(),
                incomplete: BTreeSet::new(),
                last_watermark: start,
            };
            model.check(&tracker)?;
            for op in ops {
                match op {
                    Op::Track { gap, timestamp_ms } => {
                        let offset = model.tracked.last().map_or(start, |&(last, _)| last + 1) + gap;
                        prop_assert!(tracker.track(offset, timestamp_ms));
                        model.tracked.push((offset, timestamp_ms));
                        model.incomplete.insert(offset);
                    }
                    Op::Complete(index) if !model.tracked.is_empty() => {
                        let (offset, _) = model.tracked[index.index(model.tracked.len())];
                        let before = tracker.watermark();
                        let advanced = tracker.complete(offset);
                        model.incomplete.remove(&offset);
                        prop_assert_eq!(advanced, tracker.watermark() > before);
                    }
                    Op::Redeliver(index) if !model.tracked.is_empty() => {
                        let (offset, timestamp_ms) = model.tracked[index.index(model.tracked.len())];
                        prop_assert!(!tracker.track(offset, timestamp_ms));
                    }
                    Op::CompleteUntracked(offset)
                        if !model.tracked.iter().any(|&(tracked, _)| tracked == offset) =>
                    {
                        let before = tracker.watermark();
                        prop_assert!(!tracker.complete(offset));
                        prop_assert_eq!(tracker.watermark(), before);
                    }
                    Op::Complete(_) | Op::Redeliver(_) | Op::CompleteUntracked(_) => {}
                }
                model.check(&tracker)?;
            }
            // Finish what was never finished: the whole range becomes committable.
            for (offset, _) in model.tracked.clone() {
                tracker.complete(offset);
                model.incomplete.remove(&offset);
                model.check(&tracker)?;
            }
            let end = model.tracked.last().map_or(start, |&(last, _)| last + 1);
            prop_assert_eq!(tracker.watermark(), end);
            prop_assert_eq!(tracker.pending(), 0);
        }
    }
}
