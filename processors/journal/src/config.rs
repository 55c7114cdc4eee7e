//! Flags of the journal processor. Every flag has an `env` twin (`FORMSTREAM_JOURNAL_...`) and a
//! doc comment (its `--help`, and its entry in docs/configuration.md); every default says why it
//! is the default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use formstream_core::config::parse_duration;

/// `formstream process journal`: where the journal goes, and the faults to inject.
#[derive(Debug, Clone, Args)]
pub struct JournalArgs {
    /// File the journal appends to (one JSON line per response revision); created with its
    /// parent folders when missing.
    // Under .local/, which git ignores, next to the other local state.
    #[arg(
        long,
        env = "FORMSTREAM_JOURNAL_PATH",
        default_value = ".local/journal.jsonl"
    )]
    pub journal_path: PathBuf,

    /// Fault injection: the first N attempts of every record fail retriably.
    // 0: a real journal does not fail on purpose.
    #[arg(long, env = "FORMSTREAM_JOURNAL_FAIL_ATTEMPTS", default_value_t = 0)]
    pub fail_attempts: u32,

    /// Fault injection: a record with an answer whose text equals TEXT fails permanently (and is
    /// dead-lettered).
    #[arg(
        long,
        env = "FORMSTREAM_JOURNAL_FAIL_PERMANENTLY_WHEN",
        value_name = "TEXT"
    )]
    pub fail_permanently_when: Option<String>,

    /// Fault injection: sleep this long per batch before writing (a slow target).
    // 0ms: no artificial slowness.
    #[arg(long, env = "FORMSTREAM_JOURNAL_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,

    /// Fault injection: while this file exists, every record fails retriably and the probe fails
    /// (the target is down); remove it to end the outage.
    #[arg(long, env = "FORMSTREAM_JOURNAL_OUTAGE_FILE", value_name = "PATH")]
    pub outage_file: Option<PathBuf>,

    /// Most records written (and synced once) per batch.
    // 256 lines of ~250 bytes is one 64 KiB write and one fsync: the fsync dominates either way.
    #[arg(long, env = "FORMSTREAM_JOURNAL_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
}
