//! The `formstream` binary: one subcommand per component. It only parses configuration, sets up
//! logging and hands over to the component's library.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use formstream_core::config::{KafkaArgs, RegistryArgs, TopicNames, TopicSettings};
use formstream_core::topics::{TopicOutcome, ensure_topics, spine_topics};
use formstream_ingest::config::GatewayConfig;
use formstream_journal::{Journal, JournalArgs, Noop, NoopArgs};
use formstream_notify_collectors::{NotifyCollectors, NotifyCollectorsArgs};
use formstream_receipts::{Receipts, ReceiptsArgs};
use formstream_runtime::redrive::command::DlqCommand;
use formstream_runtime::replay::ReplayArgs;
use formstream_runtime::{Processor, RuntimeConfig};
use formstream_sheets::{Sheets, SheetsArgs};
use formstream_validate::{Validate, ValidateArgs};
use tokio::sync::watch;
use tokio::task::JoinSet;
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
    /// Run one processor (see docs/processors.md).
    #[command(subcommand)]
    Process(Box<ProcessCommand>),
    /// Move a processor's consumer group to replay (or skip) records. Stop the processor first.
    Replay(ReplayArgs),
    /// List, show, re-drive or discard a processor's dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the gateway and every registered processor in one process, on local defaults.
    Dev(DevArgs),
}

/// The registered processors, one variant each.
///
/// Registering a processor takes one variant here (its flags: the runtime's plus its own) and one
/// arm in [`ProcessCommand::run`] (how to build it from its flags). `formstream process <name>`
/// and `formstream dev` then run it; nothing else changes.
#[derive(Debug, Subcommand)]
enum ProcessCommand {
    /// Archive every response revision to a local JSON-lines file (and inject faults, for tests).
    Journal(ProcessorArgs<JournalArgs>),
    /// Do nothing with each response, optionally after a sleep (the runtime benchmark).
    Noop(ProcessorArgs<NoopArgs>),
    /// Check every response revision against its form's rules; publish the outcome to the flags
    /// topic, exactly once (Kafka transactions).
    Validate(ProcessorArgs<ValidateArgs>),
    /// Tell data collectors about flagged responses, by SMS and/or signed webhook, never twice.
    NotifyCollectors(ProcessorArgs<NotifyCollectorsArgs>),
    /// Text each respondent one SMS receipt per response, rate-limited, never twice.
    Receipts(ProcessorArgs<ReceiptsArgs>),
    /// Index the text answers of forms with a slang action by city (Tantivy, Unicode word
    /// segmentation), and serve the search API over the index.
    Slang(Box<ProcessorArgs<formstream_slang::SlangArgs>>),
    /// Export every response of forms with a sheets action as one spreadsheet row (Google
    /// Sheets, or local CSV files without credentials), exactly once, corrections in place.
    Sheets(ProcessorArgs<SheetsArgs>),
}

impl ProcessCommand {
    async fn run(
        self,
        configure: impl FnOnce(&mut RuntimeConfig),
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        match self {
            ProcessCommand::Journal(p) => {
                p.start(async |a, _| Journal::open(a), configure, shutdown)
                    .await
            }
            ProcessCommand::Noop(p) => {
                p.start(async |a, _| Ok(Noop::new(a)), configure, shutdown)
                    .await
            }
            ProcessCommand::Validate(p) => {
                p.start(
                    async |args, runtime| Validate::with_args(runtime, &args).await,
                    configure,
                    shutdown,
                )
                .await
            }
            ProcessCommand::NotifyCollectors(p) => {
                let open = |args, runtime: RuntimeConfig, shutdown| async move {
                    NotifyCollectors::open(args, &runtime, shutdown).await
                };
                p.start_opened(open, configure, shutdown).await
            }
            ProcessCommand::Receipts(p) => {
                let open = |args, runtime: RuntimeConfig, shutdown| async move {
                    Receipts::open(args, &runtime, shutdown).await
                };
                p.start_opened(open, configure, shutdown).await
            }
            // Not `start`: the slang processor also serves its search API and commits its index
            // around the runtime.
            ProcessCommand::Slang(p) => {
                let ProcessorArgs { runtime, args } = *p;
                let mut runtime = runtime;
                configure(&mut runtime);
                formstream_slang::run(args, runtime, None, None, shutdown).await
            }
            ProcessCommand::Sheets(p) => {
                let open = |args, runtime: RuntimeConfig, shutdown| async move {
                    Sheets::open(args, &runtime, shutdown).await
                };
                p.start_opened(open, configure, shutdown).await
            }
        }
    }

