//! The `formstream` binary: one subcommand per component. It only parses configuration, sets up
//! logging and hands over to the component's library.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use formstream_ingest::config::{
    GatewayConfig, KafkaArgs, RegistryArgs, TopicNames, TopicSettings,
};
use formstream_ingest::kafka::{TopicOutcome, ensure_topics, spine_topics};
use tracing_subscriber::EnvFilter;

/// jemalloc: the gateway allocates per request and per record, and glibc's malloc was a fifth of
/// its CPU under load (bench/RESULTS.md compares the allocators).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "formstream",
    version,
    about = "Stream-processing pipeline for form and survey responses, on Apache Kafka."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter, in tracing's EnvFilter syntax (e.g. info,formstream_ingest=debug).
    #[arg(long, env = "FORMSTREAM_LOG", default_value = "info", global = true)]
    log: String,

    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "FORMSTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP ingest gateway.
    Gateway(GatewayConfig),
    /// Manage the project's Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Load-test a running gateway (see bench/).
    Load(formstream_bench::LoadArgs),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the forms, responses and response-flags topics if they do not exist.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicNames,
        #[command(flatten)]
        settings: TopicSettings,
    },
    /// Print a topic's records as JSON lines, with their values decoded (read-only, no group).
    Tail {
        /// The topic to read: the forms, responses or response-flags topic.
        #[arg(long, default_value = "responses")]
        topic: String,
        /// Start at the beginning of the topic instead of only printing new records.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long, default_value_t = usize::MAX)]
        count: usize,
        /// Stop once no record arrived for this long.
        #[arg(long, default_value = "5s", value_parser = formstream_ingest::config::parse_duration)]
        idle: Duration,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicNames,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a new random API key and the entry to add to the API keys file.
    New {
        /// The organisation the key acts for.
        #[arg(long)]
        organisation: String,
        /// A label for the key's holder, shown in logs instead of the key.
        #[arg(long, default_value = "")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log)
        .with_context(|| format!("invalid --log filter {:?}", cli.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gateway(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            formstream_ingest::run(config, listener, shutdown_signal()).await
        }
        Command::Topics(TopicsCommand::Create {
            kafka,
            topics,
            settings,
        }) => {
            let specs = spine_topics(&topics, &settings);
            for (topic, outcome) in ensure_topics(&kafka, &specs, Duration::from_secs(30)).await? {
                match outcome {
                    TopicOutcome::Created => println!("created {topic}"),
                    TopicOutcome::Existed { partitions } => {
                        println!("exists  {topic} ({partitions} partitions; left as it is)")
                    }
                }
            }
            Ok(())
        }
        Command::Topics(TopicsCommand::Tail {
            topic,
            from_beginning,
            count,
            idle,
            kafka,
            topics,
            registry,
        }) => {
            let codec = formstream_ingest::codec(&registry)?;
            formstream_ingest::tail::tail(
                &kafka,
                &topics,
                &codec,
                &topic,
                from_beginning,
                count,
                idle,
            )
            .await?;
            Ok(())
        }
        Command::Keys(KeysCommand::New { organisation, name }) => {
            let (key, hash) = formstream_ingest::auth::new_key();
            println!("API key (give it to the client; it is not stored anywhere):\n  {key}\n");
            println!(
                "Add to the API keys file:\n[[keys]]\norganisation = {organisation:?}\nname = {name:?}\nsha256 = \"{hash}\""
            );
            Ok(())
        }
        Command::Load(args) => formstream_bench::run(args).await,
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "Could not listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Could not listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and environment variable of every subcommand is documented in the README, so the
    /// two cannot drift apart.
    #[test]
    fn readme_documents_every_flag() {
        let readme = include_str!("../README.md");
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("formstream"), Cli::command())];
        while let Some((path, command)) = stack.pop() {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "help" || long == "version" {
                    continue;
                }
                if !readme.contains(&format!("`--{long}`")) {
                    missing.push(format!("{path}: `--{long}`"));
                }
                if let Some(env) = arg.get_env().and_then(|e| e.to_str())
                    && !readme.contains(&format!("`{env}`"))
                {
                    missing.push(format!("{path}: `{env}`"));
                }
            }
            for sub in command.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
        }
        assert!(
            missing.is_empty(),
            "README.md does not document: {missing:#?}"
        );
    }
}
