//! A circuit per target. A processor names the targets each record's effect writes to (a webhook
//! receiver, a spreadsheet, a Twilio account: [`crate::Processor::targets`]); a target whose
//! effects keep failing gets its circuit opened, and only the records that go to it wait (the
//! engine keeps them, see `engine::waiting`) while the records of every other target flow. Its
//! probe (the processor's [`crate::Processor::probe_target`]) is asked on the breaker's schedule;
//! once it answers, waiting records are let through one at a time until one succeeds and closes
//! the circuit. A target that refuses access ([`crate::Failure::Forbidden`]) for longer than
//! `--forbidden-timeout` no longer holds its records: they are tried, and dead-lettered with the
//! reason.
//!
//! Invariant: a target's identity is (organisation, kind, address), so that a circuit changes only
//! through the outcomes of its own organisation's records (and its own probes): nothing one
//! organisation's records do opens, closes or holds another organisation's circuit, even for the
//! same address. A circuit is kept only while its target has failures since its last success
//! (memory is bounded by the targets failing now), and while every circuit is closed a worker
//! asks nothing of this module but one atomic load.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};
use tokio::time::Instant;

use crate::circuit::{CircuitBreaker, CircuitState};

/// Most targets one record's effect writes to (the notify-collectors processor has two: the
/// collector's SMS and the form's webhook).
pub const MAX_TARGETS: usize = 4;

/// How long a circuit that holds nothing back is kept after its target's last failure: a closed
/// one whose target failed a few times (fewer than the threshold), long enough to count a slow
/// trickle of failures towards opening; a half-open one, whose target answered its probe and then
/// got no record to try (trials go one per `--probe-base` while records wait). Short enough that
/// the circuits of targets that went quiet are forgotten, rather than reported open for ever.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A target one record's effect writes to, as [`crate::Processor::targets`] names it, borrowing
/// from the record and the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRef<'a> {
    /// The organisation the record belongs to: part of the target's identity.
    pub organisation: &'a str,
    /// What kind of target (`webhook`, `spreadsheet`, `twilio`): a small fixed set, since it is a
    /// metric label.
    pub kind: &'static str,
    /// Which one: what the processor needs to probe it (a URL, a spreadsheet id, an account
    /// SID). Never a metric label, and never logged as such (see
    /// [`crate::Processor::target_name`]).
    pub address: &'a str,
}

// Hashes exactly as `Target` does (field by field, strings as `str`), so that a `TargetRef` finds
// its `Target` in a map without building one.
impl Hash for TargetRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.organisation.hash(state);
        self.kind.hash(state);
        self.address.hash(state);
    }
}

/// The targets of one record (at most [`MAX_TARGETS`]), held inline: no allocation, and nothing
/// to drop, so it borrows the record only as long as it is used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Targets<'a> {
    items: [Option<TargetRef<'a>>; MAX_TARGETS],
    len: usize,
}

impl<'a> Targets<'a> {
    /// No target: the record's failures count against the processor's one circuit.
    #[inline]
    pub fn none() -> Self {
        Targets {
            items: [None; MAX_TARGETS],
            len: 0,
        }
    }

    /// One target.
    pub fn one(target: TargetRef<'a>) -> Self {
        Targets::none().and(target)
    }

    /// These targets and `target` (beyond [`MAX_TARGETS`], ignored).
    pub fn and(mut self, target: TargetRef<'a>) -> Self {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(target);
                self.len += 1;
            }
            None => tracing::warn!(
                kind = target.kind,
                "A record names more than {MAX_TARGETS} targets; the rest share no circuit."
            ),
        }
        self
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &TargetRef<'a>> {
        self.items.iter().flatten()
    }

    /// The targets a failure is about: those of its kind, when it names one; none otherwise
    /// (it counts against the processor's one circuit).
    pub fn of_kind(&self, kind: Option<&'static str>) -> impl Iterator<Item = &TargetRef<'a>> {
        self.iter().filter(move |target| Some(target.kind) == kind)
    }
}

