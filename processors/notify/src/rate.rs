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
//! second's worth (GCRA, `governor`). The limit is per process: each instance of a processor sharing
//! one sender must get its share of the sender's rate.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A per-process segments-per-second limit. Cheap to clone (clones share the bucket).
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultDirectRateLimiter>,
    /// The largest number of cells one call can wait for: a message of more segments than the
    /// burst waits for the whole burst instead (governor refuses a request above its burst).
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
        let period = Duration::from_secs_f64(1.0 / per_second);
        // One second's worth at once after a quiet spell, never less than one cell.
        let burst = NonZeroU32::new(per_second.floor().min(f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(RateLimit {
            limiter: Arc::new(RateLimiter::direct(quota)),
            burst,
            per_second,
        })
    }

    /// The configured rate.
    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Waits until `segments` cells (at least 1, at most the burst) are available, and takes them.
    pub async fn until_ready(&self, segments: usize) {
        let wanted = u32::try_from(segments)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN)
            .min(self.burst);
        // Only fails when `wanted` exceeds the burst, which the clamp above rules out; fall back
        // to one cell rather than sending unlimited.
        if self.limiter.until_n_ready(wanted).await.is_err() {
            self.limiter.until_ready().await;
        }
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
}
