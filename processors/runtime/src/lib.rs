//! The formstream processor runtime. A processor implements [`Processor`] (a name and an effect);
//! [`run`] does everything else: consuming with a consumer group, decoding, per-key ordering with
//! concurrency, retries with backoff, the dead-letter topic, a circuit per target (and the
//! processor's own), commits of finished offsets only, rebalances, graceful shutdown and metrics.
//!
//! Modules: [`processor`] (the contract: [`Processor`], [`Record`], [`Failure`]), [`launch`]
//! (building one from its flags: [`Launch`], registered in one line), [`engine`]
//! (consume, order, complete, commit, pause, rebalance), [`worker`] (one effect to its end, in
//! lanes), [`keyed`] (per-key ordering), [`tracker`] (the offset safe to commit), [`backoff`],
//! [`circuit`] and [`targets`] (retries, breakers per target), [`dlq`] (dead letters), [`http`]
//! (an HTTP API's answer as a [`Failure`]), [`transactions`] (outputs and offsets together),
//! [`ledger`] (effects outside Kafka, at most once), [`replay`] (moving a group's offsets),
//! [`redrive`] (listing, re-driving and discarding dead letters), [`raw`] (a fetched record),
//! [`metrics`], [`config`] (its flags).
//!
//! Invariant (docs/design.md, promises 2 to 6): an offset is committed only when every record
//! below it has had its effect or has been dead-lettered.

pub mod backoff;
pub mod circuit;
pub mod config;
pub mod dlq;
pub mod engine;
pub mod http;
pub mod keyed;
pub mod launch;
pub mod ledger;
pub mod metrics;
pub mod processor;
pub mod raw;
pub mod redrive;
pub mod replay;
pub mod targets;
pub mod tracker;
pub mod transactions;
pub mod worker;

