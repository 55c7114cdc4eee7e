//! The `validate` processor: every revision of every response is checked against the business
//! rules of the form version it answered (`formstream_core::rules`, CEL), and its outcome (CLEAN, or
//! FLAGGED with each violated rule) is published to `response-flags`, keyed by form id.
//!
//! Exactly once per (response, revision): the processor is transactional, so the runtime commits
//! each flag together with the consumed offset in one Kafka transaction. A crash or a rebalance
//! redoes only uncommitted records, whose earlier flags (if any were sent) were aborted and are
//! never seen by `read_committed` readers (the flags view, the collector notifier).
//!
//! A rule that cannot be evaluated on a response (a type error, say) flags the response with the
//! error as the violation's reason, so that a person looks at it; it never fails the record. A
//! form version whose rules do not compile (the gateway refuses such forms, so only a form written
//! by something else) is a permanent failure: the record is dead-lettered with the reason; that
//! includes rules beyond the save-time budget (`rule_too_expensive`).
//!
//! One organisation's rules never stall the others' (docs/design.md, promise 8): rules whose time can
//! grow with the answers ([`RuleSet::may_run_long`]) are evaluated on a blocking thread within
//! `--rule-deadline`; past it the response is flagged with a `rule_too_expensive` error on every
//! rule, and while that evaluation still runs on, the next responses of the same form version are
//! flagged at once, so that one form holds at most one thread; and at most
//! `--max-rule-evaluations` such evaluations run at once on the instance, those past their
//! deadline included, so that many forms (or versions) cannot pile up threads either (a response
//! that finds no slot free within its deadline is flagged the same way). Other rule sets
//! (comparisons and arithmetic, microseconds) are evaluated in place.
//!
//! - [`config`]: the flags;
//! - [`action`]: its form action (`rules`: their JSON shape, the save-time check, the stored
//!   rules; the rule engine itself is `formstream_core::rules`);
//! - [`processor`]: the [`Validate`] processor;
//! - [`metrics`]: its own metric (rule evaluations given up, by outcome).

pub mod action;
pub mod config;
pub mod metrics;
pub mod processor;

pub use config::ValidateArgs;
pub use processor::{REVISION_HEADER, Validate};

use std::sync::Arc;

use formstream_core::forms::FormAction;
use formstream_runtime::{Launch, RuntimeConfig, Shutdown};

impl Launch for Validate {
    const NAME: &'static str = processor::NAME;
    const ABOUT: &'static str = "Check every response revision against its form's rules; publish the outcome to the flags topic, exactly once (Kafka transactions)";
    type Args = ValidateArgs;

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }

    async fn run(
        args: ValidateArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let processor = Validate::with_args(&runtime, &args).await?;
        formstream_runtime::run(processor, runtime, None, shutdown).await
    }
}
