//! The slang processor (index and search API) run in-process by a test, on a search listener the
//! test bound first (so that a gateway started before it can be given its URL).
//!
//! Invariant: the processor is ready (its `/readyz` answers 200) before [`SlangProcess::start`]
//! returns, and stops cleanly, with its index in a temporary directory deleted afterwards.

use std::path::Path;
use std::time::Duration;

use formstream_runtime::RuntimeConfig;
use formstream_slang::SlangArgs;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running slang processor.
pub struct SlangProcess {
    /// `http://127.0.0.1:<port>` of its search API.
    pub search_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The temporary index directory and keys file [`SlangProcess::start`] made, if it did.
    _temporary: Option<(tempfile::TempDir, tempfile::TempPath)>,
}

/// A listener for a search API on a free local port, and its URL.
pub async fn search_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    (listener, url)
}

impl SlangProcess {
    /// Starts slang on `config` (its topics and group), serving its search API on `search` with
    /// the test keys of acme and globex ([`crate::write_keys_file`]) and its index in a temporary
    /// directory; waits until it is ready.
    pub async fn start(config: RuntimeConfig, search: TcpListener) -> SlangProcess {
        let index = tempfile::tempdir().expect("a temporary index directory");
        let keys = crate::write_keys_file().expect("the test keys file");
        let mut process = Self::start_in(config, search, index.path(), &keys).await;
        process._temporary = Some((index, keys));
        process
    }

    /// [`Self::start`] with its index in `index_dir` (kept: a restart resumes it) and the API
    /// keys of `keys`.
    pub async fn start_in(
        config: RuntimeConfig,
        search: TcpListener,
        index_dir: &Path,
        keys: &Path,
    ) -> SlangProcess {
        let search_url = format!("http://{}", search.local_addr().expect("an address"));
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let metrics_url = format!("http://{}", metrics.local_addr().expect("an address"));
        let args = SlangArgs {
            index_dir: index_dir.to_owned(),
            search_listen: "127.0.0.1:0".parse().expect("an address"),
            http: Default::default(),
            api_keys_file: keys.to_owned(),
            index_commit_interval: Duration::from_millis(200),
            index_commit_records: 100_000,
            writer_memory: 50_000_000,
            index_batch_size: 64,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(formstream_slang::run(
            args,
            config,
            Some(search),
            Some(metrics),
            async move {
                let _ = rx.await;
            },
        ));
        let client = reqwest::Client::new();
        let (client, handle_ref, ready_url) = (&client, &handle, format!("{metrics_url}/readyz"));
        let ready = crate::wait_until(Duration::from_secs(60), || {
            let ready_url = ready_url.clone();
            async move {
                handle_ref.is_finished()
                    || client
                        .get(ready_url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        assert!(!handle.is_finished(), "slang stopped before it was ready");
        assert!(ready, "slang not ready in 60 s");
        SlangProcess {
            search_url,
            shutdown: Some(tx),
            handle: Some(handle),
            _temporary: None,
        }
    }

    /// Stops it (within 30 s, cleanly).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("slang stops within 30 s")
                .expect("no panic")
                .expect("slang stops cleanly");
        }
    }
}