/// A target, owned: kept by its circuit, and handed to the processor's probe.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    organisation: Box<str>,
    kind: &'static str,
    address: Box<str>,
}

impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.to_ref().hash(state);
    }
}

impl Target {
    pub fn new(target: TargetRef<'_>) -> Self {
        Target {
            organisation: target.organisation.into(),
            kind: target.kind,
            address: target.address.into(),
        }
    }

    pub fn organisation(&self) -> &str {
        &self.organisation
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The target, borrowed.
    pub fn to_ref(&self) -> TargetRef<'_> {
        TargetRef {
            organisation: &self.organisation,
            kind: self.kind,
            address: &self.address,
        }
    }
}

/// The address is left out: it may carry a secret (a webhook URL's token).
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("organisation", &self.organisation)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Equivalent<Arc<Target>> for TargetRef<'_> {
    fn equivalent(&self, key: &Arc<Target>) -> bool {
        *self == key.to_ref()
    }
}

/// One target's circuit.
struct Circuit {
    /// Kept with the circuit: the engine holds its waiting records under it, and its probe needs
    /// it.
    target: Arc<Target>,
    breaker: CircuitBreaker,
    /// How the processor names the target in logs.
    name: String,
    /// A probe of the target is running.
    probing: bool,
    /// While half-open: when a waiting record was last let through to try the target.
    trial_at: Option<Instant>,
    /// When the target last failed, to forget a closed circuit whose target went quiet.
    last_failure: Instant,
}

impl Circuit {
    /// Whether records of the target wait: the circuit is open, unless the target has refused
    /// access for longer than `forbidden_timeout` (its records then run, to be dead-lettered).
    fn holds(&self, now: Instant, forbidden_timeout: Duration) -> bool {
        self.breaker.state() == CircuitState::Open
            && self
                .breaker
                .refused_for(now)
                .is_none_or(|refused| refused < forbidden_timeout)
    }
}

/// What a failure did to its target's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// The circuit is open now: the record waits for it.
    pub holds: bool,
    /// How long the target has refused access, when it does.
    pub refused_for: Option<Duration>,
}

/// Which waiting records of a target the engine lets go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// None: the circuit is open.
    None,
    /// One, to try the target (the circuit is half-open).
    One,
    /// All: the circuit closed, or the target has refused access past the timeout.
    All,
}

/// The settings of every target's circuit.
#[derive(Debug, Clone, Copy)]
pub struct CircuitSettings {
    pub threshold: u32,
    pub probe_base: Duration,
    pub probe_max: Duration,
    /// How long a target may refuse access before its records are dead-lettered.
    pub forbidden_timeout: Duration,
}

/// The circuits of every target that failed lately; shared by the workers (which report outcomes
/// and ask whether a record must wait) and the engine (which keeps the waiting records, runs the
/// probes and lets records go).
pub struct TargetCircuits {
    circuits: Mutex<HashMap<Arc<Target>, Circuit, foldhash::fast::RandomState>>,
    /// Circuits that are not closed. While 0, no record waits and the map is not looked at.
    not_closed: AtomicUsize,
    /// Circuits kept. While 0, a success changes nothing and the map is not looked at.
    kept: AtomicUsize,
    settings: CircuitSettings,
}

impl TargetCircuits {
    pub fn new(settings: CircuitSettings) -> Self {
        TargetCircuits {
            circuits: Mutex::new(HashMap::default()),
            not_closed: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            settings,
        }
    }

