//! The journal processor: [`Journal`] appends one JSON line per response revision to a local file,
//! durably (one `fsync` per batch), and can inject faults (retriable, permanent, slowness, an
//! outage). It is the runtime's test processor and a real "archive responses to a file" processor.
//!
//! Modules: [`config`] (its flags), [`journal`] (the effect), [`action`] (its form action, which
//! adds chosen answers to a form's lines), `tests` (unit tests).
//!
//! Invariant: a record's offset may be committed only once its line is synced to disk.

pub mod action;
pub mod config;
pub mod journal;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use formstream_core::forms::FormAction;
use formstream_runtime::{Launch, RuntimeConfig, Shutdown};

pub use config::JournalArgs;
pub use journal::Journal;

impl Launch for Journal {
    const NAME: &'static str = "journal";
    const ABOUT: &'static str =
        "Archive every response revision to a local JSON-lines file (and inject faults, for tests)";
    type Args = JournalArgs;

    async fn run(
        args: JournalArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        formstream_runtime::run(Journal::open(args)?, runtime, None, shutdown).await
    }

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }
}
