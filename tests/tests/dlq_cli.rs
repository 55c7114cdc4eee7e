//! `formstream dlq` against the real broker and the `journal` processor of the same binary
//! an outage longer than the retry budget dead-letters responses; after the fix,
//! `formstream dlq redrive` journals each exactly once, a second re-drive does nothing, a discard
//! empties the list, and bad input gets a clear error. Build the binary first (`cargo build
//! --bin formstream`; `deploy/local/test.sh` does).
//!
//! Invariant proved here: the CLI is the library's operations, as an operator sees them: one JSON
//! line per pending dead letter, exit status 0 only for what succeeded, and every error names
//! what is wrong.

use std::process::{Command, Output};
use std::time::Duration;

use formstream_runtime::redrive::RedriveTopics;
use formstream_tests::runtime::*;
use serde_json::Value;

/// Runs `formstream dlq <args>` for the test's journal dead letters.
fn dlq(topics: &RuntimeTopics, command: &str, args: &[&str]) -> Output {
    Command::new(formstream_binary())
        .args(["dlq", command, "--processor", "journal", "--dlq-topic"])
        .arg(&topics.dlq)
        .args(["--kafka-bootstrap", &topics.bootstrap])
        .args(args)
        .env_remove("FORMSTREAM_DLQ_PROCESSOR")
        .env_remove("FORMSTREAM_DLQ_TOPIC")
        .output()
        .expect("running formstream dlq")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "formstream dlq failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The pending dead letters `list` prints.
fn listed(topics: &RuntimeTopics, args: &[&str]) -> Vec<Value> {
    stdout(&dlq(topics, "list", args))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_redriven_from_the_command_line_exactly_once() {
    init_logs();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (journal, outage) = (dir.path().join("journal.jsonl"), dir.path().join("down"));
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, 2).await;
    std::fs::write(&outage, b"").expect("taking the journal down");
    let _process =
        JournalProcess::start(&topics, &journal, &outage, &dir.path().join("journal.log"));
    let produced = producer.responses(&fresh_responses(&forms, 4)).await;

    // The processor creates its dead-letter topic when it starts: until then `list` fails.
    eventually(Duration::from_secs(90), "4 dead letters listed", || async {
        let output = dlq(&topics, "list", &[]);
        output.status.success() && String::from_utf8_lossy(&output.stdout).lines().count() == 4
    })
    .await;
    let letters = listed(&topics, &["--kind", "retries_exhausted"]);
    assert_eq!(letters.len(), 4);
    for letter in &letters {
        assert_eq!(letter["status"], "pending");
        assert_eq!(letter["processor"], "journal");
        assert_eq!(letter["error"]["kind"], "retries_exhausted");
        assert_eq!(letter["error"]["attempts"], 3);
        assert!(
            letter["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("outage file present")),
            "{letter}"
        );
        assert_eq!(letter["source"]["topic"], topics.responses.as_str());
        assert_eq!(letter["record"]["type"], "response");
        assert_eq!(letter["record"]["organisation"], "acme");
        assert_eq!(letter["redrive_count"], 0);
        assert_eq!(letter["headers"]["formstream.dlq.processor"], "journal");
    }
    assert!(listed(&topics, &["--kind", "permanent"]).is_empty());
    let one = letters[0]["id"].as_str().expect("an id").to_owned();
    let shown: Value =
        serde_json::from_str(&stdout(&dlq(&topics, "show", &["--id", &one]))).expect("JSON");
    assert_eq!(shown["id"], one.as_str());
    assert_eq!(shown["value"]["organisation"], "acme");
    assert!(shown["value"]["answers"].is_array(), "{shown}");

    // Fixed. A dry run changes nothing.
    std::fs::remove_file(&outage).expect("ending the outage");
    let dry = stdout(&dlq(&topics, "redrive", &["--all", "--dry-run"]));
    assert!(
        dry.starts_with("Dry run; would re-drive 4 dead letters of journal"),
        "{dry}"
    );
    assert_eq!(listed(&topics, &[]).len(), 4);
    assert!(journaled(&journal).is_empty());

    let redriven = stdout(&dlq(
        &topics,
        "redrive",
        &["--all", "--kind", "retries_exhausted"],
    ));
    let redrive = RedriveTopics::of(&topics.dlq).redrive;
    assert!(
        redriven.starts_with(&format!(
            "Re-drove (to {redrive}) 4 dead letters of journal: "
        )),
        "{redriven}"
    );
    eventually(
        Duration::from_secs(60),
        "every response journaled",
        || async { journaled(&journal).len() == produced.len() },
    )
    .await;
    assert!(listed(&topics, &[]).is_empty());

    // Again: nothing to do, by filter or by id.
    let again = stdout(&dlq(&topics, "redrive", &["--all"]));
    assert!(again.contains("0 dead letters of journal: none"), "{again}");
    let by_id = stdout(&dlq(&topics, "redrive", &["--id", &one]));
    assert!(
        by_id.contains(&format!("Skipped {one}: already redriven.")),
        "{by_id}"
    );
    let ends = end_offsets_of(&topics, &redrive).await.expect("ends");
    eventually(
        Duration::from_secs(30),
        "the re-drives committed",
        || async {
            committed_offsets_of(&topics, &redrive)
                .await
                .is_ok_and(|c| ends.iter().all(|(p, e)| *e == 0 || c.get(p) == Some(e)))
        },
    )
    .await;
    for (response, entries) in journaled(&journal) {
        assert_eq!(entries.len(), 1, "{response}: {entries:#?}");
        assert_eq!(entries[0].topic, redrive);
    }

    // A poison record, discarded: it leaves the list.
    producer
        .raw(
            0,
            &forms[0],
            Some(b"\x00 not Avro"),
            &[("response_id", "poison")],
        )
        .await;
    eventually(
        Duration::from_secs(60),
        "the poison record listed",
        || async { listed(&topics, &["--kind", "undecodable"]).len() == 1 },
    )
    .await;
    let poison = listed(&topics, &[])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let discarded = stdout(&dlq(&topics, "discard", &["--id", &poison]));
    assert_eq!(
        discarded.trim(),
        format!("Discarded 1 dead letter of journal: {poison}")
    );
    assert!(listed(&topics, &[]).is_empty());
    let shown: Value =
        serde_json::from_str(&stdout(&dlq(&topics, "show", &["--id", &poison]))).expect("JSON");
    assert_eq!(shown["status"], "discarded");

    topics.delete().await;
}

/// The error a command ends with: its exit status is not 0, and its stderr says `expected`.
fn fails_with(output: Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it succeeded: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error() {
    let topics = RuntimeTopics::create(1).await;
    let binary = formstream_binary();
    let unknown = Command::new(&binary)
        .args(["dlq", "list", "--processor", "no-such-processor"])
        .args(["--kafka-bootstrap", &topics.bootstrap])
        .env_remove("FORMSTREAM_DLQ_TOPIC")
        .output()
        .expect("running formstream dlq");
    fails_with(
        unknown,
        &[
            "no-such-processor.dlq does not exist",
            "not a registered processor",
            "journal",
        ],
    );
    fails_with(
        dlq(&topics, "list", &[]),
        &[&format!("{} does not exist", topics.dlq)],
    );
    fails_with(dlq(&topics, "redrive", &[]), &["--id", "--all"]);
    fails_with(
        dlq(&topics, "discard", &["--id", "0-1", "--all"]),
        &["--all", "cannot be used"],
    );
    fails_with(
        dlq(&topics, "redrive", &["--id", "0-1", "--kind", "permanent"]),
        &["--kind"],
    );
    fails_with(
        dlq(&topics, "show", &["--id", "banana"]),
        &["\"banana\" is not a dead-letter id"],
    );
    fails_with(
        dlq(&topics, "list", &["--kind", "nope"]),
        &["unknown error kind", "retries_exhausted"],
    );
    fails_with(
        dlq(&topics, "list", &["--since", "yesterday"]),
        &["--since", "RFC 3339"],
    );
    fails_with(
        dlq(
            &topics,
            "list",
            &[
                "--since",
                "2026-01-02T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
        ),
        &["--until", "is not after since"],
    );

    // With a dead-letter topic, an id it does not hold.
    let runtime = spawn_runtime(TestProcessor::new(), topics.config(&[])).await;
    fails_with(
        dlq(&topics, "show", &["--id", "0-999999"]),
        &["no dead letter 0-999999 in", &topics.dlq],
    );
    fails_with(
        dlq(&topics, "redrive", &["--id", "0-999999,0-5"]),
        &["no dead letter 0-5, 0-999999"],
    );
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
