//! `formstream process slang`: where the index lives, how often it commits, and where the search
//! API listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use formstream_core::api::HttpLimits;
use formstream_core::config::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct SlangArgs {
    /// Directory of the slang index (created if missing). Delete it, with the processor stopped,
    /// to rebuild the index from the responses topic.
    // Beside the journal's file in the local data directory; a volume of its own in production.
    #[arg(
        long,
        env = "FORMSTREAM_SLANG_INDEX_DIR",
        default_value = ".local/slang-index"
    )]
    pub index_dir: PathBuf,

    /// Address of the search API.
    // Next to the gateway's 8080, clear of the processors' metrics ports (9464 and up).
    #[arg(
        long,
        env = "FORMSTREAM_SLANG_SEARCH_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub search_listen: SocketAddr,

    /// The search API's limits on slow clients (the gateway's flags).
    #[command(flatten)]
    pub http: HttpLimits,

    /// TOML file of API keys (SHA-256 hashes) per organisation: the gateway's file.
    #[arg(
        long,
        env = "FORMSTREAM_API_KEYS_FILE",
        default_value = "deploy/local/api-keys.toml"
    )]
    pub api_keys_file: PathBuf,

    /// Longest time between index commits: how long an indexed answer may take to become
    /// searchable, and how much a crash makes the index redo.
    // A commit flushes segments to disk; a few per second at most keeps merging cheap.
    // Not `--commit-interval`: that is the runtime's (group commits), flattened beside these.
    #[arg(long = "index-commit-interval", env = "FORMSTREAM_SLANG_COMMIT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub index_commit_interval: Duration,

    /// Records handled after which the index commits before the interval is up (during a
    /// backfill, so that a crash redoes a bounded amount).
    #[arg(
        long = "index-commit-records",
        env = "FORMSTREAM_SLANG_COMMIT_RECORDS",
        default_value_t = 200_000
    )]
    pub index_commit_records: u64,

    /// Tantivy's indexing memory budget in bytes, shared by its indexing threads.
    // 128 MiB: within a few percent of the throughput of larger budgets on short answers, and
    // small enough to run beside the other processors in `formstream dev`.
    #[arg(
        long,
        env = "FORMSTREAM_SLANG_WRITER_MEMORY",
        default_value_t = 134_217_728
    )]
    pub writer_memory: usize,

    /// Most records indexed per batch.
    #[arg(long, env = "FORMSTREAM_SLANG_BATCH_SIZE", default_value_t = 512)]
    pub index_batch_size: usize,
}
