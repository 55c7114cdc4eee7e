//! Back-pressure: when the engine stops taking records from the consumer, and which partitions it
//! pauses.
//!
//! Buffers full (`--max-buffered-records` or `--max-buffered-bytes`): the engine stops taking
//! records (librdkafka's prefetch, bounded by `queued.max.messages.kbytes`, stays where it is)
//! until they are half empty. The processor's one circuit open, or intake stopped for longer than
//! [`MAX_INTAKE_STOP`]: every assigned partition is paused (which drops librdkafka's prefetch),
//! and the consumer is still polled, so that group membership and rebalances are served through an
//! outage of any length (librdkafka expects a poll within `max.poll.interval.ms`).
//!
//! Records waiting for their target's circuit (see `waiting`) count in the buffers only up to
//! half of each bound: once they fill half, the partitions holding them are paused (the next
//! records there may well be for the same target) until they are down to a quarter, and the other
//! half of the buffers keeps serving every other partition. A target is known only once a record
//! is decoded, so a burst for one target can be fetched before its circuit opens and wait past
//! half the bounds; it then fills the bounds only at twice their size, so that memory stays within
//! twice `--max-buffered-records` and `--max-buffered-bytes`. A partition mixing records of an
//! open target and of others is paused with them: its offsets are committed in order, so the
//! records behind a waiting one could not be committed before it anyway.
//!
//! Invariant: only assigned partitions are paused, and a paused partition is resumed as soon as no
//! reason to pause it holds; pausing never skips a record (a paused partition resumes at its
//! position); fetched and unfinished records never pass twice the bounds.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::partitions::{Buffered, PartitionSet, TopicPartition};
use super::waiting::WaitingLoad;
use super::{Engine, Limits};
use crate::circuit::CircuitState;
use crate::processor::Processor;

/// Longest the engine stops taking records from the consumer because its buffers are full. Past
/// it, the partitions are paused instead, so that the consumer is polled again (rebalances are
/// served on the same queue, and librdkafka expects a poll within max.poll.interval.ms).
pub const MAX_INTAKE_STOP: Duration = Duration::from_secs(10);

/// The engine's back-pressure state: whether intake stopped, and since when; which partitions it
/// paused.
#[derive(Debug, Default)]
pub struct Backpressure {
    /// Since when the buffers have been too full to take more records from the consumer.
    intake_blocked_since: Option<Instant>,
    /// Partitions paused by the engine (back-pressure or the circuit; not the drain).
    paused: PartitionSet,
    /// Records waiting for their target's circuit filled half the buffers, and have not been
    /// down to a quarter since: the partitions holding them are paused.
    waiting_full: bool,
}

/// Partitions to pause and to resume, as [`Backpressure::plan`] decides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pauses {
    pub pause: Vec<TopicPartition>,
    pub resume: Vec<TopicPartition>,
}

/// The buffers' fill as intake and back-pressure reckon it: of the records waiting for their
/// target's circuit (`waiting`, counted in `buffered` too), only half of each bound counts, but
/// fetched records at twice a bound fill it whatever waits.
pub fn reckoned(buffered: Buffered, waiting: Buffered, limits: &Limits) -> Buffered {
    let count = |total: usize, waiting: usize, bound: usize| {
        if total >= bound.saturating_mul(2) {
            bound
        } else {
            // Waiting records of a partition just revoked are buffered no more.
            let waiting = waiting.min(total);
            total - waiting + waiting.min(bound / 2)
        }
    };
    Buffered {
        records: count(
            buffered.records,
            waiting.records,
            limits.max_buffered_records,
        ),
        bytes: count(buffered.bytes, waiting.bytes, limits.max_buffered_bytes),
    }
}

/// How many more records the buffers take now (0 when either bound is reached), given their
/// fill as [`reckoned`].
pub fn room(buffered: Buffered, limits: &Limits) -> usize {
    if buffered.bytes >= limits.max_buffered_bytes {
        0
    } else {
        limits.max_buffered_records.saturating_sub(buffered.records)
    }
}

impl Backpressure {
    /// Whether the engine takes records from the consumer: not while the buffers are full, unless
    /// that has lasted long enough that the partitions were paused and polling resumed.
    pub fn intake_open(&self, now: Instant) -> bool {
        self.intake_blocked_since
            .is_none_or(|since| now.duration_since(since) >= MAX_INTAKE_STOP)
    }

    /// Whether intake is stopped (or was, until the partitions were paused).
    pub fn intake_blocked(&self) -> bool {
        self.intake_blocked_since.is_some()
    }

