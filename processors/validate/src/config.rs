//! The flags of `formstream process validate`: how long rules that may run long get, and how many
//! of their evaluations may run at once.
//!
//! Invariant: every flag has a default that keeps one organisation's rules from stalling the
//! others (see the crate header).

use std::time::Duration;

use clap::Args;
use formstream_core::config::parse_duration;

/// The validate processor's own flags.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Longest one response's rules may run when their time can grow with the answers
    /// (comprehensions, `matches`, joined strings); past it the response is flagged with a
    /// `rule_too_expensive` error instead of waiting, and the other forms keep flowing.
    // Within the budget such rules take well under a millisecond; a second is far beyond any
    // honest rule yet short enough that a pathological one costs the flags little.
    #[arg(long, env = "FORMSTREAM_RULE_DEADLINE", default_value = "1s", value_parser = parse_duration)]
    pub rule_deadline: Duration,

    /// Most evaluations of long-running rules (see --rule-deadline) on blocking threads at once,
    /// those running past their deadline included: a response that finds none free within its
    /// deadline is flagged with a `rule_too_expensive` error instead of starting another thread.
    // Within the budget such rules take microseconds, so a few threads serve any honest load; 8
    // bounds what pathological rules of many forms (or versions) can hold.
    #[arg(long, env = "FORMSTREAM_MAX_RULE_EVALUATIONS", default_value_t = 8)]
    pub max_rule_evaluations: usize,
}

impl Default for ValidateArgs {
    fn default() -> Self {
        ValidateArgs {
            rule_deadline: Duration::from_secs(1),
            max_rule_evaluations: 8,
        }
    }
}
