//! The Twilio fake as a standalone server (bench/e2e.sh and the end-to-end test run it beside the
//! processors): Twilio's Messages API on one port, with a fixed answer time per create, and the
//! admin API of [`formstream_tests::standalone`] on another. It prints one JSON line on stdout
//! (the URLs, the account SID and the auth token) once both listen, and runs until killed.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use formstream_tests::standalone::{Announce, serve_admin, twilio_admin};
use formstream_tests::twilio_fake::FakeTwilio;

#[derive(Parser)]
struct Args {
    /// Time each create takes before it is answered.
    // Twilio's usual answer time for a create.
    #[arg(long, default_value = "100ms", value_parser = formstream_core::config::parse_duration)]
    latency: Duration,
    /// Address of the admin API.
    // Port 0: the caller reads the address from the first line printed.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let twilio = FakeTwilio::start().await;
    twilio.set_latency(args.latency);
    let admin = serve_admin(args.admin_listen, twilio_admin(twilio.clone())).await?;
    let announce = Announce {
        api: twilio.base_url(),
        admin: format!("http://{admin}"),
        account_sid: Some(twilio.account_sid().to_owned()),
        auth_token: Some(twilio.auth_token().to_owned()),
        credentials: None,
    };
    println!("{}", serde_json::to_string(&announce)?);
    std::future::pending::<()>().await;
    Ok(())
}
