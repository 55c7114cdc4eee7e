//! The slang processor: turns each response revision into index entries, for the runtime.
//!
//! Invariant: a record is reported done only once its entry is in the index writer, so the
//! runtime's finished watermark (handed to [`SlangIndex::finished_below`]) never passes a record
//! that the next index commit would miss. Where to resume comes from the index, not the group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use formstream_runtime::{Failure, Processor, Record};
use formstream_schemas::Response;

use crate::index::{Entry, SlangIndex};

/// The processor; clones share one index.
#[derive(Clone)]
pub struct Slang {
    index: Arc<SlangIndex>,
    batch_size: usize,
}

impl Slang {
    pub fn new(index: Arc<SlangIndex>, batch_size: usize) -> Self {
        Slang {
            index,
            batch_size: batch_size.max(1),
        }
    }

    pub fn index(&self) -> &Arc<SlangIndex> {
        &self.index
    }
}

/// What a response revision puts in the index, per its form version's slang action; `None` when
/// that version has none (the form is not indexed).
pub fn entry_of(record: &Record<Response>) -> Option<Entry> {
    let response = &record.value;
    let slang = record.form_version()?.slang.as_ref()?;
    let cities = response
        .answer(&slang.city_question)
        .map(|a| a.choices.clone())
        .unwrap_or_default();
    let texts = slang
        .text_questions
        .iter()
        .filter_map(|key| {
            let text = response.answer(key)?.text.as_ref()?;
            (!text.trim().is_empty()).then(|| (key.clone(), text.clone()))
        })
        .collect();
    Some(Entry::new(
        response.organisation.clone(),
        response.form_id.clone(),
        response.response_id.clone(),
        response.revision,
        response.submitted_at,
        cities,
        texts,
    ))
}

impl Processor for Slang {
    type Value = Response;

    fn name(&self) -> &str {
        <Self as formstream_runtime::Launch>::NAME
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        self.handle_batch(std::slice::from_ref(record))
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn batch_linger(&self) -> Duration {
        // Adding to the writer is cheap; searches see nothing before the next commit anyway.
        Duration::from_millis(20)
    }

    async fn handle_batch(&self, records: &[Record<Response>]) -> Vec<Result<(), Failure>> {
        let mut entries = Vec::with_capacity(records.len());
        for record in records {
            match entry_of(record) {
                Some(entry) => entries.push(entry),
                None => self.index.note_handled(),
            }
        }
        let index = self.index.clone();
        // Tantivy's writer hands documents to its own threads, but may block while they catch up.
        let added = tokio::task::spawn_blocking(move || index.upsert(&entries)).await;
        let outcome = match added {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(join) => Err(join.to_string()),
        };
        records
            .iter()
            .map(|_| {
                outcome
                    .clone()
                    .map_err(|e| Failure::retriable(anyhow::anyhow!("indexing failed: {e}")))
            })
            .collect()
    }

    fn start_offsets(&self, topic: &str, partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        Some(self.index.start_offsets(topic, partitions))
    }

    fn finished_below(&self, topic: &str, partition: i32, offset: i64) {
        self.index.finished_below(topic, partition, offset);
    }
}
