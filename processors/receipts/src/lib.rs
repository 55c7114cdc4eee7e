//! The `receipts` processor: each respondent gets one SMS receipt per response (not per
//! revision), as soon as the response is in, to the number they answered on the form's phone
//! question, with a text from the form's MiniJinja template and a short receipt reference.
//!
//! Invariant (docs/design.md, promises 2 and 8): at most one SMS per response, whatever is
//! redelivered, replayed or corrected, across crashes and instances, and nothing another
//! organisation sends stops or doubles it. [`formstream_notify::OnceSms`] keeps it: the runtime's
//! effect ledger (the compacted topic `receipts.ledger`, keyed by the response's whole identity,
//! `<organisation>/<form id>/<response id>`) records `Attempted` before each send and `Done` with the Twilio sid after; an `Attempted`
//! receipt is looked for in Twilio's message list (by recipient and reference) before any
//! re-send. Sends wait for the per-sender rate limit inside the effect, so a full bucket is
//! back-pressure, not a queue.
//!
//! Why the ledger is read whole by every instance, at millions of responses: one entry per
//! receipt sent costs about 200 bytes of memory per instance (1 million receipts: about 200 MB)
//! and is read at start-up (hundreds of thousands of entries per second). That fits the product's
//! scale (hundreds of forms, millions of responses) without new machinery; the alternative, loading
//! only the ledger partitions co-partitioned with an instance's assigned `responses` partitions,
//! needs a hook into the runtime's rebalances that it does not have. Past roughly 5 million
//! receipts per ledger, prune old keys (tombstones; the ledger applies them) or co-partition it.
//!
//! - [`config`]: the flags;
//! - [`action`]: its form action (`receipt`: the template, checked at save time and rendered);
//! - [`receipt`]: the reference and the text;
//! - [`processor`]: the [`Receipts`] processor.

pub mod action;
pub mod config;
pub mod processor;
pub mod receipt;

pub use config::ReceiptsArgs;
pub use processor::Receipts;

use std::sync::Arc;

use formstream_core::forms::FormAction;
use formstream_runtime::{Launch, RuntimeConfig, Shutdown, launch::open_and_run};

impl Launch for Receipts {
    const NAME: &'static str = processor::NAME;
    const ABOUT: &'static str =
        "Text each respondent one SMS receipt per response, rate-limited, never twice";
    type Args = ReceiptsArgs;

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }

    async fn run(
        args: ReceiptsArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        open_and_run(runtime, shutdown, |runtime, shutdown| async move {
            Receipts::open(args, &runtime, shutdown).await
        })
        .await
    }
}
