//! The end-to-end benchmark of issue 15 (run it with `bench/e2e.sh`): the scenario of
//! [`formstream_tests::e2e`] at full size by default, its report (Markdown, CSV and PNG plots)
//! written to --report-dir, every check printed with its figures. Exits non-zero when a check
//! fails.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use formstream_tests::e2e::report::{self, TARGETS};
use formstream_tests::e2e::{BrokerControl, Scenario, run};

#[derive(Parser)]
struct Args {
    /// The broker the run uses (its own instance: the run restarts it).
    #[arg(long)]
    bootstrap: String,
    /// kafka.sh instance name of that broker, to restart it mid-run; none: no broker restart.
    #[arg(long)]
    broker_instance: Option<String>,
    #[arg(long, default_value_t = 0)]
    broker_port: u16,
    #[arg(long, default_value_t = 0)]
    broker_controller_port: u16,
    /// CI size (20,000 responses, one kill each, a 15 s outage) instead of the full run.
    #[arg(long)]
    ci: bool,
    #[arg(long)]
    responses: Option<usize>,
    #[arg(long)]
    forms: Option<usize>,
    /// Responses per second offered.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    kills_per_processor: Option<usize>,
    /// Twilio outage length, e.g. 120s.
    #[arg(long, value_parser = formstream_core::config::parse_duration)]
    twilio_outage: Option<Duration>,
    /// Where logs, the slang index and the series go.
    #[arg(long)]
    work_dir: PathBuf,
    /// Where E2E.md and the plots go.
    #[arg(long)]
    report_dir: PathBuf,
    /// The formstream binary the processes run.
    #[arg(long)]
    formstream: PathBuf,
    #[arg(long)]
    fake_twilio: PathBuf,
    #[arg(long)]
    fake_sheets: PathBuf,
    /// The command line shown in the report.
    #[arg(long, default_value = "bench/e2e.sh")]
    command: String,
    #[arg(long, default_value = "")]
    commit: String,
    #[arg(long)]
    keep_topics: bool,
    /// A `prometheus` binary: it scrapes the run and evaluates --alert-rules.
    #[arg(long, requires = "alert_rules")]
    prometheus: Option<PathBuf>,
    /// The alert rules (deploy/prometheus/alerts.yml).
    #[arg(long)]
    alert_rules: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scenario = if args.ci {
        Scenario::ci(
            &args.bootstrap,
            &args.work_dir,
            &args.formstream,
            &args.fake_twilio,
            &args.fake_sheets,
        )
    } else {
        let broker = BrokerControl {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh"),
            instance: args.broker_instance.clone().unwrap_or_default(),
            port: args.broker_port,
            controller_port: args.broker_controller_port,
        };
        let mut full = Scenario::full(
            &args.bootstrap,
            broker,
            &args.work_dir,
            &args.formstream,
            &args.fake_twilio,
            &args.fake_sheets,
        );
        if args.broker_instance.is_none() {
            full.broker = None;
        }
        full
    };
    if let Some(n) = args.responses {
        scenario.responses = n;
    }
    if let Some(n) = args.forms {
        scenario.forms = n;
    }
    if let Some(rate) = args.rate {
        scenario.rate = rate;
    }
    if let Some(kills) = args.kills_per_processor {
        scenario.kills_per_processor = kills;
    }
    if let Some(outage) = args.twilio_outage {
        scenario.twilio_outage = outage;
    }
    scenario.keep_topics = args.keep_topics;
    scenario.prometheus = args.prometheus.zip(args.alert_rules);
    let outcome = run(scenario.clone()).await?;
    let markdown = report::write(
        &outcome,
        &scenario,
        &args.report_dir,
        &args.command,
        &args.commit,
    )?;
    println!("{markdown}");
    for check in &outcome.checks {
        eprintln!(
            "e2e: {} {}: {}",
            if check.passed { "pass" } else { "FAIL" },
            check.name,
            check.figures
        );
    }
    eprintln!(
        "e2e: whole run {:.0} s (target {:.0} s)",
        outcome.last_effect_seconds, TARGETS.run_seconds
    );
    anyhow::ensure!(
        outcome.passed(),
        "checks failed (see {})",
        args.report_dir.join("E2E.md").display()
    );
    Ok(())
}
