//! The `sheets` processor: every response of a form with a sheets action becomes one row of a
//! Google spreadsheet (or, without credentials, of a local CSV file), one column per question;
//! a correction rewrites its row in place.
//!
//! Invariant (docs/design.md, promise 2): per response id, at most one row, holding the highest
//! revision handled; the spreadsheet itself is read back to know which rows exist, so redelivered
//! records, crashes between a write and the offset commit, and partitions moving between
//! instances never add a second row (see [`google`] for the reasoning and its one stated limit).
//!
//! - [`action`], its form action (`sheets`: which spreadsheet, checked at save time);
//! - [`config`], flags;
//! - [`layout`], columns, header and row of a response;
//! - [`auth`], service-account OAuth (JWT bearer grant);
//! - [`api`], the Sheets API v4 client, its quotas and error classes;
//! - [`google`], the spreadsheet target (read-back, append, update in place, rollover);
//! - [`local`], the CSV target;
//! - [`batcher`], batches per form within quota and size bounds;
//! - [`sink`], what the batcher hands a target;
//! - [`processor`], the [`Sheets`] processor.

pub mod action;
pub mod api;
pub mod auth;
pub mod batcher;
pub mod config;
pub mod google;
pub mod layout;
pub mod local;
pub mod processor;
pub mod sink;

pub use config::SheetsArgs;
pub use processor::{NAME, Sheets};

use std::sync::Arc;

use formstream_core::forms::FormAction;
use formstream_runtime::{Launch, RuntimeConfig, Shutdown, launch::open_and_run};

impl Launch for Sheets {
    const NAME: &'static str = processor::NAME;
    const ABOUT: &'static str = "Export every response of forms with a sheets action as one spreadsheet row (Google Sheets, or local CSV files without credentials), exactly once, corrections in place";
    type Args = SheetsArgs;

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }

    async fn run(
        args: SheetsArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        open_and_run(runtime, shutdown, |runtime, shutdown| async move {
            Sheets::open(args, &runtime, shutdown).await
        })
        .await
    }
}