pub use config::RuntimeConfig;
pub use launch::{Launch, Registration, Shutdown};
pub use ledger::{Entry, Ledger, LedgerArgs, LedgerError};
pub use processor::{
    Failure, FormRef, Output, Payload, Processor, RawRecord, Record, Source, Target, TargetRef,
    Targets,
};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use formstream_core::forms::{FormsView, follow_forms_topic};
use formstream_core::kafka::client_config_with;
use formstream_core::topics::{TopicOutcome, TopicSpec, ensure_retention, ensure_topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dlq::DeadLetters;
use crate::engine::{Companion, Engine, RuntimeContext};
use crate::metrics::Metrics;
use crate::transactions::Transactor;

/// The topic a processor consumes, resolved from the configuration.
pub fn source_topic(source: &Source, config: &RuntimeConfig) -> String {
    match source {
        Source::Responses => config.topics.responses_topic.clone(),
        Source::Flags => config.topics.flags_topic.clone(),
    }
}

/// Runs `processor` until `shutdown` completes: waits for the forms view, joins the consumer
/// group, processes, and at shutdown drains, commits and leaves the group (a static member, with
/// an instance id, stays until its session times out). Serves /metrics,
/// /healthz and /readyz on `metrics_listener` (or on the configured address).
pub async fn run<P: Processor>(
    processor: P,
    config: RuntimeConfig,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = processor.name().to_owned();
    run_opening(
        name,
        async move { Ok(Some(processor)) },
        config,
        metrics_listener,
        shutdown,
    )
    .await
}

/// [`run`] for the processor named `name` that `open` builds (a ledger catching up with its
/// topic, say; `Ok(None)` when it was shut down meanwhile). The processor is opened while the
/// runtime gets ready, not before: the dead-letter topic's checks, the forms view's load and the
/// transactional producer's start (which fences a crashed predecessor's open transaction) all
/// run at once, so that a restarted processor's first effect waits for the slowest of them
/// rather than their sum. Nothing is consumed before every one of them is done.
pub async fn run_opening<P: Processor>(
    name: String,
    open: impl Future<Output = anyhow::Result<Option<P>>>,
    config: RuntimeConfig,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let group = config.group_id(&name);
    let dlq_topic = config.dlq_topic(&name);
    let metrics = Metrics::new(&name);
    let codec = formstream_core::codec(&config.registry)?;

    // Health endpoints first, so that an orchestrator sees the process while it catches up.
    let ready = Arc::new(AtomicBool::new(false));
    let listener = match metrics_listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("binding {}", config.metrics_listen))?,
    };
    let (stop_http, http_stopped) = watch::channel(false);
    let http = tokio::spawn(serve_health(
        listener,
        metrics.clone(),
        ready.clone(),
        http_stopped,
    ));

    // Never act before the forms view has caught up (processors are handed form versions).
    let view = Arc::new(FormsView::default());
    let (stop_view, view_stopped) = watch::channel(false);
    let mut follower = tokio::spawn(follow_forms_topic(
        config.kafka.clone(),
        config.topics.forms_topic.clone(),
        codec.clone(),
        view.clone(),
        // The runtime's /readyz waits for the view; its figures are not exported.
        (),
        view_stopped,
    ));
    let shutdown = async move {
        shutdown.await;
    };
    tokio::pin!(shutdown);
    tracing::info!(processor = %name, "Waiting for the forms view to catch up.");
    let view_loaded = async {
        loop {
            if view.is_ready() {
                return Ok(());
            }
            tokio::select! {
                // The view's consumer could not start (e.g. a bad -X property): say so and stop,
                // rather than wait for ever.
                ended = &mut follower => {
                    return match ended {
                        Ok(Err(error)) => Err(anyhow::Error::new(error).context("the forms view could not be loaded")),
                        Ok(Ok(())) => Err(anyhow::anyhow!("the forms view stopped before it was loaded")),
                        Err(error) => Err(anyhow::Error::new(error).context("the forms view task failed")),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    let opened = async {
        let Some(processor) = open.await? else {
            return Ok(None);
        };
        let topic = source_topic(&processor.source(), &config);
        let (companion, transactor) = tokio::try_join!(
            redrive_companion(&config, &topic, &dlq_topic),
            start_transactions(&config, &name, processor.transactional()),
        )?;
        anyhow::Ok(Some((processor, topic, companion, transactor)))
    };
    let setup = async {
        tokio::try_join!(
            view_loaded,
            dead_letter_topic(&config, &dlq_topic, &name),
            opened
        )
    };
    let outcome = tokio::select! {
        _ = &mut shutdown => Ok(None),
        outcome = setup => outcome.map(Some),
    };
    let (processor, topic, companion, transactor, dead_letters) = match outcome {
        Ok(Some(((), dead_letters, Some((processor, topic, companion, transactor))))) => {
            (processor, topic, companion, transactor, dead_letters)
        }
        stopped => {
            let _ = stop_view.send(true);
            let _ = stop_http.send(true);
            let _ = follower.await;
            let _ = http.await;
            return stopped.map(|_| ());
        }
    };
    for collector in processor.metrics() {
        metrics.register(collector)?;
    }
    let transactional = transactor.is_some();

    let tunables = [
        ("client.id", format!("formstream-{name}")),
        (
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().max(1).to_string(),
        ),
        ("auto.offset.reset", "earliest".to_owned()),
        (
            "partition.assignment.strategy",
            "cooperative-sticky".to_owned(),
        ),
        (
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        ),
        // librdkafka's prefetch: 16 MiB (a quarter of its default: as fast in bench/RESULTS.md,
        // less memory), and when it is full, fetching backs off for 50 ms, not the default 1 s,
        // which left the engine idle between bursts. The engine bounds its own buffers.
        ("queued.max.messages.kbytes", "16384".to_owned()),
        ("fetch.queue.backoff.ms", "50".to_owned()),
        // Partition ends for the lag metrics come from librdkafka's statistics.
        ("statistics.interval.ms", "1000".to_owned()),
    ];
    // The processor's own start offsets are asked on every assignment (see `RuntimeContext`).
    let processor = Arc::new(processor);
    let hook = processor.clone();
    let mut client = client_config_with(&config.kafka, &tunables);
    client.set("group.id", &group);
    // Static membership (KIP-345): a member restarted under the same instance id replaces its
    // previous self, takes back the same partitions at once and triggers no rebalance of the
    // others; a crashed dynamic member's partitions would wait for the session timeout instead.
    if let Some(instance) = config.group_instance_id() {
        client.set("group.instance.id", instance);
    }
    let consumer: StreamConsumer<RuntimeContext> = client
        // At least once: librdkafka commits only what the engine stored, and the engine stores
        // only finished offsets (the tracker's watermark). A transactional processor's offsets
        // are committed by its transactions instead.
        .set(
            "enable.auto.commit",
            if transactional { "false" } else { "true" },
        )
        .set("enable.auto.offset.store", "false")
        // Read only committed transactional records (the validate processor writes with transactions).
        .set("isolation.level", "read_committed")
        .create_with_context(
            RuntimeContext::new(metrics.clone(), transactional)
                .with_start_offsets(Box::new(move |topic, partitions| {
                    hook.start_offsets(topic, partitions)
                }))
                .with_companion(companion),
        )
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    tracing::info!(processor = %name, %topic, %group, dlq = %dlq_topic, redrive = ?companion.map(|c| c.companion), "Processor started.");
    ready.store(true, Ordering::Release);

    let engine = Engine::new(
        processor,
        consumer,
        codec,
        view,
        dead_letters,
        &config,
        metrics,
        transactor,
    );
    let outcome = engine.run(shutdown).await;
    ready.store(false, Ordering::Release);
    // The engine (and with it the consumer) is dropped here: librdkafka closes the consumer,
    // which commits on revoke and leaves the group (a static member stays in it until its
    // session times out, so that a restart under the same instance id resumes at once).
    let _ = stop_view.send(true);
    let _ = stop_http.send(true);
    let _ = follower.await;
    let _ = http.await;
    tracing::info!(processor = %name, "Processor stopped.");
    outcome
}

/// Creates the dead-letter topic (with its retention) when the runtime is to, and its producer.
async fn dead_letter_topic(
    config: &RuntimeConfig,
    dlq_topic: &str,
    name: &str,
) -> anyhow::Result<DeadLetters> {
    if config.create_dlq_topic {
        let retention = config.dlq_retention_ms.to_string();
        let spec = TopicSpec {
            name: dlq_topic.to_owned(),
            partitions: config.dlq_partitions,
            replication_factor: config.dlq_replication_factor,
            config: vec![("retention.ms", retention)],
        };
        let outcomes = ensure_topics(&config.kafka, &[spec], Duration::from_secs(30))
            .await
            .context("creating the dead-letter topic")?;
        // A topic created by an earlier version (which kept dead letters forever) takes the
        // configured retention too: dead letters hold personal data.
        if outcomes
            .iter()
            .any(|(_, outcome)| matches!(outcome, TopicOutcome::Existed { .. }))
            && ensure_retention(
                &config.kafka,
                dlq_topic,
                config.dlq_retention_ms,
                Duration::from_secs(30),
            )
            .await
            .context("setting the dead-letter topic's retention")?
        {
            tracing::info!(topic = %dlq_topic, retention_ms = config.dlq_retention_ms, "Dead-letter topic retention set.");
        }
    }
    Ok(DeadLetters::new(
        &config.kafka,
        dlq_topic.to_owned(),
        name.to_owned(),
    )?)
}

/// The transactional producer of a processor that publishes records (none otherwise). Its
/// `init_transactions` fences a crashed predecessor under the same transactional id: the broker
/// aborts that one's open transaction and bumps the epoch, so that it can never commit.
async fn start_transactions(
    config: &RuntimeConfig,
    name: &str,
    transactional: bool,
) -> anyhow::Result<Option<Arc<Transactor>>> {
    if !transactional {
        return Ok(None);
    }
    // One transactional id per instance: fencing of zombies comes from the consumer group's
    // generation (KIP-447), so ids need not follow partitions.
    let kafka = config.kafka.clone();
    let id = config.transactional_id(name);
    let transactor = tokio::task::spawn_blocking(move || Transactor::new(&kafka, &id))
        .await
        .context("starting the transactional producer")?
        .context("initialising Kafka transactions")?;
    Ok(Some(Arc::new(transactor)))
}

/// The re-drive topic of `dlq_topic`, consumed beside `source` (see [`redrive`]): created (or
/// grown to the source's partition count) when the runtime creates its dead-letter topic.
/// `None`, with a warning, when it cannot be: re-driven records then wait for a restart.
async fn redrive_companion(
    config: &RuntimeConfig,
    source: &str,
    dlq_topic: &str,
) -> anyhow::Result<Option<Companion>> {
    let topics = redrive::RedriveTopics::of(dlq_topic);
    let Some((partitions, _)) = redrive::snapshot::topic_shape(&config.kafka, source).await? else {
        tracing::warn!(%source, redrive = %topics.redrive, "The source topic does not exist yet; re-driven records are consumed after a restart.");
        return Ok(None);
    };
    if config.create_dlq_topic {
        topics
            .ensure(
                &config.kafka,
                partitions as i32,
                config.dlq_replication_factor,
                Some(config.dlq_retention_ms),
            )
            .await?;
    } else if redrive::snapshot::topic_shape(&config.kafka, &topics.redrive)
        .await?
        .is_none()
    {
        tracing::warn!(redrive = %topics.redrive, "The re-drive topic does not exist (--create-dlq-topic false); re-driven records are not consumed.");
        return Ok(None);
    }
    Ok(Some(Companion {
        source: engine::intern(source),
        companion: engine::intern(&topics.redrive),
    }))
}

async fn serve_health(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}
