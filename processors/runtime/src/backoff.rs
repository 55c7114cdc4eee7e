//! How long to wait before retrying a record whose effect failed retriably, and when to give up
//! and dead-letter it instead.
//!
//! Delays grow exponentially with full jitter (a uniform draw between zero and the exponential
//! cap), so that many records failing against the same target at once do not retry in lockstep.
//! A `retry_after` from the target (a 429's or 503's `Retry-After`) is a floor on the delay.
//!
//! Invariant: a delay is returned only while the budget lasts: fewer than `max_attempts`
//! attempts were made, and the retry would start within `max_elapsed` of the first attempt.
//! A retry never waits less than the target asked for; when that is past the budget, the record
//! is given up on rather than retried early.

use std::time::Duration;

use rand::Rng;

/// When and how often a retriable failure is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The cap of the first retry's delay; each later retry doubles it.
    pub base: Duration,
    /// The largest cap of the jittered delay, however many attempts were made. It does not
    /// shorten a target's `retry_after`.
    pub max_delay: Duration,
    /// Most attempts in all, the first one included.
    pub max_attempts: u32,
    /// Longest time from the first attempt to the start of the last retry.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` failed attempts (`attempts >= 1`; 0 is
    /// treated as 1), the first attempt having started `elapsed` ago.
    ///
    /// The delay is uniform in `[0, min(max_delay, base * 2^(attempts-1))]` (full jitter), but
    /// never less than `retry_after` when given. Returns `None` when the budget is spent:
    /// `attempts >= max_attempts`, or `elapsed + delay > max_elapsed`.
    pub fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let cap = self.cap(attempts);
        // Durations longer than u64 nanoseconds (584 years) are clamped: nobody waits that long.
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.random_range(0..=cap_nanos));
        let remaining = self.max_elapsed.checked_sub(elapsed)?;
        match retry_after {
            // The target asked for more time than the budget has left: it cannot be honoured.
            Some(floor) if floor > remaining => None,
            Some(floor) => Some(jittered.max(floor).min(remaining)),
            // A draw past the deadline becomes one last attempt at the deadline (as Kafka Connect
            // does), rather than giving up early by chance.
            None if remaining.is_zero() => None,
            None => Some(jittered.min(remaining)),
        }
    }

    /// The upper bound of the jittered delay: `min(max_delay, base * 2^(attempts-1))`, without
    /// overflowing for large `attempts`.
    fn cap(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1);
        1u32.checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: 100,
            max_elapsed: Duration::from_secs(3600),
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// Draws many delays and checks they stay within `[0, cap]` and cover the range.
    fn assert_jitter_spans(policy: &RetryPolicy, attempts: u32, cap: Duration) {
        let mut rng = rng();
        let samples: Vec<Duration> = (0..2_000)
            .map(|_| {
                policy
                    .next_delay(attempts, Duration::ZERO, None, &mut rng)
                    .expect("within budget")
            })
            .collect();
        assert!(samples.iter().all(|&delay| delay <= cap), "above {cap:?}");
        // Uniform over [0, cap]: each tenth of the range gets some of the 2,000 draws.
        let mut deciles = [0usize; 10];
        for delay in &samples {
            let decile = (delay.as_secs_f64() / cap.as_secs_f64() * 10.0) as usize;
            deciles[decile.min(9)] += 1;
        }
        assert!(
            deciles.iter().all(|&count| count > 100),
            "uneven spread over [0, {cap:?}]: {deciles:?}"
        );
    }

    #[test]
    fn first_retry_jitters_up_to_base() {
        assert_jitter_spans(&policy(), 1, Duration::from_millis(100));
    }

    #[test]
    fn cap_doubles_with_each_attempt() {
        assert_jitter_spans(&policy(), 2, Duration::from_millis(200));
        assert_jitter_spans(&policy(), 4, Duration::from_millis(800));
    }

    #[test]
    fn cap_stops_at_max_delay() {
        // 100 ms * 2^9 = 51.2 s, above the 10 s maximum.
        assert_jitter_spans(&policy(), 10, Duration::from_secs(10));
    }

    #[test]
    fn zero_attempts_is_treated_as_the_first() {
        assert_jitter_spans(&policy(), 0, Duration::from_millis(100));
    }

    #[test]
    fn no_overflow_for_huge_attempt_counts() {
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            ..policy()
        };
        let mut rng = rng();
        for attempts in [31, 32, 33, 64, u32::MAX - 1] {
            let delay = policy
                .next_delay(attempts, Duration::ZERO, None, &mut rng)
                .expect("within budget");
            assert!(delay <= policy.max_delay);
        }
        // u32::MAX attempts reaches even this budget.
        assert_eq!(
            policy.next_delay(u32::MAX, Duration::ZERO, None, &mut rng),
            None
        );
        let unlimited = RetryPolicy {
            base: Duration::MAX,
            max_delay: Duration::MAX,
            max_attempts: u32::MAX,
            max_elapsed: Duration::MAX,
        };
        assert!(
            unlimited
                .next_delay(u32::MAX - 1, Duration::ZERO, None, &mut rng)
                .is_some()
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = rng();
        let after = Duration::from_secs(5);
        for _ in 0..200 {
            let delay = policy()
                .next_delay(1, Duration::ZERO, Some(after), &mut rng)
                .expect("within budget");
            assert!(delay >= after);
            // The jitter (at most 100 ms) is below the floor, so the floor is the delay.
            assert_eq!(delay, after);
        }
    }

    #[test]
    fn retry_after_is_not_capped_by_max_delay() {
        let after = Duration::from_secs(60);
        let delay = policy().next_delay(1, Duration::ZERO, Some(after), &mut rng());
        assert_eq!(delay, Some(after));
    }

    #[test]
    fn retry_after_below_the_jitter_leaves_the_jitter() {
        let mut rng = rng();
        let after = Duration::from_millis(1);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                policy()
                    .next_delay(10, Duration::ZERO, Some(after), &mut rng)
                    .expect("within budget")
            })
            .collect();
        assert!(delays.iter().all(|&delay| delay >= after));
        assert!(delays.iter().any(|&delay| delay > Duration::from_secs(1)));
    }

    #[test]
    fn budget_by_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..policy()
        };
        let mut rng = rng();
        assert!(
            policy
                .next_delay(1, Duration::ZERO, None, &mut rng)
                .is_some()
        );
        assert!(
            policy
                .next_delay(2, Duration::ZERO, None, &mut rng)
                .is_some()
        );
        assert_eq!(policy.next_delay(3, Duration::ZERO, None, &mut rng), None);
        assert_eq!(policy.next_delay(4, Duration::ZERO, None, &mut rng), None);
    }

    #[test]
    fn a_single_attempt_is_never_retried() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(policy.next_delay(1, Duration::ZERO, None, &mut rng()), None);
    }

    #[test]
    fn budget_by_time() {
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(60),
            ..policy()
        };
        let mut rng = rng();
        // Time is left for any delay the jitter can draw (at most 10 s).
        for _ in 0..100 {
            assert!(
                policy
                    .next_delay(20, Duration::from_secs(50), None, &mut rng)
                    .is_some()
            );
        }
        // All of it is spent.
        assert_eq!(
            policy.next_delay(
                1,
                Duration::from_secs(60) + Duration::from_nanos(1),
                None,
                &mut rng
            ),
            None
        );
        // Retry-after exactly fits what is left, then exceeds it.
        assert_eq!(
            policy.next_delay(
                1,
                Duration::from_secs(55),
                Some(Duration::from_secs(5)),
                &mut rng
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            policy.next_delay(
                1,
                Duration::from_secs(55),
                Some(Duration::from_secs(6)),
                &mut rng
            ),
            None
        );
    }

    #[test]
    fn elapsed_overflow_spends_the_budget() {
        let policy = RetryPolicy {
            max_elapsed: Duration::MAX,
            ..policy()
        };
        assert_eq!(
            policy.next_delay(1, Duration::MAX, Some(Duration::from_secs(1)), &mut rng()),
            None
        );
    }

    #[test]
    fn a_draw_past_the_deadline_becomes_a_last_attempt_at_the_deadline() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let remaining = Duration::from_millis(5);
        let elapsed = policy.max_elapsed - remaining;
        for _ in 0..200 {
            let delay = policy
                .next_delay(10, elapsed, None, &mut rng)
                .expect("time is left, so one more attempt");
            assert!(delay <= remaining, "{delay:?} overruns the budget");
        }
        assert_eq!(
            policy.next_delay(10, policy.max_elapsed, None, &mut rng),
            None
        );
    }
}
