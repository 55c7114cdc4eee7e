//! Unit tests of the journal's line format and fault injection (no Kafka: records are built
//! directly, as the runtime would hand them over).

use std::time::Duration;

use formstream_runtime::{Failure, Processor, RawRecord, Record};
use formstream_schemas::{Collector, Response, fixtures};
use serde_json::Value;

use crate::{Journal, JournalArgs};

fn args(dir: &tempfile::TempDir) -> JournalArgs {
    JournalArgs {
        journal_path: dir.path().join("nested/journal.jsonl"),
        fail_attempts: 0,
        fail_permanently_when: None,
        latency: Duration::ZERO,
        outage_file: None,
        batch_size: 256,
    }
}

fn record(response_id: &str, offset: i64, attempt: u32, text: &str) -> Record<Response> {
    Record {
        topic: "responses",
        partition: 3,
        offset,
        timestamp_ms: Some(1_700_000_000_000),
        raw: RawRecord::new(Some(b"household"), None, std::iter::empty),
        assignment: 1,
        value: Response {
            form_id: "household".to_owned(),
            form_version: 2,
            revision: 1,
            submitted_at: 1_700_000_000_000,
            received_at: 1_700_000_000_001,
            collector: Collector {
                id: "collector-17".to_owned(),
                phone: None,
            },
            ..fixtures::response(
                "household",
                response_id,
                vec![fixtures::text_answer("name", text)],
            )
        },
        form: None,
        attempt,
    }
}

fn lines(journal: &Journal) -> Vec<Value> {
    match std::fs::read_to_string(journal.path()) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).expect("every line is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_line_names_the_revision_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(args(&dir)).unwrap();
    journal.handle(&record("r-1", 41, 1, "Asha")).await.unwrap();

    let lines = lines(&journal);
    assert_eq!(lines.len(), 1);
    let line = lines[0].as_object().unwrap();
    let mut keys: Vec<&str> = line.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempt",
            "form_id",
            "form_version",
            "journaled_at_ms",
            "offset",
            "partition",
            "response_id",
            "revision",
            "topic"
        ]
    );
    assert_eq!(line["response_id"], "r-1");
    assert_eq!(line["revision"], 1);
    assert_eq!(line["form_id"], "household");
    assert_eq!(line["form_version"], 2);
    assert_eq!(line["topic"], "responses");
    assert_eq!(line["partition"], 3);
    assert_eq!(line["offset"], 41);
    assert_eq!(line["attempt"], 1);
    assert!(line["journaled_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
}

#[tokio::test]
async fn the_first_attempts_fail_retriably_then_the_line_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalArgs {
        fail_attempts: 2,
        ..args(&dir)
    })
    .unwrap();
    for attempt in 1..=2 {
        let failure = journal
            .handle(&record("r-1", 0, attempt, "Asha"))
            .await
            .unwrap_err();
        assert!(failure.is_retriable(), "attempt {attempt}: {failure:?}");
    }
    assert!(lines(&journal).is_empty());
    journal.handle(&record("r-1", 0, 3, "Asha")).await.unwrap();
    let lines = lines(&journal);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["attempt"], 3);
}

#[tokio::test]
async fn a_matching_answer_fails_permanently_and_the_rest_of_the_batch_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalArgs {
        fail_permanently_when: Some("poison".to_owned()),
        ..args(&dir)
    })
    .unwrap();
    let batch = [
        record("r-1", 10, 1, "Asha"),
        record("r-2", 11, 1, "poison"),
        record("r-3", 12, 1, "poisonous"),
    ];
    let results = journal.handle_batch(&batch).await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(Failure::Permanent(_))));
    assert!(results[2].is_ok(), "only an exact match fails");
    let ids: Vec<Value> = lines(&journal)
        .into_iter()
        .map(|l| l["response_id"].clone())
        .collect();
    assert_eq!(ids, ["r-1", "r-3"]);
}

#[tokio::test]
async fn while_the_outage_file_exists_everything_fails_and_the_probe_too() {
    let dir = tempfile::tempdir().unwrap();
    let outage = dir.path().join("down");
    let journal = Journal::open(JournalArgs {
        outage_file: Some(outage.clone()),
        ..args(&dir)
    })
    .unwrap();
    std::fs::write(&outage, "").unwrap();
    let results = journal
        .handle_batch(&[record("r-1", 0, 1, "a"), record("r-2", 1, 1, "b")])
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(f) if f.is_retriable()))
    );
    assert!(journal.probe().await.is_err());
    assert!(lines(&journal).is_empty());

    std::fs::remove_file(&outage).unwrap();
    assert!(journal.probe().await.is_ok());
    journal.handle(&record("r-1", 0, 2, "a")).await.unwrap();
    assert_eq!(lines(&journal).len(), 1);
}

#[tokio::test]
async fn reopening_appends() {
    let dir = tempfile::tempdir().unwrap();
    Journal::open(args(&dir))
        .unwrap()
        .handle(&record("r-1", 0, 1, "a"))
        .await
        .unwrap();
    let journal = Journal::open(args(&dir)).unwrap();
    journal.handle(&record("r-2", 1, 1, "b")).await.unwrap();
    assert_eq!(lines(&journal).len(), 2);
}

#[test]
fn batch_size_comes_from_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalArgs {
        batch_size: 0,
        ..args(&dir)
    })
    .unwrap();
    assert_eq!(journal.batch_size(), 1, "0 would never dispatch");
    assert_eq!(journal.name(), "journal");
}
