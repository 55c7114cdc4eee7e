//! The slang processor: a full-text index of the text answers of responses, by the city
//! answered in another question of the same form, and the search API over it.
//!
//! Exactly-once indexing, and why: the index is a local store, so its commits carry the offsets
//! they cover (Tantivy's commit payload) and the runtime starts each assigned partition at those
//! offsets ([`formstream_runtime::Processor::start_offsets`]), never at the consumer group's. A
//! record is reported done as soon as it is in the index writer; the runtime's finished watermark
//! ([`formstream_runtime::Processor::finished_below`]) is what the next commit records. After a
//! crash the index reopens at its last commit and the records after that commit's offsets are
//! read again; re-adding one is a no-op (a response is indexed at its highest revision, once). The
//! group's commits therefore only feed the lag metrics. An empty (deleted) index starts every
//! partition at the beginning: a rebuild.
//!
//! Layout: [`tokenizer`] (words of any script), [`index`] (Tantivy: entries, commits, queries),
//! [`counts`] (word and phrase counts of the committed index), [`processor`] (records to
//! entries), [`snapshot`] (the counts of the last commit, kept so that opening is quick), [`api`]
//! (HTTP), [`config`] (flags), [`action`] (its form action, `slang`: which
//! questions, checked when a form is saved).

pub mod action;
pub mod api;
pub mod config;
pub mod counts;
pub mod index;
pub mod processor;
pub mod snapshot;
pub mod tokenizer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use formstream_core::api::{ApiKeys, serve};
use formstream_core::forms::{FormAction, FormsView, follow_forms_topic};
use formstream_runtime::{Launch, RuntimeConfig, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::SlangArgs;
pub use index::SlangIndex;
pub use processor::Slang;

/// How often the committer looks at the size and age of what is uncommitted.
const COMMIT_CHECK: Duration = Duration::from_millis(100);

/// Runs the slang processor and its search API until `shutdown` completes, then commits the index
/// a last time. `search_listener` and `metrics_listener` override the configured addresses (tests
/// bind port 0).
pub async fn run(
    args: SlangArgs,
    runtime: RuntimeConfig,
    search_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keys = ApiKeys::load(&args.api_keys_file)?;
    let reloader = formstream_core::api::keys::reload_on_sighup(keys.clone())?;
    let (dir, memory) = (args.index_dir.clone(), args.writer_memory);
    let index = tokio::task::spawn_blocking(move || SlangIndex::open(&dir, memory))
        .await
        .context("opening the slang index")?
        .with_context(|| format!("opening the slang index in {}", args.index_dir.display()))?;
    let index = Arc::new(index);
    tracing::info!(
        dir = %args.index_dir.display(),
        documents = index.documents_count(),
        offsets = ?index.committed().offsets,
        "Opened the slang index."
    );

    let (stop, stopped) = watch::channel(false);
    // The API's own view of the forms: which organisation owns a form, what its action indexes.
    let forms = Arc::new(FormsView::default());
    let follower = tokio::spawn(follow_forms_topic(
        runtime.kafka.clone(),
        runtime.topics.forms_topic.clone(),
        formstream_core::codec(&runtime.registry)?,
        forms.clone(),
        // The search API answers 503 until this view is ready; its figures are not exported.
        (),
        stopped.clone(),
    ));
    let listener = match search_listener {
        Some(listener) => listener,
        None => TcpListener::bind(args.search_listen)
            .await
            .with_context(|| format!("binding {}", args.search_listen))?,
    };
    tracing::info!(listen = %listener.local_addr()?, "Serving the slang search API.");
    let app = api::router(api::SearchState {
        index: index.clone(),
        forms,
        keys,
        retry_after_secs: 1,
    });
    let server = {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            serve(listener, app, args.http, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let committer = tokio::spawn(commit_loop(
        index.clone(),
        args.index_commit_interval,
        args.index_commit_records,
        stopped.clone(),
    ));

    let processor = Slang::new(index.clone(), args.index_batch_size);
    let outcome = formstream_runtime::run(processor, runtime, metrics_listener, shutdown).await;

    // The runtime drained and reported its last watermarks: record them with what they cover.
    let _ = stop.send(true);
    let _ = committer.await;
    let last = tokio::task::spawn_blocking({
        let index = index.clone();
        move || index.commit()
    })
    .await
    .context("the last commit of the slang index")?;
    match last {
        Ok(payload) => {
            tracing::info!(offsets = ?payload.offsets, "Committed the slang index at shutdown.")
        }
        Err(error) => {
            tracing::error!(%error, "The last commit of the slang index failed; the next start redoes what it held.")
        }
    }
    let _ = server.await;
    let _ = follower.await;
    reloader.abort();
    outcome
}

impl Launch for Slang {
    const NAME: &'static str = "slang";
    const ABOUT: &'static str = "Index the text answers of forms with a slang action by city (Tantivy, Unicode word segmentation), and serve the search API over the index";
    type Args = SlangArgs;

    fn form_action() -> Option<Arc<dyn FormAction>> {
        Some(action::action())
    }

    /// Not just the runtime: the processor also serves its search API and commits its index
    /// around it.
    async fn run(
        args: SlangArgs,
        runtime: RuntimeConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        run(args, runtime, None, None, shutdown).await
    }
}

/// Commits the index every `interval`, or sooner once `records` are uncommitted, while anything
/// changed. A failed commit is logged and tried again: the records stay in the writer, and the
/// offsets only move with a commit that succeeded.
async fn commit_loop(
    index: Arc<SlangIndex>,
    interval: Duration,
    records: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(COMMIT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let due =
            index.uncommitted() >= records || (last.elapsed() >= interval && index.has_changes());
        if !due {
            continue;
        }
        let committing = index.clone();
        match tokio::task::spawn_blocking(move || committing.commit()).await {
            Ok(Ok(_)) => last = Instant::now(),
            Ok(Err(error)) => tracing::error!(%error, "Slang index commit failed; retrying."),
            Err(error) => tracing::error!(%error, "Slang index commit task failed; retrying."),
        }
    }
}
