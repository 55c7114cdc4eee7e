//! The no-op processor: every record succeeds at once, or after `--noop-latency`. It measures the
//! runtime itself (the benchmark's "no-op" and "50 ms effect" runs).

use formstream_runtime::{Failure, Processor, Record};
use formstream_schemas::Response;

use crate::config::NoopArgs;

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
        "noop"
    }

    async fn handle(&self, _record: &Record<Response>) -> Result<(), Failure> {
        if !self.args.noop_latency.is_zero() {
            tokio::time::sleep(self.args.noop_latency).await;
        }
        Ok(())
    }
}
