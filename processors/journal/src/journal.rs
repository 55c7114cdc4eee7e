//! The journal processor: appends one JSON line per response revision to a local file.
//!
//! Invariant: `Ok` is returned for a record only after its line was written and `sync_data`
//! returned, so a record the runtime commits is on disk (group commit: one sync per batch). A crash
//! between the write and the commit leaves the line in place and the record is delivered again, so
//! the journal can hold a (response id, revision) more than once: readers deduplicate on it.
//!
//! Fault injection (the runtime's tests): `--fail-attempts`, `--fail-permanently-when`, `--latency`
//! and `--outage-file` make the target fail retriably, fail permanently, slow or down.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use formstream_core::forms::actions::settings;
use formstream_core::time::now_millis;
use formstream_runtime::{Failure, Launch, Processor, Record};
use formstream_schemas::Response;
use serde_json::json;

use crate::action::{JournalAction, NAME, answers};
use crate::config::JournalArgs;

pub struct Journal {
    args: JournalArgs,
    /// One writer at a time: each batch's lines stay together and are synced together. A std
    /// mutex, because it is only taken inside `spawn_blocking`.
    file: Arc<Mutex<File>>,
}

impl Journal {
    /// Opens (or creates, with its parent folders) the journal file for appending.
    pub fn open(args: JournalArgs) -> anyhow::Result<Self> {
        let path = &args.journal_path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        tracing::info!(path = %path.display(), "Journal open.");
        Ok(Journal {
            args,
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.args.journal_path
    }

    /// The journal line of one record (without the trailing newline).
    pub fn line(record: &Record<Response>, journaled_at_ms: i64) -> String {
        let value = &record.value;
        let mut line = json!({
            "response_id": value.response_id,
            "revision": value.revision,
            "form_id": value.form_id,
            "form_version": value.form_version,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "attempt": record.attempt,
            "journaled_at_ms": journaled_at_ms,
        });
        // The form's journal action, if it has one (action.rs), names answers to keep too.
        let action = record
            .form_version()
            .and_then(|v| settings::<JournalAction>(v, NAME));
        if let Some(action) = action {
            line["answers"] = answers(&action, value);
        }
        line.to_string()
    }

    /// The failure the fault-injection flags ask for on this attempt of this record, if any.
    pub fn injected_failure(&self, record: &Record<Response>) -> Option<Failure> {
        if record.attempt <= self.args.fail_attempts {
            return Some(Failure::retriable(anyhow!(
                "injected failure: attempt {} of the first {} fails",
                record.attempt,
                self.args.fail_attempts
            )));
        }
        let text = self.args.fail_permanently_when.as_deref()?;
        record
            .value
            .answers
            .iter()
            .any(|answer| answer.text.as_deref() == Some(text))
            .then(|| {
                Failure::permanent(anyhow!("injected permanent failure: an answer is {text:?}"))
            })
    }

    /// Whether the simulated outage is on (the outage file exists).
    async fn outage(&self) -> bool {
        match &self.args.outage_file {
            Some(path) => tokio::fs::try_exists(path).await.unwrap_or(true),
            None => false,
        }
    }

    /// Appends `lines` and syncs them to disk, in one blocking task.
    async fn append(&self, lines: String) -> std::io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = file
                .lock()
                .map_err(|_| std::io::Error::other("the journal lock is poisoned"))?;
            // A failed write must not leave half a line for the retry to append to.
            let length = file.metadata()?.len();
            let written = file
                .write_all(lines.as_bytes())
                .and_then(|()| file.flush())
                .and_then(|()| file.sync_data());
            if written.is_err() {
                let _ = file.set_len(length);
            }
            written
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Processor for Journal {
    type Value = Response;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn batch_size(&self) -> usize {
        self.args.batch_size.max(1)
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        let mut results = self.handle_batch(std::slice::from_ref(record)).await;
        results.pop().unwrap_or_else(|| {
            Err(Failure::retriable(anyhow!(
                "the journal returned no result"
            )))
        })
    }

    async fn handle_batch(&self, records: &[Record<Response>]) -> Vec<Result<(), Failure>> {
        if !self.args.latency.is_zero() {
            tokio::time::sleep(self.args.latency).await;
        }
        if self.outage().await {
            return records
                .iter()
                .map(|_| {
                    Err(Failure::retriable(anyhow!(
                        "the journal is down (outage file present)"
                    )))
                })
                .collect();
        }
        // Decide each record's fate first; write the survivors' lines in one append and one sync.
        let journaled_at_ms = now_millis();
        let mut results: Vec<Option<Result<(), Failure>>> = Vec::with_capacity(records.len());
        let mut lines = String::new();
        for record in records {
            match self.injected_failure(record) {
                Some(failure) => results.push(Some(Err(failure))),
                None => {
                    lines.push_str(&Self::line(record, journaled_at_ms));
                    lines.push('\n');
                    results.push(None);
                }
            }
        }
        let written = if lines.is_empty() {
            Ok(())
        } else {
            self.append(lines).await
        };
        let error = written.err().map(|error| {
            tracing::warn!(%error, path = %self.path().display(), "Could not write the journal.");
            error.to_string()
        });
        results
            .into_iter()
            .map(|result| match (result, &error) {
                (Some(failure), _) => failure,
                (None, None) => Ok(()),
                // An I/O error (disk full, file gone) may pass: retry.
                (None, Some(error)) => Err(Failure::retriable(anyhow!(
                    "writing the journal failed: {error}"
                ))),
            })
            .collect()
    }

    async fn probe(&self) -> anyhow::Result<()> {
        if self.outage().await {
            anyhow::bail!("the journal is down (outage file present)");
        }
        Ok(())
    }
}
