//! Load generator for the gateway (being written).

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Gateway base URL.
    #[arg(long, env = "FORMSTREAM_LOAD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

pub async fn run(_args: LoadArgs) -> anyhow::Result<()> {
    anyhow::bail!("formstream load is not built yet")
}
