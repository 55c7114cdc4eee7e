//! The flags of `formstream process receipts`.
//!
//! Invariant: a configuration that cannot send (half-configured Twilio, a rate that is not a
//! positive number) stops the processor at start-up, never at the first receipt.

use clap::Args;
use formstream_notify::SmsArgs;
use formstream_runtime::LedgerArgs;

/// `formstream process receipts`: where receipts go, how fast, and where the ledger lives.
#[derive(Debug, Clone, Args)]
pub struct ReceiptsArgs {
    #[command(flatten)]
    pub sms: SmsArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Most SMS segments per second this instance sends (a 2-segment receipt counts twice), as
    /// Twilio counts a sender's throughput: 1 for a US long code, 3 or more toll-free, about 100
    /// for a short code. With several instances on one sender, give each its share. Receipts
    /// beyond it wait in flight (back-pressure), never in Twilio's queue.
    // A US long code's rate, the slowest common sender: a default that never overruns a sender.
    #[arg(long, env = "FORMSTREAM_RECEIPTS_RATE", default_value_t = 1.0)]
    pub receipts_rate: f64,
}
