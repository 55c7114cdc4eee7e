//! The `formstream` binary: one subcommand per component. It only parses configuration, sets up
//! logging and hands over to the component's library.

mod processors;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use formstream_core::config::{KafkaArgs, RegistryArgs, TopicNames, TopicSettings};
use formstream_core::forms::FormActions;
use formstream_core::topics::{TopicOutcome, ensure_topics, spine_topics};
use formstream_ingest::config::{DeadLetterProcessor, GatewayConfig};
use formstream_runtime::Registration;
use formstream_runtime::launch::Unset;
use formstream_runtime::redrive::command::DlqCommand;
use formstream_runtime::replay::ReplayArgs;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

use crate::processors::PROCESSORS;

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
    /// Run one processor (see docs/processors.md).
    #[command(subcommand)]
    Process(ProcessCommand),
    /// Move a processor's consumer group to replay (or skip) records. Stop the processor first.
    Replay(ReplayArgs),
    /// List, show, re-drive or discard a processor's dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the gateway and every registered processor in one process, on local defaults.
    Dev(DevArgs),
}

/// `formstream process <name>`: one of the registered processors ([`processors::PROCESSORS`]),
/// with the flags its subcommand was given.
#[derive(Debug)]
struct ProcessCommand {
    name: String,
    matches: ArgMatches,
}

impl ProcessCommand {
    async fn run(self) -> anyhow::Result<()> {
        let registration = PROCESSORS
            .iter()
            .find(|r| r.name == self.name)
            .with_context(|| format!("no processor named {}", self.name))?;
        let prepared = registration.prepare(&self.matches)?;
        prepared.run(Box::pin(shutdown_signal())).await
    }
}

impl FromArgMatches for ProcessCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, matches) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        Ok(ProcessCommand {
            name: name.to_owned(),
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for ProcessCommand {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        command
            .subcommands(PROCESSORS.iter().map(Registration::command))
            .subcommand_required(true)
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        PROCESSORS.iter().any(|r| r.name == name)
    }
}

/// `formstream dev`: the gateway's flags, and where the processors serve their metrics.
#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    gateway: GatewayConfig,

    /// Address of the first processor's /metrics, /healthz and /readyz; each further processor
    /// (in registration order) takes the next port. The processors share the gateway's Kafka,
    /// topic and registry flags, and take the runtime's defaults otherwise.
    // 9464 is the runtime's default (Prometheus' port for exporters); port 0 picks free ports.
    #[arg(
        long,
        env = "FORMSTREAM_DEV_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    processors_metrics_listen: SocketAddr,
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
        #[arg(long, default_value = "5s", value_parser = formstream_core::config::parse_duration)]
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
        Command::Gateway(mut config) => {
            config.form_actions = form_actions();
            serve_every_processors_dead_letters(&mut config);
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
            let codec = formstream_core::codec(&registry)?;
            formstream_core::tail::tail(
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
            let (key, hash) = formstream_core::api::keys::new_key();
            println!("API key (give it to the client; it is not stored anywhere):\n  {key}\n");
            println!(
                "Add to the API keys file:\n[[keys]]\norganisation = {organisation:?}\nname = {name:?}\nsha256 = \"{hash}\""
            );
            Ok(())
        }
        Command::Load(args) => formstream_bench::run(args).await,
        Command::Process(process) => process.run().await,
        Command::Replay(args) => {
            let replayed = formstream_runtime::replay::replay(args).await?;
            println!(
                "{} consumer group {} on {} to {}:",
                if replayed.committed {
                    "Moved"
                } else {
                    "Dry run; would move"
                },
                replayed.group,
                replayed.topic,
                replayed.target
            );
            for moved in &replayed.moves {
                println!("  {moved}");
            }
            Ok(())
        }
        Command::Dlq(command) => command.run(&registered_names()).await,
        Command::Dev(args) => dev(args).await,
    }
}

/// The names of the registered processors, as `formstream process` lists them.
fn registered_names() -> Vec<String> {
    PROCESSORS.iter().map(|r| r.name.to_owned()).collect()
}

/// `--console-slang-url` unset in `formstream dev`: the console's Slang page uses the search API of
/// the slang processor it runs (its `FORMSTREAM_SLANG_SEARCH_LISTEN`, default 127.0.0.1:8090; an
/// unspecified address is reached on loopback).
fn console_slang_is_the_local_one(config: &mut GatewayConfig) -> anyhow::Result<()> {
    if config.console_slang_url.is_some() {
        return Ok(());
    }
    let listen = std::env::var("FORMSTREAM_SLANG_SEARCH_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
    let mut listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("FORMSTREAM_SLANG_SEARCH_LISTEN={listen:?} is not an address"))?;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = formstream_ingest::console::slang::parse_base_url(&format!("http://{listen}"))
        .map_err(anyhow::Error::msg)?;
    config.console_slang_url = Some(url);
    Ok(())
}