    pub fn settings(&self) -> CircuitSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<Target>, Circuit, foldhash::fast::RandomState>> {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` on a circuit and keeps the counters right.
    fn update<T>(&self, circuit: &mut Circuit, change: impl FnOnce(&mut Circuit) -> T) -> T {
        let was_closed = circuit.breaker.state() == CircuitState::Closed;
        let out = change(circuit);
        let is_closed = circuit.breaker.state() == CircuitState::Closed;
        match (was_closed, is_closed) {
            (true, false) => {
                self.not_closed.fetch_add(1, Ordering::AcqRel);
            }
            (false, true) => {
                self.not_closed.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        out
    }

    /// The first of `targets` whose circuit holds its records back, if any. Without a lock (one
    /// atomic load) while every circuit is closed, and without even that for no target.
    #[inline]
    pub fn holding(&self, targets: &Targets<'_>) -> Option<Arc<Target>> {
        if targets.is_empty() || self.not_closed.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.holding_now(targets)
    }

    fn holding_now(&self, targets: &Targets<'_>) -> Option<Arc<Target>> {
        let now = Instant::now();
        let circuits = self.lock();
        targets.iter().find_map(|target| {
            let circuit = circuits.get(target)?;
            circuit
                .holds(now, self.settings.forbidden_timeout)
                .then(|| circuit.target.clone())
        })
    }

    /// A record's effect succeeded: its targets' failures are forgotten, and a half-open circuit
    /// closes. Without a lock while no circuit is kept.
    #[inline]
    pub fn succeeded(&self, targets: &Targets<'_>) {
        if targets.is_empty() || self.kept.load(Ordering::Acquire) == 0 {
            return;
        }
        self.succeeded_now(targets);
    }

    fn succeeded_now(&self, targets: &Targets<'_>) {
        let mut circuits = self.lock();
        for target in targets.iter() {
            let Some(circuit) = circuits.get_mut(target) else {
                continue;
            };
            let was = circuit.breaker.state();
            self.update(circuit, |c| c.breaker.on_success());
            match circuit.breaker.state() {
                CircuitState::Closed => {
                    if was != CircuitState::Closed {
                        tracing::info!(
                            organisation = %target.organisation,
                            kind = target.kind,
                            target = %circuit.name,
                            "Circuit closed: the target answers again; its records flow."
                        );
                    }
                    circuits.remove(target);
                    self.kept.fetch_sub(1, Ordering::AcqRel);
                }
                // Open: a record that was under way when the circuit opened; the probe decides.
                CircuitState::Open | CircuitState::HalfOpen => {}
            }
        }
    }

    /// A record's effect failed at `target` at `now` (`refused`: access was refused). `name`
    /// names the target in logs, asked once, when its circuit is first kept.
    pub fn failed(
        &self,
        target: TargetRef<'_>,
        refused: bool,
        now: Instant,
        name: impl FnOnce(&Target) -> String,
    ) -> Failed {
        let mut circuits = self.lock();
        if !circuits.contains_key(&target) {
            let owned = Arc::new(Target::new(target));
            let circuit = Circuit {
                name: name(&owned),
                target: owned.clone(),
                breaker: CircuitBreaker::new(
                    self.settings.threshold,
                    self.settings.probe_base,
                    self.settings.probe_max,
                ),
                probing: false,
                trial_at: None,
                last_failure: now,
            };
            circuits.insert(owned, circuit);
            self.kept.fetch_add(1, Ordering::AcqRel);
        }
        // Inserted above if it was missing, under the same lock.
        let Some(circuit) = circuits.get_mut(&target) else {
            return Failed {
                holds: false,
                refused_for: None,
            };
        };
        circuit.last_failure = now;
        let opened = self.update(circuit, |c| {
            if refused {
                c.breaker.on_refused(now)
            } else {
                c.breaker.on_retriable_failure(now)
            }
        });
        if opened {
            tracing::warn!(
                organisation = %target.organisation,
                kind = target.kind,
                target = %circuit.name,
                refused,
                "Circuit open for a target: its records wait while the others flow; probing it."
            );
        }
        Failed {
            holds: circuit.holds(now, self.settings.forbidden_timeout),
            refused_for: circuit.breaker.refused_for(now),
        }
    }

    /// The open circuits whose probe is due at `now`, marked as being probed: the caller probes
    /// each and reports with [`TargetCircuits::probed`].
    pub fn due_probes(&self, now: Instant) -> Vec<Arc<Target>> {
        if self.not_closed.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut circuits = self.lock();
        let mut due = Vec::new();
        for circuit in circuits.values_mut() {
            if !circuit.probing
                && circuit.breaker.state() == CircuitState::Open
                && circuit.breaker.next_probe_at().is_some_and(|at| at <= now)
            {
                circuit.probing = true;
                due.push(circuit.target.clone());
            }
        }
        due
    }

    /// The outcome of a probe of `target`: an answer half-opens its circuit (waiting records are
    /// let through one at a time), a failure keeps it open for a longer interval.
    pub fn probed(&self, target: &Target, outcome: &anyhow::Result<()>, now: Instant) {
        let mut circuits = self.lock();
        let Some(circuit) = circuits.get_mut(&target.to_ref()) else {
            return;
        };
        circuit.probing = false;
        match outcome {
            Ok(()) => {
                self.update(circuit, |c| c.breaker.probe_succeeded());
                if circuit.breaker.state() == CircuitState::HalfOpen {
                    circuit.trial_at = None;
                    tracing::info!(
                        organisation = %target.organisation(),
                        kind = target.kind(),
                        target = %circuit.name,
                        "The target answered its probe: trying one of its records."
                    );
                }
            }
            Err(error) => {
                tracing::info!(
                    organisation = %target.organisation(),
                    kind = target.kind(),
                    target = %circuit.name,
                    error = %formstream_core::redact::scrubbed(&format!("{error:#}")),
                    "Probe failed; the target's circuit stays open."
                );
                self.update(circuit, |c| c.breaker.probe_failed(now));
            }
        }
    }

    /// Which of `target`'s waiting records to let go at `now`: all once its circuit closed (or
    /// was forgotten) or it refused access past the timeout; one per `probe_base` while
    /// half-open (the first success closes the circuit); none while open.
    pub fn release(&self, target: &Target, now: Instant) -> Release {
        let mut circuits = self.lock();
        let Some(circuit) = circuits.get_mut(&target.to_ref()) else {
            return Release::All;
        };
        match circuit.breaker.state() {
            CircuitState::Closed => Release::All,
            CircuitState::Open if circuit.holds(now, self.settings.forbidden_timeout) => {
                Release::None
            }
            CircuitState::Open => Release::All,
            CircuitState::HalfOpen => {
                let due = circuit
                    .trial_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.settings.probe_base);
                if due {
                    circuit.trial_at = Some(now);
                    Release::One
                } else {
                    Release::None
                }
            }
        }
    }

    /// Forgets the circuits that hold nothing back (closed, or half-open) and whose target has
    /// not failed for [`FORGET_AFTER`]: a circuit is kept only for a target failing lately.
    pub fn forget_idle(&self, now: Instant) {
        if self.kept.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut circuits = self.lock();
        let (mut forgotten, mut half_open) = (0, 0);
        circuits.retain(|_, circuit| {
            let state = circuit.breaker.state();
            let keep = state == CircuitState::Open
                || now.saturating_duration_since(circuit.last_failure) < FORGET_AFTER;
            if !keep {
                forgotten += 1;
                half_open += usize::from(state == CircuitState::HalfOpen);
            }
            keep
        });
        self.kept.fetch_sub(forgotten, Ordering::AcqRel);
        self.not_closed.fetch_sub(half_open, Ordering::AcqRel);
    }

    /// Circuits not closed (open or half-open), by target kind.
    pub fn not_closed_by_kind(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        if self.not_closed.load(Ordering::Acquire) == 0 {
            return counts;
        }
        for circuit in self.lock().values() {
            if circuit.breaker.state() == CircuitState::Closed {
                continue;
            }
            let kind = circuit.target.kind;
            match counts.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, count)) => *count += 1,
                None => counts.push((kind, 1)),
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn circuits() -> TargetCircuits {
        TargetCircuits::new(CircuitSettings {
            threshold: 2,
            probe_base: BASE,
            probe_max: Duration::from_secs(8),
            forbidden_timeout: TIMEOUT,
        })
    }

    fn hook(organisation: &str) -> TargetRef<'_> {
        TargetRef {
            organisation,
            kind: "webhook",
            address: "https://hooks.example/in",
        }
    }

    fn name(target: &Target) -> String {
        format!("{} hook", target.organisation())
    }

    fn fail(circuits: &TargetCircuits, target: TargetRef<'_>, now: Instant) -> Failed {
        circuits.failed(target, false, now, name)
    }

    #[test]
    fn a_target_ref_finds_its_target() {
        let mut map: HashMap<Arc<Target>, u8, foldhash::fast::RandomState> = HashMap::default();
        map.insert(Arc::new(Target::new(hook("a"))), 1);
        assert_eq!(map.get(&hook("a")), Some(&1));
        assert_eq!(map.get(&hook("b")), None);
    }

    #[test]
    fn nothing_is_held_while_every_circuit_is_closed() {
        let circuits = circuits();
        assert_eq!(circuits.holding(&Targets::one(hook("a"))), None);
        assert_eq!(circuits.holding(&Targets::none()), None);
        // Below the threshold: kept, still closed.
        let failed = fail(&circuits, hook("a"), Instant::now());
        assert!(!failed.holds);
        assert_eq!(circuits.holding(&Targets::one(hook("a"))), None);
    }

    #[test]
    fn one_organisations_failures_never_open_anothers_circuit() {
        let circuits = circuits();
        let now = Instant::now();
        fail(&circuits, hook("a"), now);
        assert!(fail(&circuits, hook("a"), now).holds);
        let held = circuits
            .holding(&Targets::one(hook("a")))
            .expect("a's circuit holds");
        assert_eq!(held.organisation(), "a");
        // The same address, another organisation: untouched.
        assert_eq!(circuits.holding(&Targets::one(hook("b"))), None);
        assert!(
            !fail(&circuits, hook("b"), now).holds,
            "b's own count starts at 1"
        );
        // A record of both targets waits for the open one.
        let both = Targets::one(hook("b")).and(hook("a"));
        assert_eq!(
            circuits.holding(&both).map(|t| t.organisation().to_owned()),
            Some("a".to_owned())
        );
        assert_eq!(circuits.not_closed_by_kind(), vec![("webhook", 1)]);
    }

    #[test]
    fn the_probe_half_opens_one_trial_at_a_time_and_a_success_closes() {
        let circuits = circuits();
        let t0 = Instant::now();
        fail(&circuits, hook("a"), t0);
        fail(&circuits, hook("a"), t0);
        let target = Target::new(hook("a"));
        assert_eq!(circuits.release(&target, t0), Release::None);
        assert!(
            circuits.due_probes(t0).is_empty(),
            "not due before probe_base"
        );
        let due = circuits.due_probes(t0 + BASE);
        assert_eq!(due.len(), 1);
        assert!(
            circuits.due_probes(t0 + BASE).is_empty(),
            "a probe already runs"
        );
        circuits.probed(&due[0], &Ok(()), t0 + BASE);
        // Half-open: one record now, the next one probe_base later at the earliest.
        assert_eq!(circuits.release(&target, t0 + BASE), Release::One);
        assert_eq!(circuits.release(&target, t0 + BASE), Release::None);
        assert_eq!(circuits.release(&target, t0 + 2 * BASE), Release::One);
        // Records of a half-open target do not wait.
        assert_eq!(circuits.holding(&Targets::one(hook("a"))), None);
        circuits.succeeded(&Targets::one(hook("a")));
        assert_eq!(circuits.release(&target, t0 + 2 * BASE), Release::All);
        assert!(circuits.not_closed_by_kind().is_empty());
        assert_eq!(
            circuits.kept.load(Ordering::Acquire),
            0,
            "forgotten once closed"
        );
    }

    #[test]
    fn a_failed_probe_keeps_the_circuit_open_longer() {
        let circuits = circuits();
        let t0 = Instant::now();
        fail(&circuits, hook("a"), t0);
        fail(&circuits, hook("a"), t0);
        let due = circuits.due_probes(t0 + BASE);
        circuits.probed(&due[0], &Err(anyhow::anyhow!("refused")), t0 + BASE);
        assert!(circuits.due_probes(t0 + 2 * BASE).is_empty());
        assert_eq!(circuits.due_probes(t0 + 3 * BASE).len(), 1);
        assert_eq!(
            circuits.release(&Target::new(hook("a")), t0 + 3 * BASE),
            Release::None
        );
    }

    #[test]
    fn a_failed_trial_reopens() {
        let circuits = circuits();
        let t0 = Instant::now();
        fail(&circuits, hook("a"), t0);
        fail(&circuits, hook("a"), t0);
        let due = circuits.due_probes(t0 + BASE);
        circuits.probed(&due[0], &Ok(()), t0 + BASE);
        assert!(fail(&circuits, hook("a"), t0 + BASE).holds);
        assert!(circuits.holding(&Targets::one(hook("a"))).is_some());
    }

    #[test]
    fn a_target_refusing_access_past_the_timeout_lets_its_records_go() {
        let circuits = circuits();
        let t0 = Instant::now();
        let refuse = |now| circuits.failed(hook("a"), true, now, name);
        assert_eq!(refuse(t0).refused_for, Some(Duration::ZERO));
        assert!(refuse(t0 + BASE).holds);
        let target = Target::new(hook("a"));
        assert_eq!(circuits.release(&target, t0 + BASE), Release::None);
        // Past the timeout: the records are let go (to be dead-lettered), and no longer wait.
        let late = t0 + TIMEOUT;
        assert_eq!(circuits.release(&target, late), Release::All);
        let failed = refuse(late);
        assert!(!failed.holds);
        assert_eq!(failed.refused_for, Some(TIMEOUT));
        // A success ends the refusal: the next one starts the clock again.
        circuits.succeeded(&Targets::one(hook("a")));
        assert_eq!(refuse(late).refused_for, Some(Duration::ZERO));
    }

    #[test]
    fn circuits_of_quiet_targets_are_forgotten_unless_open() {
        let circuits = circuits();
        let t0 = Instant::now();
        let c = TargetRef {
            organisation: "c",
            ..hook("c")
        };
        fail(&circuits, hook("a"), t0);
        for target in [hook("b"), c, hook("b"), c] {
            fail(&circuits, target, t0);
        }
        // c's target answers its probe, and no record comes to try it.
        let due = circuits.due_probes(t0 + BASE);
        let probed = due.iter().find(|t| t.organisation() == "c").expect("c");
        circuits.probed(probed, &Ok(()), t0 + BASE);
        assert_eq!(circuits.not_closed_by_kind(), vec![("webhook", 2)]);
        circuits.forget_idle(t0 + FORGET_AFTER);
        // a (closed) and c (half-open) are forgotten; b (open, probes failing) is kept.
        assert_eq!(circuits.kept.load(Ordering::Acquire), 1);
        assert_eq!(circuits.not_closed.load(Ordering::Acquire), 1);
        assert_eq!(circuits.not_closed_by_kind(), vec![("webhook", 1)]);
        assert!(circuits.holding(&Targets::one(hook("b"))).is_some());
    }

    #[test]
    fn a_failure_names_its_targets_by_kind() {
        let sms = TargetRef {
            organisation: "a",
            kind: "twilio",
            address: "AC1",
        };
        let targets = Targets::one(sms).and(hook("a"));
        let kinds: Vec<_> = targets.of_kind(Some("webhook")).map(|t| t.kind).collect();
        assert_eq!(kinds, vec!["webhook"]);
        assert_eq!(targets.of_kind(None).count(), 0);
    }

    #[test]
    fn the_address_never_prints() {
        let target = Target::new(TargetRef {
            organisation: "a",
            kind: "webhook",
            address: "https://hooks.example/secret-token",
        });
        assert!(!format!("{target:?}").contains("secret-token"));
    }
}