    /// Every registered processor with its default flags (and the FORMSTREAM_* environment), in
    /// registration order.
    fn registered() -> anyhow::Result<Vec<(String, ProcessCommand)>> {
        #[derive(Parser)]
        struct Defaults {
            #[command(subcommand)]
            process: ProcessCommand,
        }
        Defaults::command()
            .get_subcommands()
            .map(|sub| {
                let name = sub.get_name().to_owned();
                let parsed = Defaults::try_parse_from(["process", name.as_str()])
                    .with_context(|| format!("the default configuration of processor {name}"))?;
                Ok((name, parsed.process))
            })
            .collect()
    }
}

/// One processor's flags: the runtime's and its own.
#[derive(Debug, Args)]
struct ProcessorArgs<A: Args> {
    #[command(flatten)]
    runtime: RuntimeConfig,
    #[command(flatten)]
    args: A,
}

impl<A: Args> ProcessorArgs<A> {
    async fn start<P: Processor>(
        self,
        build: impl AsyncFnOnce(A, &RuntimeConfig) -> anyhow::Result<P>,
        configure: impl FnOnce(&mut RuntimeConfig),
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut runtime = self.runtime;
        configure(&mut runtime);
        let processor = build(self.args, &runtime).await?;
        formstream_runtime::run(processor, runtime, None, shutdown).await
    }

    /// Like [`ProcessorArgs::start`], for a processor that opens something asynchronously before
    /// it can run (a ledger catching up with its topic) and may be shut down meanwhile (`open`
    /// then gives `None`). `open` gets the runtime's configuration (its Kafka flags) and a
    /// shutdown signal of its own.
    async fn start_opened<P, F>(
        self,
        open: impl FnOnce(A, RuntimeConfig, ShutdownSignal) -> F,
        configure: impl FnOnce(&mut RuntimeConfig),
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        P: Processor,
        F: Future<Output = anyhow::Result<Option<P>>>,
    {
        let mut runtime = self.runtime;
        configure(&mut runtime);
        // One signal, two listeners: the opening step and then the runtime.
        let (stop, stopped) = watch::channel(false);
        let signal = tokio::spawn(async move {
            shutdown.await;
            stop.send_replace(true);
        });
        let listener = |mut stopped: watch::Receiver<bool>| -> ShutdownSignal {
            Box::pin(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
        };
        let outcome = match open(self.args, runtime.clone(), listener(stopped.clone())).await {
            Ok(Some(processor)) => {
                formstream_runtime::run(processor, runtime, None, listener(stopped)).await
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        signal.abort();
        outcome
    }
}

/// A shutdown signal handed to a processor's opening step.
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

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
        Command::Process(process) => process.run(|_| {}, shutdown_signal()).await,
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
        Command::Dlq(command) => {
            let registered: Vec<String> = Cli::command()
                .find_subcommand("process")
                .map(|process| {
                    process
                        .get_subcommands()
                        .map(|sub| sub.get_name().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            command.run(&registered).await
        }
        Command::Dev(args) => dev(args).await,
    }
}

/// Runs the gateway and every registered processor until Ctrl-C or SIGTERM, which stops them all
/// gracefully; if one of them fails, the others are stopped too and its error is returned.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let DevArgs {
        gateway,
        processors_metrics_listen,
    } = args;
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
    for (index, (name, processor)) in ProcessCommand::registered()?.into_iter().enumerate() {
        let mut metrics_listen = processors_metrics_listen;
        if metrics_listen.port() != 0 {
            metrics_listen.set_port(metrics_listen.port() + index as u16);
        }
        tracing::info!(processor = %name, %metrics_listen, "Starting a processor.");
        let (kafka, topics, registry) = (kafka.clone(), topics.clone(), registry.clone());
        let configure = move |runtime: &mut RuntimeConfig| {
            runtime.kafka = kafka;
            runtime.topics = topics;
            runtime.registry = registry;
            runtime.metrics_listen = metrics_listen;
            // Each processor has its own group and dead-letter topic, whatever the environment says.
            runtime.group_id = None;
            runtime.dlq_topic = None;
        };
        let shutdown = shutdown();
        components.spawn(async move {
            let result = processor.run(configure, shutdown).await;
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