/// `--dead-letter-processors` unset: the gateway serves every registered processor's dead
/// letters, on its default dead-letter topic.
fn serve_every_processors_dead_letters(config: &mut GatewayConfig) {
    if config.dead_letter_processors.is_empty() {
        config.dead_letter_processors = registered_names()
            .iter()
            .map(|name| DeadLetterProcessor::named(name))
            .collect();
    }
}

/// Runs the gateway and every registered processor until Ctrl-C or SIGTERM, which stops them all
/// gracefully; if one of them fails, the others are stopped too and its error is returned.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let DevArgs {
        mut gateway,
        processors_metrics_listen,
    } = args;
    gateway.form_actions = form_actions();
    serve_every_processors_dead_letters(&mut gateway);
    console_slang_is_the_local_one(&mut gateway)?;
    if gateway.create_topics {
        // Before anything starts: the processors follow the forms topic from the start.
        let specs = spine_topics(&gateway.topics, &gateway.topic_settings);
        ensure_topics(&gateway.kafka, &specs, Duration::from_secs(30))
            .await
            .context("creating topics")?;
    }
    let (stop, stopped) = watch::channel(false);
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };

    let mut components: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    let listener = tokio::net::TcpListener::bind(gateway.listen)
        .await
        .with_context(|| format!("binding {}", gateway.listen))?;
    tracing::info!(listen = %gateway.listen, "Starting the gateway.");
    let (kafka, topics, registry) = (
        gateway.kafka.clone(),
        gateway.topics.clone(),
        gateway.registry.clone(),
    );
    components.spawn({
        let shutdown = shutdown();
        async move {
            let result = formstream_ingest::run(gateway, listener, shutdown).await;
            ("gateway".to_owned(), result)
        }
    });
    for (index, registration) in PROCESSORS.iter().enumerate() {
        let mut processor = match registration.with_defaults() {
            Ok(processor) => processor,
            // Credentials a processor needs and nobody gave: the others run without it.
            Err(unset @ Unset::Required { .. }) => {
                tracing::warn!(
                    processor = registration.name,
                    "Skipping a processor: {unset}."
                );
                continue;
            }
            Err(invalid) => return Err(invalid.into()),
        };
        let mut metrics_listen = processors_metrics_listen;
        if metrics_listen.port() != 0 {
            metrics_listen.set_port(metrics_listen.port() + index as u16);
        }
        let name = processor.name.to_owned();
        tracing::info!(processor = %name, %metrics_listen, "Starting a processor.");
        let runtime = &mut processor.runtime;
        runtime.kafka = kafka.clone();
        runtime.topics = topics.clone();
        runtime.registry = registry.clone();
        runtime.metrics_listen = metrics_listen;
        // Each processor has its own group and dead-letter topic, whatever the environment says.
        runtime.group_id = None;
        runtime.dlq_topic = None;
        let shutdown = Box::pin(shutdown());
        components.spawn(async move {
            let result = processor.run(shutdown).await;
            (name, result)
        });
    }

    let signal = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.send_replace(true);
        })
    };
    let mut first_error = None;
    while let Some(joined) = components.join_next().await {
        let (name, result) = joined.context("a component panicked")?;
        match result {
            Ok(()) => tracing::info!(component = %name, "Stopped."),
            Err(error) => {
                tracing::error!(component = %name, error = %format!("{error:#}"), "Failed; stopping the others.");
                first_error.get_or_insert(error.context(format!("{name} failed")));
            }
        }
        // Whichever component ends first (at shutdown, or by failing), the others follow.
        stop.send_replace(true);
    }
    signal.abort();
    first_error.map_or(Ok(()), Err)
}

/// The form actions of the registered processors, for the gateway to check forms with.
fn form_actions() -> FormActions {
    FormActions::new(PROCESSORS.iter().filter_map(Registration::form_action))
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

    /// Every flag and environment variable of every subcommand is documented in
    /// docs/configuration.md, so the two cannot drift apart.
    #[test]
    fn documents_every_flag() {
        let reference = include_str!("../docs/configuration.md");
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("formstream"), Cli::command())];
        while let Some((path, command)) = stack.pop() {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "help" || long == "version" {
                    continue;
                }
                if !reference.contains(&format!("`--{long}`")) {
                    missing.push(format!("{path}: `--{long}`"));
                }
                if let Some(env) = arg.get_env().and_then(|e| e.to_str())
                    && !reference.contains(&format!("`{env}`"))
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
            "docs/configuration.md does not document: {missing:#?}"
        );
    }
}
