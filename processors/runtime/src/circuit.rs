//! The circuit breaker that stops a processor from hammering a target that is down.
//!
//! After `threshold` consecutive retriable failures the circuit opens: the runtime pauses the
//! partitions (it keeps polling, so it keeps its group membership) and only asks the
//! processor's probe, at growing intervals. When a probe answers, the circuit is half-open: the
//! runtime resumes, and the next record decides — a success closes the circuit, a failure opens
//! it again at once. Permanent failures say nothing about the target's health and never reach
//! the breaker. A refusal of access (a 403) counts as a retriable failure, and the breaker
//! remembers since when the target has been refusing, until its next success.
//!
//! Invariant: a probe time is due exactly while the circuit is open, and the interval between
//! probes stays within `[probe_base, probe_max]`, doubling after each failure while the outage
//! lasts and going back to `probe_base` only once the circuit closes.

use std::time::Duration;

use tokio::time::Instant;

/// Where the breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Records run; consecutive retriable failures are counted.
    Closed,
    /// Records are held back; only probes are sent.
    Open,
    /// A probe answered; records run again, and the next one's outcome closes or reopens.
    HalfOpen,
}

/// Counts consecutive retriable failures and schedules probes while the target is down.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    state: CircuitState,
    /// Consecutive retriable failures since the last success; opens the circuit at `threshold`.
    failures: u32,
    /// How many consecutive failures open the circuit (at least 1).
    threshold: u32,
    /// The first interval between probes of an outage.
    probe_base: Duration,
    /// The longest interval between probes, so that recovery is noticed within it.
    probe_max: Duration,
    /// The interval before the next probe; doubles after each failed probe (or each failure
    /// while half-open), back to `probe_base` when the circuit closes.
    probe_interval: Duration,
    /// When the next probe is due; `Some` exactly while open.
    next_probe: Option<Instant>,
    /// When the outage began (the circuit first opened since it was last closed), for the
    /// open-duration metric. Kept through half-open and reopening: the outage is not over
    /// until the circuit closes.
    opened_at: Option<Instant>,
    /// Since when the target has refused access (its first refusal since the last success), so
    /// that a refusal that lasts can be told from a moment's.
    refused_since: Option<Instant>,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive retriable failures (0 is treated as 1). While open, a
    /// probe is due every `probe_base` at first, doubling after each failed probe up to
    /// `probe_max` (a `probe_max` below `probe_base` is raised to it).
    pub fn new(threshold: u32, probe_base: Duration, probe_max: Duration) -> Self {
        CircuitBreaker {
            state: CircuitState::Closed,
            failures: 0,
            threshold: threshold.max(1),
            probe_base,
            probe_max: probe_max.max(probe_base),
            probe_interval: probe_base,
            next_probe: None,
            opened_at: None,
            refused_since: None,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// A record's effect succeeded: failures reset; HalfOpen -> Closed.
    ///
    /// While open, a success (a record that was in flight when the circuit opened) resets the
    /// count but leaves the circuit open: the probe decides when records flow again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.refused_since = None;
        if self.state == CircuitState::HalfOpen {
            self.state = CircuitState::Closed;
            self.probe_interval = self.probe_base;
            self.next_probe = None;
            self.opened_at = None;
        }
    }

    /// A record's effect failed retriably at `now`. Returns true if this call opened the
    /// circuit (Closed -> Open at the threshold, or HalfOpen -> Open at once).
    ///
    /// Reopening from half-open counts as a failed probe: the next probe waits twice as long.
    pub fn on_retriable_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            CircuitState::Closed if self.failures >= self.threshold => {
                self.state = CircuitState::Open;
                self.opened_at = Some(now);
                self.probe_interval = self.probe_base;
                self.schedule_probe(now);
                true
            }
            CircuitState::HalfOpen => {
                self.state = CircuitState::Open;
                self.back_off_probe(now);
                true
            }
            CircuitState::Closed | CircuitState::Open => false,
        }
    }

    /// The target refused access at `now`: a retriable failure (see
    /// [`CircuitBreaker::on_retriable_failure`], whose result it returns) that also starts the
    /// refusal's clock, unless it runs already.
    pub fn on_refused(&mut self, now: Instant) -> bool {
        self.refused_since.get_or_insert(now);
        self.on_retriable_failure(now)
    }

    /// How long the target has refused access at `now`, if it has since its last success.
    pub fn refused_for(&self, now: Instant) -> Option<Duration> {
        self.refused_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// When the next probe is due (Some only while Open).
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.next_probe
    }

    /// The probe answered: Open -> HalfOpen (the runtime resumes; the next success closes, the
    /// next failure re-opens). Ignored unless open.
    pub fn probe_succeeded(&mut self) {
        if self.state == CircuitState::Open {
            self.state = CircuitState::HalfOpen;
            self.next_probe = None;
        }
    }

    /// The probe failed at `now`: stays Open, next probe after a doubled interval (capped).
    /// Ignored unless open.
    pub fn probe_failed(&mut self, now: Instant) {
        if self.state == CircuitState::Open {
            self.back_off_probe(now);
        }
    }

    /// How long the circuit has been open (through half-open), for metrics; zero when closed.
    pub fn open_for(&self, now: Instant) -> Duration {
        self.opened_at.map_or(Duration::ZERO, |opened_at| {
            now.saturating_duration_since(opened_at)
        })
    }

    /// Doubles the probe interval (up to `probe_max`) and schedules the next probe after it.
    fn back_off_probe(&mut self, now: Instant) {
        self.probe_interval = self
            .probe_interval
            .checked_mul(2)
            .map_or(self.probe_max, |doubled| doubled.min(self.probe_max));
        self.schedule_probe(now);
    }

    fn schedule_probe(&mut self, now: Instant) {
        // An interval too long for the clock to represent cannot be waited out anyway: probing
        // now is the harmless answer, where adding would panic.
        self.next_probe = Some(now.checked_add(self.probe_interval).unwrap_or(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(8);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(3, BASE, MAX)
    }

    #[test]
    fn opens_at_the_threshold() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(!breaker.on_retriable_failure(t0));
        assert!(!breaker.on_retriable_failure(t0));
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.next_probe_at(), None);
        assert!(breaker.on_retriable_failure(t0));
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.next_probe_at(), Some(t0 + BASE));
        // Failures of records still in flight do not open it again.
        assert!(!breaker.on_retriable_failure(t0));
        assert_eq!(breaker.next_probe_at(), Some(t0 + BASE));
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        breaker.on_retriable_failure(t0);
        breaker.on_retriable_failure(t0);
        breaker.on_success();
        assert!(!breaker.on_retriable_failure(t0));
        assert!(!breaker.on_retriable_failure(t0));
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.on_retriable_failure(t0));
    }

    #[test]
    fn zero_threshold_opens_on_the_first_failure() {
        let mut breaker = CircuitBreaker::new(0, BASE, MAX);
        assert!(breaker.on_retriable_failure(Instant::now()));
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn probe_interval_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, BASE, MAX);
        breaker.on_retriable_failure(t0);
        let mut now = t0;
        for expected in [1, 2, 4, 8, 8, 8] {
            let due = breaker.next_probe_at().expect("open");
            assert_eq!(due - now, Duration::from_secs(expected));
            now = due;
            breaker.probe_failed(now);
            assert_eq!(breaker.state(), CircuitState::Open);
        }
    }

    #[test]
    fn half_open_then_success_closes() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, BASE, MAX);
        breaker.on_retriable_failure(t0);
        breaker.probe_failed(t0 + BASE);
        breaker.probe_succeeded();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(breaker.next_probe_at(), None);
        breaker.on_success();
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.open_for(t0 + MAX), Duration::ZERO);
        // The next outage starts probing at the base interval again.
        let t1 = t0 + Duration::from_secs(60);
        assert!(breaker.on_retriable_failure(t1));
        assert_eq!(breaker.next_probe_at(), Some(t1 + BASE));
    }

    #[test]
    fn half_open_then_failure_reopens_at_once() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        for _ in 0..3 {
            breaker.on_retriable_failure(t0);
        }
        breaker.probe_succeeded();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        let t1 = t0 + BASE;
        // One failure is enough, not `threshold`.
        assert!(breaker.on_retriable_failure(t1));
        assert_eq!(breaker.state(), CircuitState::Open);
        // It counts as a failed probe: the interval doubled.
        assert_eq!(breaker.next_probe_at(), Some(t1 + 2 * BASE));
    }

    #[test]
    fn probe_results_are_ignored_unless_open() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        breaker.probe_succeeded();
        breaker.probe_failed(t0);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.next_probe_at(), None);
    }

    #[test]
    fn success_while_open_waits_for_the_probe() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, BASE, MAX);
        breaker.on_retriable_failure(t0);
        breaker.on_success();
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.next_probe_at(), Some(t0 + BASE));
    }

    #[test]
    fn open_for_spans_the_whole_outage() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, BASE, MAX);
        assert_eq!(breaker.open_for(t0), Duration::ZERO);
        breaker.on_retriable_failure(t0);
        assert_eq!(
            breaker.open_for(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        breaker.probe_succeeded();
        breaker.on_retriable_failure(t0 + Duration::from_secs(6));
        assert_eq!(
            breaker.open_for(t0 + Duration::from_secs(9)),
            Duration::from_secs(9)
        );
        // A clock reading from before the opening does not underflow.
        assert_eq!(
            breaker.open_for(t0 - Duration::from_millis(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn probe_max_below_probe_base_is_raised() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, Duration::from_secs(4), Duration::from_secs(1));
        breaker.on_retriable_failure(t0);
        breaker.probe_failed(t0);
        assert_eq!(breaker.next_probe_at(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn a_refusal_lasts_until_the_next_success() {
        let t0 = Instant::now();
        let mut breaker = breaker();
        assert_eq!(breaker.refused_for(t0), None);
        assert!(!breaker.on_refused(t0));
        // Other failures in between do not restart the clock.
        breaker.on_retriable_failure(t0 + BASE);
        assert!(
            breaker.on_refused(t0 + 2 * BASE),
            "refusals count towards opening"
        );
        assert_eq!(breaker.refused_for(t0 + 5 * BASE), Some(5 * BASE));
        breaker.probe_succeeded();
        breaker.on_success();
        assert_eq!(breaker.refused_for(t0 + 5 * BASE), None);
    }

    #[test]
    fn huge_intervals_do_not_panic() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, Duration::MAX, Duration::MAX);
        breaker.on_retriable_failure(t0);
        breaker.probe_failed(t0);
        assert!(breaker.next_probe_at().is_some());
    }
}
