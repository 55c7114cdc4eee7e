//! The flags of `formstream process sheets`.
//!
//! Invariant: every flag has a `FORMSTREAM_SHEETS_*` twin and a default that says why; the
//! credentials path is read, never logged (its contents travel only inside [`crate::auth`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use formstream_core::config::parse_duration;
use formstream_core::organisations::OrganisationsArgs;
use formstream_runtime::LedgerArgs;

/// `formstream process sheets`: where rows go, and the quotas that bound how fast.
#[derive(Debug, Clone, Args)]
pub struct SheetsArgs {
    /// Google service-account key file (JSON, with `client_email`, `private_key` and
    /// `token_uri`). Unset: rows go to local CSV files in --sheets-dir instead.
    #[arg(long, env = "FORMSTREAM_SHEETS_CREDENTIALS")]
    pub sheets_credentials: Option<PathBuf>,

    /// Base URL of the Sheets API (a fake or a proxy in tests).
    #[arg(
        long,
        env = "FORMSTREAM_SHEETS_BASE_URL",
        default_value = "https://sheets.googleapis.com"
    )]
    pub sheets_base_url: String,

    /// Folder of the local spreadsheet files (one `<organisation>/<form id>.csv` per form), used
    /// without credentials.
    // Beside the SMS outbox's `data/`: the local defaults live together.
    #[arg(long, env = "FORMSTREAM_SHEETS_DIR", default_value = "data/sheets")]
    pub sheets_dir: PathBuf,

    /// Write requests per minute (appends, updates, new tabs and spreadsheets), for all forms.
    // Google's quota per user (service account) per project.
    #[arg(
        long,
        env = "FORMSTREAM_SHEETS_WRITES_PER_MINUTE",
        default_value_t = 60
    )]
    pub sheets_writes_per_minute: u32,

    /// Read requests per minute (the read-back of a spreadsheet's response ids).
    // Google's read quota per user per project.
    #[arg(long, env = "FORMSTREAM_SHEETS_READS_PER_MINUTE", default_value_t = 60)]
    pub sheets_reads_per_minute: u32,

    /// Largest request body, in bytes; a bigger batch is split.
    // Google recommends at most 2 MB per request.
    #[arg(
        long,
        env = "FORMSTREAM_SHEETS_MAX_REQUEST_BYTES",
        default_value_t = 2_000_000
    )]
    pub sheets_max_request_bytes: usize,

    /// How long a form's first pending row waits for more before its batch is written. Under
    /// load, batches grow anyway while they wait for the write quota.
    // Long enough to gather a burst into one write, short for a spreadsheet watched live.
    #[arg(long, env = "FORMSTREAM_SHEETS_LINGER", default_value = "1s", value_parser = parse_duration)]
    pub sheets_linger: Duration,

    /// A form whose oldest pending row has waited this long is written next, even while bigger
    /// batches of busier forms are waiting (fairness for quiet forms).
    // Below the runtime's retry budget by far; a minute of delay is acceptable for a report.
    #[arg(long, env = "FORMSTREAM_SHEETS_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub sheets_max_wait: Duration,

    /// Cells per spreadsheet (all tabs) before the export continues in a new spreadsheet.
    // Google's limit per spreadsheet.
    #[arg(
        long,
        env = "FORMSTREAM_SHEETS_CELL_LIMIT",
        default_value_t = 10_000_000
    )]
    pub sheets_cell_limit: u64,

    /// Longest wait for one Sheets API answer; a timed-out write is checked by reading back.
    // Appends of 2 MB take seconds; a minute leaves margin without hiding a hung connection.
    #[arg(long, env = "FORMSTREAM_SHEETS_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub sheets_timeout: Duration,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    #[command(flatten)]
    pub organisations: OrganisationsArgs,
}
