//! The `notify-collectors` processor: when the validate processor flags a response, the data
//! collector who collected it is told which response, which rules, and how to correct it, by SMS
//! (Twilio, or the outbox file locally) and/or a signed Standard Webhooks POST, as the form
//! version's `notify` settings say.
//!
//! It consumes `response-flags` (read committed: validate writes with transactions), not
//! `responses`: validate's transaction publishes each outcome exactly once, and an SMS or an HTTP
//! call cannot join a Kafka transaction, so the effects live in a processor of their own, with its
//! own group, retries and circuit breaker. A Twilio outage then pauses notifications, never
//! validation.
//!
//! Invariant (docs/design.md, promise 2): per (response id, revision) and channel, at most one SMS
//! and one webhook notification (one `webhook-id`), whatever is redelivered or replayed. The effect
//! ledger ([`formstream_runtime::Ledger`], a compacted topic) records `Attempted` before each
//! effect and `Done` after; an `Attempted` SMS is reconciled against Twilio's message list (by
//! recipient and reference) before any re-send, and an `Attempted` webhook is re-delivered with
//! the same `webhook-id`, which Standard Webhooks receivers deduplicate on.
//!
//! - [`action`]: its form action (`notify`: SMS to the collector, webhook; checked at save time);
//! - [`config`]: flags and the per-organisation webhook secrets file;
//! - [`message`]: the SMS text and the webhook payload;
//! - [`processor`]: the [`NotifyCollectors`] processor.

pub mod action;
pub mod config;
pub mod message;
pub mod processor;

pub use config::{NotifyCollectorsArgs, WebhookSecrets};
pub use processor::NotifyCollectors;

use std::sync::Arc;

use formstream_core::forms::FormAction;
use formstream_runtime::{Launch, RuntimeConfig, Shutdown, launch::open_and_run};

impl Launch for NotifyCollectors {
    const NAME: &'static str = processor::NAME;
    const ABOUT: &'static str =
        "Tell data collectors about flagged responses, by SMS and/or signed webhook, never twice";
    type Args = NotifyCollectorsArgs;

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }

    async fn run(
        args: NotifyCollectorsArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        open_and_run(runtime, shutdown, |runtime, shutdown| async move {
            NotifyCollectors::open(args, &runtime, shutdown).await
        })
        .await
    }
}
