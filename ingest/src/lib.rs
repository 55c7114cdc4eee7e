//! The formstream ingest gateway: a forms API, and validated, durable submission of responses to
//! Kafka.
//!
//! Modules: [`http`] (the API: routes, handlers, extractors), [`kafka`] (the durable producer),
//! [`idempotency`] and [`digest`] (the retry cache, and what tells a retry from a new submission),
//! [`flags`] (the flags view behind `GET .../flags`), [`paging`] (the `limit` and `after` of paged
//! listings, and cutting a page), [`metrics`] (everything it exports),
//! [`config`] (its flags), [`console`] (the web console and its sessions). The form model, the forms view and response validation it serves are
//! `formstream_core`'s, shared with the processors.
//!
//! Invariant (docs/design.md, promises 1 and 7): a response is answered 2xx only after Kafka
//! acknowledged it (idempotent producer, acks=all), and only valid responses are published.

pub mod config;
pub mod console;
pub mod digest;
pub mod flags;
pub mod http;
pub mod idempotency;
pub mod kafka;
pub mod metrics;
pub mod paging;

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use formstream_core::api::{ApiKeys, serve};
use formstream_core::codec;
use formstream_core::forms::{FormsView, follow_forms_topic};
use formstream_core::phones::Phones;
use formstream_core::topics::{ensure_topics, spine_topics};
use formstream_schemas::{Form, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::flags::FlagsView;
use crate::http::{AppState, Inner};
use crate::kafka::Publisher;
use crate::metrics::Metrics;

/// Runs the gateway on `listener` until `shutdown` completes, then stops accepting requests, lets
/// those in flight finish (bounded by the configured shutdown timeout) and flushes the producer.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keys = ApiKeys::load(&config.api_keys_file)?;
    let reloader = formstream_core::api::keys::reload_on_sighup(keys.clone())?;
    if keys.is_empty() {
        tracing::warn!(file = %config.api_keys_file.display(), "No API keys configured: every API call will get 401.");
    }
    let organisations = config.organisations.load()?;
    tracing::info!(
        spreadsheets = organisations.spreadsheets(),
        source = organisations.source(),
        "Spreadsheets owned by organisations loaded."
    );
    let metrics = Metrics::new();
    let codec = codec(&config.registry)?;

    if config.create_topics {
        let specs = spine_topics(&config.topics, &config.topic_settings);
        for (topic, outcome) in ensure_topics(&config.kafka, &specs, Duration::from_secs(30))
            .await
            .context("creating topics")?
        {
            tracing::info!(%topic, ?outcome, "Topic checked.");
        }
    }

    let publisher = Publisher::new(
        &config.kafka,
        config.linger_ms,
        config.produce_timeout,
        config.delivery_timeout,
        metrics.clone(),
    )
    .context("creating the Kafka producer")?;
    // Forms have no retry key: one answered 503 must not land minutes later (a retried update
    // would then add a second version), so their producer gives up when the caller is answered.
    let form_publisher = Publisher::new(
        &config.kafka,
        config.linger_ms,
        config.produce_timeout,
        config.produce_timeout,
        metrics.clone(),
    )
    .context("creating the Kafka producer of forms")?;
    let form_encoder = codec.encoder::<Form>(&config.topics.forms_topic).await?;
    let response_encoder = codec
        .encoder::<Response>(&config.topics.responses_topic)
        .await?;

    let view = Arc::new(FormsView::default());
    let (stop_view, view_stopped) = watch::channel(false);
    let follower = tokio::spawn(follow_forms_topic(
        config.kafka.clone(),
        config.topics.forms_topic.clone(),
        codec.clone(),
        view.clone(),
        metrics.clone(),
        view_stopped.clone(),
    ));
    // Not waited for by /readyz: see `http::list_flags`.
    let flags = Arc::new(FlagsView::default());
    let flags_follower = tokio::spawn(flags::follow_flags_topic(
        config.kafka.clone(),
        config.topics.flags_topic.clone(),
        codec.clone(),
        flags.clone(),
        metrics.clone(),
        view_stopped,
    ));

    let cache_size = NonZeroUsize::new(config.idempotency_cache).unwrap_or(NonZeroUsize::MIN);
    let state = AppState::new(Inner {
        keys,
        organisations,
        view,
        flags,
        dead_letters: http::dead_letters::DeadLetters::new(
            &config.kafka,
            &codec,
            &config.dead_letter_processors,
        ),
        publisher: publisher.clone(),
        form_publisher: form_publisher.clone(),
        forms_topic: config.topics.forms_topic.clone(),
        responses_topic: config.topics.responses_topic.clone(),
        form_encoder,
        response_encoder,
        metrics,
        max_text_chars: config.max_text_chars,
        max_batch_items: config.max_batch_items,
        phones: Phones::default(),
        retry_after_secs: config.retry_after_secs,
        submissions: Arc::new(idempotency::Submissions::new(cache_size)),
        form_writes: tokio::sync::Mutex::new(()),
        sessions: console::Sessions::new(config.console_idle_timeout, config.console_max_session),
        live: Arc::new(console::live::Live::new(
            config.kafka.clone(),
            vec![
                config.topics.responses_topic.clone(),
                config.topics.flags_topic.clone(),
            ],
            config.console_processors.clone(),
            config.console_processor_metrics.clone(),
        )),
        slang: console::slang::SlangSearch::new(config.console_slang_url.clone()),
        form_actions: config.form_actions.clone(),
    });
    let app = http::router(state, config.max_body_bytes);

    tracing::info!(
        listen = %listener.local_addr()?,
        kafka = %config.kafka.bootstrap,
        codec = %codec.describe(),
        "Gateway listening."
    );

    // Graceful shutdown: stop accepting, drain in-flight requests for at most shutdown_timeout.
    let (signalled_tx, mut signalled_rx) = watch::channel(false);
    let server = serve(listener, app, config.http, async move {
        shutdown.await;
        tracing::info!("Shutting down: no new requests; draining those in flight.");
        let _ = signalled_tx.send(true);
    });
    let drain = config.shutdown_timeout;
    tokio::select! {
        () = server => {},
        _ = async {
            let _ = signalled_rx.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!(?drain, "In-flight requests did not finish in time; stopping anyway."),
    }

    let _ = stop_view.send(true);
    // Both at once, so that the two together stay within the shutdown timeout.
    let (responses, forms) = tokio::join!(
        tokio::task::spawn_blocking(move || publisher.flush(drain)),
        tokio::task::spawn_blocking(move || form_publisher.flush(drain)),
    );
    for error in [responses?, forms?].into_iter().filter_map(Result::err) {
        tracing::warn!(%error, "Producer flush did not complete.");
    }
    for (view, follower) in [("forms", follower), ("flags", flags_follower)] {
        match follower.await {
            Ok(Err(error)) => tracing::warn!(view, %error, "View follower stopped with an error."),
            Err(error) => tracing::warn!(view, %error, "View follower panicked."),
            Ok(Ok(())) => {}
        }
    }
    reloader.abort();
    tracing::info!("Gateway stopped.");
    Ok(())
}