    /// Partitions paused by the engine.
    pub fn paused(&self) -> usize {
        self.paused.len()
    }

    /// Decides from the buffers' fill (`buffered`, of which `waiting` wait for their target),
    /// the processor's circuit and the assignment which partitions to pause and which to resume.
    /// Buffers full stop intake, half empty restart it (in between, it stays as it was); the
    /// circuit open, or intake stopped for [`MAX_INTAKE_STOP`], pauses every assigned partition;
    /// waiting records over half the buffers pause their partitions. Apply the plan, then report
    /// what took effect with [`Backpressure::did`].
    pub fn plan(
        &mut self,
        now: Instant,
        buffered: Buffered,
        waiting: &WaitingLoad,
        limits: &Limits,
        circuit_open: bool,
        assigned: &[TopicPartition],
    ) -> Pauses {
        let waiting_weight = Buffered {
            records: waiting.records,
            bytes: waiting.bytes,
        };
        let buffered = reckoned(buffered, waiting_weight, limits);
        let full = buffered.records >= limits.max_buffered_records
            || buffered.bytes >= limits.max_buffered_bytes;
        let roomy = buffered.records <= limits.max_buffered_records / 2
            && buffered.bytes <= limits.max_buffered_bytes / 2;
        if full && self.intake_blocked_since.is_none() {
            self.intake_blocked_since = Some(now);
        } else if roomy {
            self.intake_blocked_since = None;
        }
        let stalled = self
            .intake_blocked_since
            .is_some_and(|since| now.duration_since(since) >= MAX_INTAKE_STOP);
        if waiting.records >= limits.max_buffered_records / 2
            || waiting.bytes >= limits.max_buffered_bytes / 2
        {
            self.waiting_full = true;
        } else if waiting.records <= limits.max_buffered_records / 4
            && waiting.bytes <= limits.max_buffered_bytes / 4
        {
            self.waiting_full = false;
        }
        // Revoked partitions are no longer ours to resume.
        self.paused.retain(|tp| assigned.contains(tp));
        let waiting_full = self.waiting_full;
        let wanted = |tp: &TopicPartition| {
            circuit_open || stalled || (waiting_full && waiting.partitions.contains(tp))
        };
        Pauses {
            pause: assigned
                .iter()
                .filter(|tp| wanted(tp) && !self.paused.contains(*tp))
                .copied()
                .collect(),
            resume: self
                .paused
                .iter()
                .filter(|tp| !wanted(tp))
                .copied()
                .collect(),
        }
    }

    /// What took effect of a plan: `paused` are now paused, `resumed` are running again.
    pub fn did(&mut self, paused: &[TopicPartition], resumed: &[TopicPartition]) {
        self.paused.extend(paused.iter().copied());
        for tp in resumed {
            self.paused.remove(tp);
        }
    }
}

/// `partitions` as librdkafka takes them.
fn partition_list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        let _ = list.add_partition(tp.topic, tp.partition);
    }
    list
}

