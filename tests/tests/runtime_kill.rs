//! `kill -9` of a processor process in the middle of 50,000 records, then a restart (docs/design.md,
//! promises 2 and 3).
//!
//! The processor is the `journal` test processor of the `formstream` binary: each effect appends a
//! JSON line to a file and syncs it before the runtime may commit. Build the binary first
//! (`cargo build --bin formstream`; `deploy/local/test.sh` does).
//!
//! Invariant proved here: at the moment of the kill, every committed offset is at most the end of
//! the partition's run of journaled offsets from 0 (the committed offset was never ahead of the
//! effects); after the restart every one of the 50,000 records is journaled at least once (none
//! skipped; duplicates are allowed and counted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 6;
const RECORDS: usize = 50_000;

/// A `formstream process journal` process; killed (SIGKILL) when dropped.
struct JournalProcess {
    child: Child,
    log: PathBuf,
}

impl JournalProcess {
    fn start(topics: &RuntimeTopics, journal: &Path, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("creating the process log");
        let child = Command::new(formstream_binary())
            .args(["process", "journal"])
            .args(topics.runtime_args())
            .arg("--journal-path")
            .arg(journal)
            .args(["--batch-size", "64"])
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting formstream process journal");
        JournalProcess { child, log }
    }

    /// Panics (with the process log) if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "formstream process journal exited ({status}); its log:\n{}",
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL (std's `Child::kill` on unix), then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JournalProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Journaled offsets per partition, and how many lines the journal has.
fn journaled(path: &Path, topic: &str) -> (BTreeMap<i32, BTreeSet<i64>>, usize) {
    let entries = read_journal(path);
    let mut offsets: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for entry in &entries {
        assert_eq!(
            entry.topic, topic,
            "journal line of another topic: {entry:?}"
        );
        offsets
            .entry(entry.partition)
            .or_default()
            .insert(entry.offset);
    }
    (offsets, entries.len())
}

fn distinct(offsets: &BTreeMap<i32, BTreeSet<i64>>) -> usize {
    offsets.values().map(BTreeSet::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_run_then_restart_skips_nothing_and_never_commits_ahead() {
    init_logs();
    let binary = formstream_binary();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let produced_at = Instant::now();
    let produced = producer.responses(&fresh_responses(&forms, RECORDS)).await;
    eprintln!(
        "kill -9: produced {RECORDS} records in {:?}",
        produced_at.elapsed()
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let journal = dir.path().join("journal.jsonl");
    let mut process = JournalProcess::start(&topics, &journal, dir.path().join("first.log"));

    // Wait until part of the run is journaled and the group has committed something.
    let started = Instant::now();
    loop {
        process.assert_running();
        let (offsets, _) = journaled(&journal, &topics.responses);
        let committed = committed_offsets(&topics).await.unwrap_or_default();
        let committed_any = committed.values().any(|&c| c > 0);
        if distinct(&offsets) >= RECORDS / 10 && committed_any {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} not journaling with commits within 120 s ({} journaled, committed {committed:?}); log:\n{}",
            binary.display(),
            distinct(&offsets),
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process.kill();

    // The process is gone: neither the journal nor the commits can move any more.
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    let (offsets, lines) = journaled(&journal, &topics.responses);
    eprintln!(
        "kill -9: killed after {} distinct records journaled ({lines} lines); committed {committed:?}",
        distinct(&offsets)
    );
    assert!(
        distinct(&offsets) < RECORDS,
        "the run was over before the kill; the test needs a slower journal"
    );
    for (partition, &committed) in &committed {
        let contiguous = contiguous_end(offsets.get(partition));
        assert!(
            committed <= contiguous,
            "partition {partition}: committed offset {committed} is ahead of the journal, \
             whose offsets run contiguously from 0 only to {contiguous}"
        );
    }

    // Restart: everything gets journaled, none skipped.
    let mut process = JournalProcess::start(&topics, &journal, dir.path().join("second.log"));
    let started = Instant::now();
    loop {
        process.assert_running();
        let (offsets, _) = journaled(&journal, &topics.responses);
        if distinct(&offsets) >= RECORDS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {RECORDS} records journaled within 300 s of the restart; log:\n{}",
            distinct(&offsets),
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    process.kill();

    let entries = read_journal(&journal);
    let mut by_place: HashMap<(i32, i64), Vec<&JournalEntry>> = HashMap::new();
    for entry in &entries {
        by_place
            .entry((entry.partition, entry.offset))
            .or_default()
            .push(entry);
    }
    for record in &produced {
        let lines = by_place
            .get(&(record.partition, record.offset))
            .unwrap_or_else(|| panic!("never journaled: {record:?}"));
        for line in lines {
            assert_eq!(
                (line.response_id.as_str(), line.revision, line.form_version),
                (record.response_id.as_str(), record.revision, 1),
                "the journal line of {}/{} is another record",
                record.partition,
                record.offset
            );
            assert_eq!(line.form_id, forms[record.partition as usize]);
        }
    }
    assert_eq!(
        by_place.len(),
        RECORDS,
        "the journal names offsets that were never produced"
    );
    let duplicates = entries.len() - RECORDS;
    eprintln!(
        "kill -9: {RECORDS} records, {} journal lines, {duplicates} duplicates (redelivered after the kill)",
        entries.len()
    );
    topics.delete().await;
}
