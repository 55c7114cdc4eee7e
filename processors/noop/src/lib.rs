//! The no-op processor: every record succeeds at once, or after `--noop-latency`. It measures the
//! runtime itself (the benchmark's "no-op" and "50 ms effect" runs).
//!
//! Invariant: it has no effect, so every figure measured with it is the runtime's alone.

use std::time::Duration;

use clap::Args;
use formstream_core::config::parse_duration;
use formstream_runtime::{Failure, Launch, Processor, Record, RuntimeConfig, Shutdown};
use formstream_schemas::Response;

/// `formstream process noop`: the runtime benchmark's processor.
#[derive(Debug, Clone, Args)]
pub struct NoopArgs {
    /// Sleep this long per record (a simulated effect latency, e.g. 50ms for the benchmark).
    // 0ms: measures the runtime alone.
    #[arg(long, env = "FORMSTREAM_NOOP_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub noop_latency: Duration,
}

pub struct Noop {
    args: NoopArgs,
}

impl Noop {
    pub fn new(args: NoopArgs) -> Self {
        Noop { args }
    }
}

impl Processor for Noop {
    type Value = Response;

    fn name(&self) -> &str {
        Self::NAME
    }

    async fn handle(&self, _record: &Record<Response>) -> Result<(), Failure> {
        if !self.args.noop_latency.is_zero() {
            tokio::time::sleep(self.args.noop_latency).await;
        }
        Ok(())
    }
}

impl Launch for Noop {
    const NAME: &'static str = "noop";
    const ABOUT: &'static str =
        "Do nothing with each response, optionally after a sleep (the runtime benchmark)";
    type Args = NoopArgs;

    async fn run(args: NoopArgs, runtime: RuntimeConfig, shutdown: Shutdown) -> anyhow::Result<()> {
        formstream_runtime::run(Noop::new(args), runtime, None, shutdown).await
    }
}
