//! [`RateLimit`]: SMS no faster than the sender's rate, counted in segments per second as Twilio
//! counts throughput (a 2-segment receipt costs two).
//!
//! Why here and awaited: Twilio queues what exceeds a sender's rate (for up to 10 hours, then fails
//! it with 21611 or 30001), so sending faster only grows a queue that outlives crashes and hides
//! trouble. A send waits for its cells *inside* the processor's effect: the record stays in flight
//! meanwhile, the runtime's `--max-in-flight` bound fills, and the runtime stops taking records.
//! Nothing piles up in memory and nothing is skipped.
//!
//! Invariant: over any interval, cells granted ≤ rate × interval + burst, with the burst one
//! second's worth (GCRA as virtual scheduling: each call reserves its cells on a shared schedule
//! and sleeps until its own time). The limit is per process: each instance of a processor sharing
//! one sender must get its share of the sender's rate.
//!
//! Why reservations: hundreds of records wait here at once when the rate binds. A limiter that
//! wakes every waiter at the earliest free moment to let them race for one cell (governor's
//! `until_ready`) woke each waiter once per cell granted to another, which cost a quarter of the
//! receipts processor's CPU at 2,000 receipts/s. A reservation wakes each waiter once, in order.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A per-process segments-per-second limit. Cheap to clone (clones share the schedule).
#[derive(Clone)]
pub struct RateLimit {
    /// The theoretical arrival time: when the schedule's last reserved cell is due. A call may go
    /// as soon as its own last cell is due within one burst of now.
    schedule: Arc<Mutex<Instant>>,
    /// Time per cell.
    period: Duration,
    /// The largest number of cells one call can wait for, and how far ahead of the schedule
    /// cells may go at once after a quiet spell: a message of more segments than the burst
    /// waits for the whole burst instead.
    burst: NonZeroU32,
    per_second: f64,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimit {
    /// `per_second` segments per second (fractions allowed: 0.5 is one every 2 s); `None` when
    /// it is not a positive, finite rate.
    pub fn per_second(per_second: f64) -> Option<Self> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return None;
        }
        let period = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        if period.is_zero() {
            return None;
        }
        // One second's worth at once after a quiet spell, never less than one cell.
        let burst = NonZeroU32::new(per_second.floor().min(f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        Some(RateLimit {
            schedule: Arc::new(Mutex::new(Instant::now())),
            period,
            burst,
            per_second,
        })
    }

    /// The configured rate.
    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Waits until `segments` cells (at least 1, at most the burst) are available, and takes them.
    /// A call that is dropped while it waits leaves its cells unused: the rate is never exceeded.
    pub async fn until_ready(&self, segments: usize) {
        let wanted = u32::try_from(segments)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN)
            .min(self.burst);
        let due = {
            // A poisoned lock means a panic elsewhere while holding it; the instant inside is
            // still one the schedule reached.
            let mut schedule = self
                .schedule
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let last = (*schedule).max(now) + self.period * wanted.get();
            *schedule = last;
            last.checked_sub(self.period * self.burst.get())
                .unwrap_or(now)
        };
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn only_positive_finite_rates() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RateLimit::per_second(bad).is_none(), "{bad}");
        }
        assert!(RateLimit::per_second(0.5).is_some());
        assert_eq!(RateLimit::per_second(500.0).unwrap().burst.get(), 500);
        assert_eq!(RateLimit::per_second(0.5).unwrap().burst.get(), 1);
    }

    #[tokio::test]
    async fn sends_no_faster_than_the_rate_after_the_burst() {
        let rate = RateLimit::per_second(100.0).unwrap();
        let started = Instant::now();
        // The burst (100) goes at once; 50 more take about half a second.
        for _ in 0..150 {
            rate.until_ready(1).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        // A message longer than the burst still goes (waiting for the whole burst).
        let small = RateLimit::per_second(2.0).unwrap();
        small.until_ready(5).await;
    }

    #[tokio::test]
    async fn each_waiter_is_woken_once_not_at_every_cell_granted_to_another() {
        // The burst (200) goes at once; the 100 waiting beyond it take half a second.
        let rate = RateLimit::per_second(200.0).unwrap();
        for _ in 0..200 {
            rate.until_ready(1).await;
        }
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let rate = rate.clone();
                tokio::spawn(async move {
                    let mut wait = Box::pin(rate.until_ready(1));
                    let mut polls = 0;
                    std::future::poll_fn(|cx| {
                        polls += 1;
                        wait.as_mut().poll(cx)
                    })
                    .await;
                    polls
                })
            })
            .collect();
        let mut most = 0;
        for waiter in waiters {
            most = most.max(waiter.await.unwrap());
        }
        // Polled when it starts waiting and when its time comes (at most once more, should the
        // timer fire a little early).
        assert!(most <= 3, "a waiter was polled {most} times");
    }
}