impl<P: Processor> Engine<P> {
    /// Applies back-pressure (see the module header) to the consumer.
    pub(super) fn apply_pauses(&mut self) {
        let waiting = self.waiting.load();
        let (buffered, assigned) = match self.partitions.lock() {
            Ok(partitions) => (
                partitions.buffered(),
                partitions.assigned().collect::<Vec<_>>(),
            ),
            Err(_) => return,
        };
        let open = *self.circuit_rx.borrow() == CircuitState::Open;
        let plan = self.backpressure.plan(
            Instant::now(),
            buffered,
            &waiting,
            &self.limits,
            open,
            &assigned,
        );
        if !plan.pause.is_empty() {
            match self.consumer.pause(&partition_list(&plan.pause)) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = plan.pause.len(),
                        records = buffered.records,
                        bytes = buffered.bytes,
                        waiting = waiting.records,
                        open,
                        "Paused partitions."
                    );
                    self.backpressure.did(&plan.pause, &[]);
                }
                Err(error) => tracing::warn!(%error, "Could not pause partitions."),
            }
        }
        if !plan.resume.is_empty() {
            match self.consumer.resume(&partition_list(&plan.resume)) {
                Ok(()) => {
                    tracing::debug!(partitions = plan.resume.len(), "Resumed partitions.");
                    self.backpressure.did(&[], &plan.resume);
                }
                Err(error) => tracing::warn!(%error, "Could not resume partitions."),
            }
        }
        self.metrics.paused(self.backpressure.paused());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::partitions::tests::tp;

    fn limits() -> Limits {
        Limits {
            max_in_flight: 4,
            max_buffered_records: 100,
            max_buffered_bytes: 10_000,
            drain: Duration::from_secs(1),
        }
    }

    fn records(records: usize) -> Buffered {
        Buffered {
            records,
            bytes: records * 10,
        }
    }

    /// Plans, and reports the plan as applied.
    fn apply(
        backpressure: &mut Backpressure,
        now: Instant,
        buffered: Buffered,
        open: bool,
        assigned: &[TopicPartition],
    ) -> Pauses {
        let plan = backpressure.plan(
            now,
            buffered,
            &WaitingLoad::default(),
            &limits(),
            open,
            assigned,
        );
        backpressure.did(&plan.pause, &plan.resume);
        plan
    }

    fn sorted(mut partitions: Vec<TopicPartition>) -> Vec<TopicPartition> {
        partitions.sort_by_key(|tp| tp.partition);
        partitions
    }

    #[test]
    fn room_is_what_is_left_of_both_bounds() {
        assert_eq!(room(records(30), &limits()), 70);
        assert_eq!(room(records(100), &limits()), 0);
        assert_eq!(room(records(150), &limits()), 0);
        let heavy = Buffered {
            records: 1,
            bytes: 10_000,
        };
        assert_eq!(room(heavy, &limits()), 0);
    }

    #[test]
    fn waiting_records_count_up_to_half_the_bounds_until_twice_the_bounds() {
        let waiting = |records| Buffered {
            records,
            bytes: records * 10,
        };
        // Fewer than half waiting: they count like any other.
        assert_eq!(reckoned(records(60), waiting(30), &limits()), records(60));
        // 80 waiting of 90: 10 others and half the bound (50) for the waiting.
        assert_eq!(reckoned(records(90), waiting(80), &limits()).records, 60);
        assert_eq!(
            room(reckoned(records(90), waiting(80), &limits()), &limits()),
            40
        );
        // Twice the bound: full, whatever waits.
        assert_eq!(
            room(reckoned(records(200), waiting(200), &limits()), &limits()),
            0
        );
        // Waiting records of a partition just revoked are no longer buffered: nothing negative.
        assert_eq!(reckoned(records(5), waiting(20), &limits()).records, 5);
    }

    #[test]
    fn full_buffers_stop_intake_until_half_empty() {
        let t0 = Instant::now();
        let assigned = [tp(0), tp(1)];
        let mut backpressure = Backpressure::default();
        assert!(backpressure.intake_open(t0));
        let plan = apply(&mut backpressure, t0, records(100), false, &assigned);
        assert_eq!(
            plan,
            Pauses::default(),
            "intake stops; nothing is paused yet"
        );
        assert!(!backpressure.intake_open(t0));
        // Between half and full, intake stays stopped.
        apply(&mut backpressure, t0, records(60), false, &assigned);
        assert!(!backpressure.intake_open(t0 + Duration::from_secs(1)));
        apply(&mut backpressure, t0, records(50), false, &assigned);
        assert!(backpressure.intake_open(t0 + Duration::from_secs(1)));
        assert!(!backpressure.intake_blocked());
    }

    #[test]
    fn full_bytes_stop_intake_too() {
        let t0 = Instant::now();
        let mut backpressure = Backpressure::default();
        let heavy = Buffered {
            records: 1,
            bytes: 10_000,
        };
        apply(&mut backpressure, t0, heavy, false, &[tp(0)]);
        assert!(!backpressure.intake_open(t0));
    }

    #[test]
    fn intake_stopped_too_long_pauses_every_partition_and_polling_goes_on() {
        let t0 = Instant::now();
        let assigned = [tp(0), tp(1)];
        let mut backpressure = Backpressure::default();
        apply(&mut backpressure, t0, records(100), false, &assigned);
        let later = t0 + MAX_INTAKE_STOP;
        let plan = apply(&mut backpressure, later, records(100), false, &assigned);
        assert_eq!(sorted(plan.pause), vec![tp(0), tp(1)]);
        assert_eq!(backpressure.paused(), 2);
        // Polling resumes (rebalances are served), with nothing fetched from paused partitions.
        assert!(backpressure.intake_open(later));
        // Paused once, not again.
        let plan = apply(&mut backpressure, later, records(100), false, &assigned);
        assert_eq!(plan, Pauses::default());
        // Half empty: every paused partition resumes.
        let plan = apply(&mut backpressure, later, records(10), false, &assigned);
        assert_eq!(sorted(plan.resume), vec![tp(0), tp(1)]);
        assert_eq!(backpressure.paused(), 0);
    }

    #[test]
    fn the_open_circuit_pauses_every_partition_until_it_closes() {
        let t0 = Instant::now();
        let mut backpressure = Backpressure::default();
        let plan = apply(&mut backpressure, t0, records(0), true, &[tp(0), tp(1)]);
        assert_eq!(sorted(plan.pause), vec![tp(0), tp(1)]);
        // A partition assigned while the circuit is open is paused too.
        let plan = apply(
            &mut backpressure,
            t0,
            records(0),
            true,
            &[tp(0), tp(1), tp(2)],
        );
        assert_eq!(plan.pause, vec![tp(2)]);
        let plan = apply(
            &mut backpressure,
            t0,
            records(0),
            false,
            &[tp(0), tp(1), tp(2)],
        );
        assert_eq!(sorted(plan.resume), vec![tp(0), tp(1), tp(2)]);
        assert_eq!(backpressure.paused(), 0);
    }

    #[test]
    fn revoked_partitions_are_forgotten_not_resumed() {
        let t0 = Instant::now();
        let mut backpressure = Backpressure::default();
        apply(&mut backpressure, t0, records(0), true, &[tp(0), tp(1)]);
        let plan = apply(&mut backpressure, t0, records(0), false, &[tp(1)]);
        assert_eq!(plan.resume, vec![tp(1)]);
        assert_eq!(backpressure.paused(), 0);
    }

    #[test]
    fn a_pause_that_failed_is_planned_again() {
        let t0 = Instant::now();
        let mut backpressure = Backpressure::default();
        let none = WaitingLoad::default();
        let plan = backpressure.plan(t0, records(0), &none, &limits(), true, &[tp(0)]);
        assert_eq!(plan.pause, vec![tp(0)]);
        // Not reported as done (the consumer refused): the next plan asks again.
        let plan = backpressure.plan(t0, records(0), &none, &limits(), true, &[tp(0)]);
        assert_eq!(plan.pause, vec![tp(0)]);
    }

    /// `records` records waiting, on `partitions`.
    fn waiting(records: usize, partitions: &[TopicPartition]) -> WaitingLoad {
        WaitingLoad {
            records,
            bytes: records * 10,
            partitions: partitions.to_vec(),
        }
    }

    fn plan_waiting(
        backpressure: &mut Backpressure,
        now: Instant,
        load: &WaitingLoad,
        assigned: &[TopicPartition],
    ) -> Pauses {
        // Everything buffered is waiting: intake itself is never stopped here.
        let plan = backpressure.plan(now, records(load.records), load, &limits(), false, assigned);
        backpressure.did(&plan.pause, &plan.resume);
        plan
    }

    #[test]
    fn waiting_records_pause_only_their_partitions_past_half_the_buffers() {
        let t0 = Instant::now();
        let assigned = [tp(0), tp(1), tp(2)];
        let mut backpressure = Backpressure::default();
        // Below half: nothing paused; the other partitions have the rest of the buffers.
        let plan = plan_waiting(&mut backpressure, t0, &waiting(49, &[tp(0)]), &assigned);
        assert_eq!(plan, Pauses::default());
        // Half: the partitions holding them pause, and only those.
        let plan = plan_waiting(
            &mut backpressure,
            t0,
            &waiting(50, &[tp(0), tp(2)]),
            &assigned,
        );
        assert_eq!(sorted(plan.pause), vec![tp(0), tp(2)]);
        assert!(
            backpressure.intake_open(t0),
            "the other partitions still flow"
        );
        // Down to a third: still paused (hysteresis).
        let plan = plan_waiting(
            &mut backpressure,
            t0,
            &waiting(33, &[tp(0), tp(2)]),
            &assigned,
        );
        assert_eq!(plan, Pauses::default());
        // Partition 2's records went (their target closed): it resumes; 0 stays paused.
        let plan = plan_waiting(&mut backpressure, t0, &waiting(30, &[tp(0)]), &assigned);
        assert_eq!(plan.resume, vec![tp(2)]);
        // Down to a quarter: partition 0 resumes too.
        let plan = plan_waiting(&mut backpressure, t0, &waiting(25, &[tp(0)]), &assigned);
        assert_eq!(plan.resume, vec![tp(0)]);
        assert_eq!(backpressure.paused(), 0);
    }

    #[test]
    fn waiting_bytes_count_too() {
        let t0 = Instant::now();
        let mut backpressure = Backpressure::default();
        let heavy = WaitingLoad {
            records: 1,
            bytes: 5_000,
            partitions: vec![tp(1)],
        };
        let plan = plan_waiting(&mut backpressure, t0, &heavy, &[tp(0), tp(1)]);
        assert_eq!(plan.pause, vec![tp(1)]);
    }
}
