//! The forward processor, docs/processors.md's complete example, on the real broker as
//! `formstream process forward` runs it (so its one registration line is what starts it): every
//! response revision lands exactly once on the forward topic, with its key, value and headers;
//! and the guide shows its source, and its registration line, exactly as they are.
//!
//! Build the binary first (`cargo build --bin formstream`; `deploy/local/test.sh` does).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use formstream_schemas::{Codec, Response};
use formstream_tests::deploy::{processors, read_repo_file};
use formstream_tests::runtime::*;
use formstream_tests::{delete_topics, read_topic, unique};

/// `formstream process forward`, killed when dropped (also when the test fails).
struct ForwardProcess(Child);

impl Drop for ForwardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_copies_every_revision_once_with_its_key_value_and_headers() {
    let topics = RuntimeTopics::create(3).await;
    let forwarded = topics.create_output_topic("forwarded").await;
    let producer = TestProducer::new(&topics);
    let form = test_form(&format!("form-{}", unique()));
    producer.form(&form).await;
    let mut items = Vec::new();
    for n in 0..20 {
        for revision in 0..3 {
            let response = test_response(&form.id, &format!("r-{n}"), revision);
            items.push((n % 3, response));
        }
    }
    producer.responses(&items).await;

    let _process = ForwardProcess(
        Command::new(formstream_binary())
            .args(["process", "forward", "--forward-topic", &forwarded])
            .args(topics.runtime_args())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting formstream process forward"),
    );
    wait_committed_to_ends(&topics, Duration::from_secs(90)).await;

    let landed = read_topic(
        &topics.bootstrap,
        &forwarded,
        items.len(),
        Duration::from_secs(30),
    )
    .await
    .expect("reading the forward topic");
    assert_eq!(landed.len(), items.len(), "one copy per revision, no more");
    let codec = Codec::single_object();
    let mut copies = BTreeSet::new();
    for record in &landed {
        let response: Response = codec.decode(&record.payload).await.expect("a response");
        assert_eq!(record.key.as_deref(), Some(form.id.as_str()));
        assert_eq!(
            record.headers.get("response_id"),
            Some(&response.response_id)
        );
        assert_eq!(
            record.header_i64("revision"),
            Some(i64::from(response.revision))
        );
        assert_eq!(
            response.answers[0].text,
            Some(format!("answer {}", response.revision))
        );
        copies.insert((response.response_id, response.revision));
    }
    let sent: BTreeSet<(String, i32)> = items
        .iter()
        .map(|(_, r)| (r.response_id.clone(), r.revision))
        .collect();
    assert_eq!(copies, sent);
    delete_topics(&topics.bootstrap, &[&forwarded]).await;
    topics.delete().await;
}

/// The lines of docs/processors.md's first ```rust block after `heading`.
fn listing_after(guide: &str, heading: &str) -> String {
    let from = guide
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the guide"));
    let block = &guide[from..];
    let start = block.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let end = start + block[start..].find("```\n").expect("the block's end");
    block[start..end].to_owned()
}

#[test]
fn the_guide_shows_the_forward_processor_exactly() {
    let guide = read_repo_file("docs/processors.md");
    let source = read_repo_file("processors/forward/src/lib.rs");
    assert_eq!(
        listing_after(&guide, "## A complete example: forward"),
        source,
        "docs/processors.md must show processors/forward/src/lib.rs as it is"
    );
    let registration = listing_after(&guide, "Register it");
    assert!(
        read_repo_file("src/processors.rs").contains(registration.trim()),
        "the guide's registration line {registration:?} is not in src/processors.rs"
    );
    let lines = source.lines().count() + registration.lines().count();
    assert!(lines <= 60, "the example takes {lines} lines, more than 60");
}

/// `formstream dev` without `FORMSTREAM_FORWARD_TOPIC`: one log line says forward is skipped and
/// which flag it needs, and every other processor starts. The broker address is closed, so that
/// nothing of this test reaches the shared broker (dev logs all this before it connects).
#[test]
fn dev_skips_a_processor_whose_required_flag_is_unset_and_starts_the_others() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("a working folder");
    let mut dev = ForwardProcess(
        Command::new(formstream_binary())
            .arg("dev")
            .current_dir(dir.path())
            .env_remove("FORMSTREAM_FORWARD_TOPIC")
            .env("FORMSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")
            .env("FORMSTREAM_CREATE_TOPICS", "false")
            .env("FORMSTREAM_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("FORMSTREAM_DEV_METRICS_LISTEN", "127.0.0.1:0")
            .env("FORMSTREAM_SLANG_SEARCH_LISTEN", "127.0.0.1:0")
            .env("FORMSTREAM_LOG", "info")
            .env("FORMSTREAM_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting formstream dev"),
    );
    let stderr = dev.0.stderr.take().expect("dev's stderr");
    let (lines, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut started = BTreeSet::new();
    let mut skipped = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let others: BTreeSet<String> = processors()
        .into_iter()
        .filter(|p| p != "forward")
        .collect();
    while started.len() < others.len() || skipped.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = read.recv_timeout(left) else {
            panic!(
                "dev did not log every processor in 30 s: started {started:?}, skipped {skipped:?}"
            );
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let processor = event["fields"]["processor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match event["fields"]["message"].as_str().unwrap_or_default() {
            "Starting a processor." => {
                started.insert(processor);
            }
            message if message.starts_with("Skipping a processor") => {
                skipped.push((processor, message.to_owned()));
            }
            _ => {}
        }
    }
    assert_eq!(started, others);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "forward");
    assert!(skipped[0].1.contains("--forward-topic"), "{skipped:?}");
}
