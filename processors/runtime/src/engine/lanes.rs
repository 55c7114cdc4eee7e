//! Handing work to the lanes: runnable jobs wait in the ready queue, and are handed over as units
//! (a job, or a batch of jobs of different keys) to the lane with the fewest, in one message per
//! lane per turn.
//!
//! Invariant: units handed to the lanes and not reported ended never exceed `LANE_BACKLOG` x
//! `--max-in-flight` (the lanes run at most `--max-in-flight` of them at once, see
//! [`worker::run_lane`]); a job leaves the ready queue only into a lane's message, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::processor::Processor;
use crate::worker::{self, Job, Report, Unit, WorkerContext};

/// Units handed to the lanes, as a multiple of `--max-in-flight`. The lanes run at most
/// `--max-in-flight` at once and keep the rest waiting, so that a lane never idles while the
/// engine gets its turn: with only as many units handed over as may run, a processor whose
/// effects end at once (a no-op, a CPU-bound transform) spent a part of every round trip with
/// its lanes empty. Memory stays bounded by the buffer limits, which count these units too.
pub const LANE_BACKLOG: usize = 4;

/// One lane of the worker pool, as the engine sees it.
struct Lane {
    /// Slices of units for the lane. Unbounded, but never holds more than `LANE_BACKLOG` x
    /// `max_in_flight` units over all lanes: `in_flight` counts them until the lane reports them
    /// ended.
    work: mpsc::UnboundedSender<Vec<Unit>>,
    /// Units handed to this lane and not ended yet (the engine gives new units to the lane with
    /// the fewest).
    units: usize,
}

/// The ready queue and the lanes it feeds.
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Runnable jobs (their key is free) waiting for room in the lanes (or for the circuit).
    ready: VecDeque<Job>,
    /// When the oldest job of the ready queue became ready (for batch linger).
    ready_since: Option<Instant>,
    /// Units handed to a lane and not ended yet, running or waiting there: at most
    /// `LANE_BACKLOG` x `max_in_flight`.
    in_flight: usize,
    max_in_flight: usize,
    /// The processor's batch size (1: one job per unit) and how long a partial batch waits for
    /// company.
    batch_size: usize,
    batch_linger: Duration,
}

impl Lanes {
    /// No lanes yet (see [`Lanes::start`]); `batch_size` jobs at most per unit.
    pub fn new(max_in_flight: usize, batch_size: usize, batch_linger: Duration) -> Self {
        Lanes {
            lanes: Vec::new(),
            ready: VecDeque::new(),
            ready_since: None,
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            batch_size: batch_size.max(1),
            batch_linger,
        }
    }

    /// Starts the worker pool: one lane per thread of the runtime (see [`worker::run_lane`]),
    /// each running many units at once, their limits adding up to `max_in_flight`. The lanes end
    /// when these senders are dropped and their work has ended.
    pub fn start<P: Processor>(
        &mut self,
        worker: &Arc<WorkerContext<P>>,
        reports: &mpsc::UnboundedSender<Report>,
    ) {
        let threads = tokio::runtime::Handle::current().metrics().num_workers();
        let max = self.max_in_flight;
        let lanes = threads.clamp(1, max);
        for lane in 0..lanes {
            let (work, work_rx) = mpsc::unbounded_channel();
            let limit = max / lanes + usize::from(lane < max % lanes);
            tokio::spawn(worker::run_lane(
                worker.clone(),
                lane,
                limit,
                work_rx,
                reports.clone(),
            ));
            self.add(work);
        }
    }

    /// Adds a lane fed through `work`.
    fn add(&mut self, work: mpsc::UnboundedSender<Vec<Unit>>) {
        self.lanes.push(Lane { work, units: 0 });
    }

    /// Units handed to the lanes and not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a job whose key is free.
    pub fn push(&mut self, job: Job, now: Instant) {
        if self.batch_size > 1 && self.ready.is_empty() {
            self.ready_since = Some(now);
        }
        self.ready.push_back(job);
    }

    /// Drops the jobs not handed over yet (the drain: they were never acted on, and stay
    /// uncommitted).
    pub fn clear_ready(&mut self) {
        self.ready.clear();
    }

