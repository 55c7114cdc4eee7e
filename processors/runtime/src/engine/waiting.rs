//! Records waiting for their target's circuit (see [`crate::targets`]): a worker hands back a
//! record whose target's circuit is open, and the engine keeps it here, holding no slot of
//! `--max-in-flight`, until the circuit lets it go (one at a time while half-open, all once
//! closed or once the target refused access past `--forbidden-timeout`).
//!
//! Invariant: a waiting record stays buffered (counted in the buffer bounds, its offset unfinished
//! in its tracker, so the committed offset never passes it, and its key busy, so its response's
//! later revisions wait behind it) until it is let go to a lane; a target's records are let go
//! in the order they came to wait; a record of an ended assignment is dropped, never run.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::Engine;
use super::partitions::{Buffered, PartitionMap, TopicPartition};
use crate::processor::Processor;
use crate::targets::{Release, Target, TargetCircuits};
use crate::worker::{Job, Waiter};

/// Records, bytes and partitions of the waiting records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WaitingLoad {
    pub records: usize,
    pub bytes: usize,
    /// The partitions holding waiting records.
    pub partitions: Vec<TopicPartition>,
}

/// The waiting records, by target.
#[derive(Default)]
pub struct Waiting {
    by_target: HashMap<Arc<Target>, VecDeque<Job>, foldhash::fast::RandomState>,
    records: usize,
    bytes: usize,
    /// Waiting records per partition.
    per_partition: PartitionMap<usize>,
}

impl Waiting {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// Keeps `waiter`'s job until its target's circuit lets it go.
    pub fn add(&mut self, waiter: Waiter) {
        let Waiter { target, job } = waiter;
        self.records += 1;
        self.bytes += job.bytes;
        *self.per_partition.entry(job.tp).or_default() += 1;
        self.by_target.entry(target).or_default().push_back(job);
    }

    /// What the waiting records weigh.
    pub fn weight(&self) -> Buffered {
        Buffered {
            records: self.records,
            bytes: self.bytes,
        }
    }

    /// What the waiting records weigh, and where.
    pub fn load(&self) -> WaitingLoad {
        WaitingLoad {
            records: self.records,
            bytes: self.bytes,
            partitions: self.per_partition.keys().copied().collect(),
        }
    }

    /// Takes a record of `tp` and `bytes` out of the counts.
    fn uncount(&mut self, tp: TopicPartition, bytes: usize) {
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(count) = self.per_partition.get_mut(&tp) {
            *count -= 1;
            if *count == 0 {
                self.per_partition.remove(&tp);
            }
        }
    }

    /// Moves to `released` the records each target's circuit lets go at `now`, oldest first;
    /// drops those whose assignment ended.
    pub fn release(&mut self, circuits: &TargetCircuits, now: Instant, released: &mut Vec<Job>) {
        let mut left: Vec<(TopicPartition, usize)> = Vec::new();
        self.by_target.retain(|target, jobs| {
            let take = match circuits.release(target, now) {
                Release::None => 0,
                Release::One => 1,
                Release::All => jobs.len(),
            };
            let mut taken = 0;
            while taken < take
                && let Some(job) = jobs.pop_front()
            {
                left.push((job.tp, job.bytes));
                // A record of a revoked partition is the new owner's: dropped, and it does not
                // count as the trial of a half-open circuit.
                if job.alive.holds() {
                    released.push(job);
                    taken += 1;
                }
            }
            !jobs.is_empty()
        });
        for (tp, bytes) in left {
            self.uncount(tp, bytes);
        }
    }

    /// Drops the records whose assignment ended (their partition was revoked).
    pub fn forget_ended(&mut self) {
        let mut gone = Vec::new();
        self.by_target.retain(|_, jobs| {
            jobs.retain(|job| {
                let holds = job.alive.holds();
                if !holds {
                    gone.push((job.tp, job.bytes));
                }
                holds
            });
            !jobs.is_empty()
        });
        for (tp, bytes) in gone {
            self.uncount(tp, bytes);
        }
    }
}

impl<P: Processor> Engine<P> {
    /// Probes the open targets whose probe is due (each in a task of its own, so that a slow
    /// target delays nothing else), and lets go the waiting records their circuits allow.
    pub(super) fn tend_targets(&mut self) {
        while self.probes.try_join_next().is_some() {}
        let now = Instant::now();
        for target in self.worker.targets.due_probes(now) {
            let worker = self.worker.clone();
            self.probes.spawn(async move {
                let outcome = worker.processor.probe_target(&target).await;
                worker.targets.probed(&target, &outcome, Instant::now());
            });
        }
        if !self.waiting.is_empty() {
            let revocations = self
                .partitions
                .lock()
                .map_or(self.revocations_seen, |partitions| partitions.revocations);
            if revocations != self.revocations_seen {
                self.revocations_seen = revocations;
                self.waiting.forget_ended();
            }
            let mut released = Vec::new();
            self.waiting
                .release(&self.worker.targets, now, &mut released);
            let at = std::time::Instant::now();
            for job in released {
                self.lanes.push(job, at);
            }
        }
    }

