//! The Google Sheets fake as a standalone server (bench/e2e.sh and the end-to-end test run it
//! beside the processors): the Sheets API and Google's token endpoint on one port, with a fixed
//! answer time per call and Google's per-minute write quota (429 past it), and the admin API of
//! [`formstream_tests::standalone`] on another. It writes a service-account key file for the
//! exporter, prints one JSON line on stdout (the URLs and the key file) once both listen, and
//! runs until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use formstream_tests::sheets_fake::FakeSheets;
use formstream_tests::standalone::{Announce, serve_admin, sheets_admin};

#[derive(Parser)]
struct Args {
    /// Time each API call takes before it is answered.
    // Google's usual answer time for a call.
    #[arg(long, default_value = "200ms", value_parser = formstream_core::config::parse_duration)]
    latency: Duration,
    /// Writes accepted in any 60 s; more are answered 429.
    // Google's quota per user (service account) per project.
    #[arg(long, default_value_t = 60)]
    writes_per_minute: usize,
    /// Where to write the service-account key file for the exporter.
    #[arg(long)]
    credentials_out: PathBuf,
    /// Address of the admin API.
    // Port 0: the caller reads the address from the first line printed.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sheets = Arc::new(FakeSheets::start().await);
    sheets.set_latency(args.latency);
    sheets.set_write_quota(args.writes_per_minute);
    std::fs::write(&args.credentials_out, sheets.credentials_json())
        .with_context(|| format!("writing {}", args.credentials_out.display()))?;
    let admin = serve_admin(args.admin_listen, sheets_admin(sheets.clone())).await?;
    let announce = Announce {
        api: sheets.base_url(),
        admin: format!("http://{admin}"),
        account_sid: None,
        auth_token: None,
        credentials: Some(args.credentials_out.display().to_string()),
    };
    println!("{}", serde_json::to_string(&announce)?);
    std::future::pending::<()>().await;
    Ok(())
}
