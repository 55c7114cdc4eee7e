//! The forward processor: copies each response, as it is (key, value, headers), to another topic.
//! Invariant: each revision appears there once for `read_committed` readers (the runtime
//! publishes the copy and commits the offset in one Kafka transaction).

use std::sync::Arc;

use formstream_runtime::{Failure, Launch, Output, Processor, Record, RuntimeConfig, Shutdown};
use formstream_schemas::Response;

/// `formstream process forward`: where the copies go.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Topic each response is copied to (create it first). No default: `formstream dev` skips
    /// this processor until it is set.
    #[arg(long, env = "FORMSTREAM_FORWARD_TOPIC")]
    pub forward_topic: String,
}

/// The processor, with the topic the copies go to.
pub struct Forward(Arc<str>);

impl Processor for Forward {
    type Value = Response;

    fn name(&self) -> &str {
        Self::NAME
    }

    /// Nothing outside Kafka: the copy is an output, which the runtime publishes.
    async fn handle(&self, _record: &Record<Response>) -> Result<(), Failure> {
        Ok(())
    }

    fn transactional(&self) -> bool {
        true
    }

    fn outputs(&self, record: &Record<Response>) -> Result<Vec<Output>, Failure> {
        Ok(vec![Output {
            topic: self.0.clone(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.raw.payload().unwrap_or_default().to_vec(),
            headers: record
                .headers()
                .map(|(n, v)| (n.into(), String::from_utf8_lossy(v).into()))
                .collect(),
        }])
    }
}

impl Launch for Forward {
    const NAME: &'static str = "forward";
    const ABOUT: &'static str = "Copy each response to another topic, exactly once";
    type Args = ForwardArgs;

    async fn run(args: ForwardArgs, runtime: RuntimeConfig, stop: Shutdown) -> anyhow::Result<()> {
        formstream_runtime::run(Forward(args.forward_topic.into()), runtime, None, stop).await
    }
}