    /// A lane reported `units` of its units ended: their slots are free.
    pub fn ended(&mut self, lane: usize, units: usize) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.units = lane.units.saturating_sub(units);
        }
        self.in_flight = self.in_flight.saturating_sub(units);
    }

    /// Hands ready jobs to the lanes while they hold fewer than `LANE_BACKLOG` x `max_in_flight`
    /// units: each unit goes to the lane with the fewest units, and each lane gets its units in
    /// one message. A partial batch waits up to the batch linger for company.
    pub fn dispatch(&mut self, now: Instant) {
        if self.lanes.is_empty() {
            return;
        }
        let mut outgoing: Vec<Vec<Unit>> = Vec::new();
        while self.in_flight < self.max_in_flight * LANE_BACKLOG && !self.ready.is_empty() {
            if self.batch_size > 1
                && self.ready.len() < self.batch_size
                && self
                    .ready_since
                    .is_some_and(|since| now.duration_since(since) < self.batch_linger)
            {
                // A partial batch waits a little for company; housekeeping comes back to it.
                break;
            }
            let unit = if self.batch_size == 1 {
                let Some(job) = self.ready.pop_front() else {
                    break;
                };
                Unit::One(job)
            } else {
                let take = self.batch_size.min(self.ready.len());
                Unit::Batch(self.ready.drain(..take).collect())
            };
            self.ready_since = if self.ready.is_empty() || self.batch_size == 1 {
                None
            } else {
                Some(now)
            };
            let Some((lane, _)) = self
                .lanes
                .iter()
                .enumerate()
                .min_by_key(|(_, lane)| lane.units)
            else {
                break;
            };
            if outgoing.is_empty() {
                outgoing.resize_with(self.lanes.len(), Vec::new);
            }
            self.lanes[lane].units += 1;
            self.in_flight += 1;
            outgoing[lane].push(unit);
        }
        for (lane, units) in outgoing.into_iter().enumerate() {
            if units.is_empty() {
                continue;
            }
            let count = units.len();
            // Fails only once the lane is gone.
            if self.lanes[lane].work.send(units).is_err() {
                self.lanes[lane].units -= count;
                self.in_flight -= count;
                tracing::warn!(lane, "A worker lane is gone; its records stay unfinished.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::partitions::Partitions;
    use crate::engine::partitions::tests::{admit, runnable, tp};

    fn jobs(count: i64) -> Vec<Job> {
        let mut partitions = Partitions::default();
        partitions.assign(tp(0));
        (0..count)
            .map(|offset| runnable(admit(&mut partitions, tp(0), offset, None)))
            .collect()
    }

    /// Lanes with `lanes` lanes; returns their receiving ends.
    fn lanes(
        lanes: usize,
        max_in_flight: usize,
        batch_size: usize,
    ) -> (Lanes, Vec<mpsc::UnboundedReceiver<Vec<Unit>>>) {
        let mut dispatcher = Lanes::new(max_in_flight, batch_size, Duration::from_millis(50));
        let mut receivers = Vec::new();
        for _ in 0..lanes {
            let (tx, rx) = mpsc::unbounded_channel();
            dispatcher.add(tx);
            receivers.push(rx);
        }
        (dispatcher, receivers)
    }

    /// The offsets of the units waiting in a lane's channel, in order.
    fn received(rx: &mut mpsc::UnboundedReceiver<Vec<Unit>>) -> Vec<Vec<i64>> {
        let mut units = Vec::new();
        while let Ok(message) = rx.try_recv() {
            for unit in message {
                units.push(match unit {
                    Unit::One(job) => vec![job.offset],
                    Unit::Batch(jobs) => jobs.iter().map(|job| job.offset).collect(),
                });
            }
        }
        units
    }

    #[test]
    fn units_are_spread_evenly_over_the_lanes_in_one_message_each() {
        let now = Instant::now();
        let (mut dispatcher, mut receivers) = lanes(2, 8, 1);
        for job in jobs(4) {
            dispatcher.push(job, now);
        }
        dispatcher.dispatch(now);
        assert_eq!(dispatcher.in_flight(), 4);
        let first = receivers[0].try_recv().expect("one message");
        assert_eq!(first.len(), 2);
        assert!(receivers[0].try_recv().is_err(), "one message per lane");
        let mut offsets: Vec<Vec<i64>> = received(&mut receivers[1]);
        offsets.extend(first.into_iter().map(|unit| match unit {
            Unit::One(job) => vec![job.offset],
            Unit::Batch(_) => panic!("batch size 1"),
        }));
        offsets.sort();
        assert_eq!(offsets, vec![vec![0], vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn the_lanes_hold_at_most_their_backlog() {
        let now = Instant::now();
        let (mut dispatcher, mut receivers) = lanes(1, 2, 1);
        let bound = 2 * LANE_BACKLOG;
        for job in jobs(bound as i64 + 3) {
            dispatcher.push(job, now);
        }
        dispatcher.dispatch(now);
        assert_eq!(dispatcher.in_flight(), bound);
        assert_eq!(received(&mut receivers[0]).len(), bound);
        // Two units end: two more go, the oldest first.
        dispatcher.ended(0, 2);
        dispatcher.dispatch(now);
        assert_eq!(dispatcher.in_flight(), bound);
        assert_eq!(
            received(&mut receivers[0]),
            vec![vec![bound as i64], vec![bound as i64 + 1]]
        );
    }

    #[test]
    fn a_partial_batch_lingers_then_goes() {
        let t0 = Instant::now();
        let (mut dispatcher, mut receivers) = lanes(1, 8, 3);
        for job in jobs(2) {
            dispatcher.push(job, t0);
        }
        dispatcher.dispatch(t0 + Duration::from_millis(10));
        assert_eq!(dispatcher.in_flight(), 0, "waiting for company");
        dispatcher.dispatch(t0 + Duration::from_millis(50));
        assert_eq!(received(&mut receivers[0]), vec![vec![0, 1]]);
    }

    #[test]
    fn full_batches_go_at_once() {
        let now = Instant::now();
        let (mut dispatcher, mut receivers) = lanes(1, 8, 3);
        for job in jobs(7) {
            dispatcher.push(job, now);
        }
        dispatcher.dispatch(now);
        // Two full batches; the remainder waits for company.
        assert_eq!(
            received(&mut receivers[0]),
            vec![vec![0, 1, 2], vec![3, 4, 5]]
        );
        dispatcher.dispatch(now + Duration::from_millis(60));
        assert_eq!(received(&mut receivers[0]), vec![vec![6]]);
    }

    #[test]
    fn units_of_a_lane_that_is_gone_are_not_counted() {
        let now = Instant::now();
        let (mut dispatcher, receivers) = lanes(1, 8, 1);
        drop(receivers);
        for job in jobs(3) {
            dispatcher.push(job, now);
        }
        dispatcher.dispatch(now);
        assert_eq!(dispatcher.in_flight(), 0);
    }

    #[test]
    fn cleared_jobs_are_never_handed_over() {
        let now = Instant::now();
        let (mut dispatcher, mut receivers) = lanes(1, 8, 1);
        for job in jobs(3) {
            dispatcher.push(job, now);
        }
        dispatcher.clear_ready();
        dispatcher.dispatch(now);
        assert!(received(&mut receivers[0]).is_empty());
    }
}
