//! The validate processor's own metric, served on its /metrics beside the runtime's: rule
//! evaluations it gave up on, so that an operator sees a pathological rule without reading logs.
//!
//! Invariant: the only label is the outcome, from the fixed set below; never an organisation or a
//! form (anyone who can save a form could otherwise grow the series without bound). The logs name
//! the form.

use prometheus::{IntCounter, IntCounterVec, Opts};

/// An evaluation given up at `--rule-deadline`; it runs on in its slot.
pub const PAST_DEADLINE: &str = "past_deadline";
/// Not evaluated: every slot (`--max-rule-evaluations`) stayed busy through the deadline.
pub const NO_SLOT: &str = "no_slot";
/// Not evaluated: the same form version's rules still run past their deadline on an earlier
/// response.
pub const STILL_RUNNING: &str = "still_running";

/// Responses flagged with `rule_too_expensive` without a finished evaluation, by outcome.
#[derive(Clone)]
pub struct Unevaluated {
    all: IntCounterVec,
    pub past_deadline: IntCounter,
    pub no_slot: IntCounter,
    pub still_running: IntCounter,
}

impl Unevaluated {
    pub fn new() -> Self {
        let all = IntCounterVec::new(
            Opts::new(
                "formstream_validate_rule_evaluations_abandoned_total",
                "Responses flagged rule_too_expensive because their rules' evaluation was given up at its deadline or never started, by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        Unevaluated {
            past_deadline: all.with_label_values(&[PAST_DEADLINE]),
            no_slot: all.with_label_values(&[NO_SLOT]),
            still_running: all.with_label_values(&[STILL_RUNNING]),
            all,
        }
    }

    /// The metric, for the runtime's registry.
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.all.clone())
    }
}

impl Default for Unevaluated {
    fn default() -> Self {
        Self::new()
    }
}