    /// Open circuits by kind of target, and the records waiting for them, for /metrics (and, as
    /// often, forgets the circuits of targets that went quiet).
    pub(super) fn report_targets(&mut self) {
        self.worker.targets.forget_idle(Instant::now());
        let open = self.worker.targets.not_closed_by_kind();
        for (kind, _) in &open {
            if !self.circuit_kinds.contains(kind) {
                self.circuit_kinds.push(kind);
            }
        }
        for kind in &self.circuit_kinds {
            let count = open
                .iter()
                .find(|(open_kind, _)| open_kind == kind)
                .map_or(0, |(_, count)| *count);
            self.metrics.open_circuits(kind, count);
        }
        self.metrics.waiting(self.waiting.records());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::partitions::Partitions;
    use crate::engine::partitions::tests::{admit, runnable, tp};
    use crate::targets::{CircuitSettings, TargetRef};

    const BASE: Duration = Duration::from_secs(1);

    fn circuits() -> TargetCircuits {
        TargetCircuits::new(CircuitSettings {
            threshold: 1,
            probe_base: BASE,
            probe_max: Duration::from_secs(8),
            forbidden_timeout: Duration::from_secs(60),
        })
    }

    fn target(organisation: &str) -> TargetRef<'_> {
        TargetRef {
            organisation,
            kind: "webhook",
            address: "https://hooks.example/in",
        }
    }

    /// Opens `organisation`'s circuit and returns its target.
    fn open(circuits: &TargetCircuits, organisation: &str, now: Instant) -> Arc<Target> {
        circuits.failed(target(organisation), false, now, |_| "hook".to_owned());
        circuits
            .holding(&crate::targets::Targets::one(target(organisation)))
            .expect("open")
    }

    fn offsets(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().map(|job| job.offset).collect()
    }

    #[test]
    fn records_wait_while_open_then_go_one_at_a_time_then_all_in_order() {
        let t0 = Instant::now();
        let circuits = circuits();
        let a = open(&circuits, "a", t0);
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let mut waiting = Waiting::default();
        for offset in 0..4 {
            let job = runnable(admit(&mut partitions, tp(0), offset, Some(offset as u64)));
            waiting.add(Waiter {
                target: a.clone(),
                job,
            });
        }
        let load = waiting.load();
        assert_eq!((load.records, load.partitions), (4, vec![tp(0)]));
        assert_eq!(load.bytes, 4 * (10 + 64));

        let mut released = Vec::new();
        waiting.release(&circuits, t0, &mut released);
        assert!(released.is_empty(), "the circuit is open");

        // The probe answers: one record goes to try the target.
        let probed = circuits.due_probes(t0 + BASE);
        circuits.probed(&probed[0], &Ok(()), t0 + BASE);
        waiting.release(&circuits, t0 + BASE, &mut released);
        assert_eq!(offsets(&released), vec![0]);
        assert_eq!(waiting.records(), 3);

        // It succeeds: the rest go, in order.
        circuits.succeeded(&crate::targets::Targets::one(target("a")));
        released.clear();
        waiting.release(&circuits, t0 + BASE, &mut released);
        assert_eq!(offsets(&released), vec![1, 2, 3]);
        assert!(waiting.is_empty());
        assert_eq!(waiting.load(), WaitingLoad::default());
    }

    #[test]
    fn another_targets_records_are_not_held_by_an_open_circuit() {
        let t0 = Instant::now();
        let circuits = circuits();
        let a = open(&circuits, "a", t0);
        let b = Arc::new(Target::new(target("b")));
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        let mut waiting = Waiting::default();
        let job_a = runnable(admit(&mut partitions, tp(0), 0, Some(1)));
        let job_b = runnable(admit(&mut partitions, tp(0), 1, Some(2)));
        waiting.add(Waiter {
            target: a,
            job: job_a,
        });
        // b's circuit is closed (a record came back just as it closed): it goes at once.
        waiting.add(Waiter {
            target: b,
            job: job_b,
        });
        let mut released = Vec::new();
        waiting.release(&circuits, t0, &mut released);
        assert_eq!(offsets(&released), vec![1]);
        assert_eq!(waiting.records(), 1);
    }

    #[test]
    fn records_of_a_revoked_partition_are_dropped() {
        let t0 = Instant::now();
        let circuits = circuits();
        let a = open(&circuits, "a", t0);
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        partitions.assign(tp(1));
        let mut waiting = Waiting::default();
        for (partition, offset) in [(0, 0), (1, 0), (1, 1)] {
            let job = runnable(admit(&mut partitions, tp(partition), offset, None));
            waiting.add(Waiter {
                target: a.clone(),
                job,
            });
        }
        partitions.revoke(&tp(1));
        waiting.forget_ended();
        let load = waiting.load();
        assert_eq!((load.records, load.partitions), (1, vec![tp(0)]));

        // And a revoked record is never the half-open circuit's trial.
        partitions.assign(tp(1));
        let job = runnable(admit(&mut partitions, tp(1), 5, None));
        partitions.revoke(&tp(1));
        let mut waiting = Waiting::default();
        waiting.add(Waiter {
            target: a.clone(),
            job,
        });
        let job = runnable(admit(&mut partitions, tp(0), 1, None));
        waiting.add(Waiter { target: a, job });
        let probed = circuits.due_probes(t0 + BASE);
        circuits.probed(&probed[0], &Ok(()), t0 + BASE);
        let mut released = Vec::new();
        waiting.release(&circuits, t0 + BASE, &mut released);
        assert_eq!(offsets(&released), vec![1]);
        assert!(waiting.is_empty());
    }
}
