//! The slang processor killed with SIGKILL at moments the test does not choose, while responses
//! and their corrections stream in, and started again on the same index directory (as a static
//! member, as in production): its per-city answer counts must end equal to those of the latest
//! revision of every response on the topic.
//!
//! Invariant proved here: exactly once through crashes, for the counts the words API serves and
//! for the index they come from: a correction replaces its response's answer (whether the earlier
//! revision was committed, pending or redone after the kill), and no record redone after a kill
//! adds an answer twice; the snapshot of the counts (see `formstream_slang::snapshot`) reopened
//! after a kill agrees with the index.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use formstream_schemas::fixtures;
use formstream_schemas::{Form, FormVersion, QuestionType, Response, Slang};
use formstream_tests::runtime::*;
use formstream_tests::{ACME_KEY, poll_until, unique, wait_until};
use serde_json::Value;

const CITIES: &[&str] = &["pune", "latur", "nagpur", "thane"];
const WORDS: &[&str] = &[
    "paani", "bijli", "sadak", "school", "mast", "bhai", "kaam", "daam", "barish", "fasal",
];

fn form(id: &str) -> Form {
    let mut form = test_form(id);
    form.versions[0] = FormVersion {
        title: "Slang kill".into(),
        slang: Some(Slang {
            city_question: "city".into(),
            text_questions: vec!["comments".into()],
        }),
        created_at: form.created_at,
        ..fixtures::version(
            1,
            vec![
                fixtures::choice_question("city", QuestionType::SingleChoice, CITIES),
                fixtures::question("comments", QuestionType::Text),
            ],
        )
    };
    form
}

/// A small deterministic generator (the test must be the same run after run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }

    fn sentence(&mut self) -> String {
        let n = 2 + self.below(6);
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One revision as produced: its city and its comment (none: unanswered).
#[derive(Clone)]
struct Revision {
    response: usize,
    revision: i32,
    city: &'static str,
    comment: Option<String>,
}

fn record(form_id: &str, run: &str, r: &Revision) -> Response {
    let mut response = test_response(form_id, &format!("{run}-{}", r.response), r.revision);
    response.answers = vec![fixtures::choice_answer("city", &[r.city])];
    if let Some(text) = &r.comment {
        response
            .answers
            .push(fixtures::text_answer("comments", text));
    }
    response
}

struct Slangd {
    child: Child,
}

impl Slangd {
    fn start(
        topics: &RuntimeTopics,
        instance: &str,
        index: &Path,
        keys: &Path,
        search: &str,
        log: &Path,
    ) -> Slangd {
        let log = std::fs::File::create(log).expect("a log file");
        let child = Command::new(formstream_binary())
            .args(["process", "slang"])
            .args(topics.runtime_args())
            .args(["--instance-id", instance])
            .args(["--index-dir", &index.display().to_string()])
            .args(["--api-keys-file", &keys.display().to_string()])
            .args(["--search-listen", search])
            // Many commits, so that kills land between and during them.
            .args(["--index-commit-interval", "100ms"])
            .args(["--index-batch-size", "64"])
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("starting formstream process slang");
        Slangd { child }
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Slangd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, kept (and named) when the test fails: the processes' logs are there.
struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("a directory").path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    listener.local_addr().expect("an address").to_string()
}

/// City -> answers, as the words API counts them; `None` while it does not answer.
async fn answers(
    client: &reqwest::Client,
    search: &str,
    form_id: &str,
) -> Option<BTreeMap<String, u64>> {
    let body: Value = client
        .get(format!(
            "http://{search}/v1/forms/{form_id}/slang/comments/words?cities=100&limit=1"
        ))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        body["cities"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["city"].as_str().unwrap_or_default().to_owned(),
                    c["answers"].as_u64().unwrap_or(0),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_keeps_the_counts_of_the_latest_revisions() {
    init_logs();
    const RESPONSES: usize = 40_000;
    const WAVES: usize = 8;
    let topics = RuntimeTopics::create(8).await;
    let producer = TestProducer::new(&topics);
    let form_id = format!("slang-kill-{}", unique());
    producer.form(&form(&form_id)).await;
    let run = unique();

    // Revision 0 of every response; a correction of one in five, produced in the same wave
    // (after it) or the next: it rewrites the comment (or removes it, or answers it when
    // revision 0 did not), and moves the city of some.
    let mut rng = Lcg(15);
    let mut waves: Vec<Vec<Revision>> = vec![Vec::new(); WAVES + 1];
    for response in 0..RESPONSES {
        let wave = response * WAVES / RESPONSES;
        let city = CITIES[rng.below(CITIES.len())];
        let comment = (rng.below(10) != 0).then(|| rng.sentence());
        waves[wave].push(Revision {
            response,
            revision: 0,
            city,
            comment,
        });
        if rng.below(5) == 0 {
            let city = if rng.below(4) == 0 {
                CITIES[rng.below(CITIES.len())]
            } else {
                city
            };
            let comment = (rng.below(10) != 0).then(|| rng.sentence());
            waves[wave + rng.below(2)].push(Revision {
                response,
                revision: 1,
                city,
                comment,
            });
        }
    }
    let mut latest: HashMap<usize, &Revision> = HashMap::new();
    for revision in waves.iter().flatten() {
        let newer = latest
            .get(&revision.response)
            .is_none_or(|l| l.revision < revision.revision);
        if newer {
            latest.insert(revision.response, revision);
        }
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for revision in latest.values().filter(|r| r.comment.is_some()) {
        *expected.entry(revision.city.to_owned()).or_default() += 1;
    }
    // A response's revisions share a partition, as the gateway's keys make them.
    let partition = |response: usize| (response % topics.partitions as usize) as i32;

    let dir = KeptOnFailure(Some(tempfile::tempdir().expect("a directory")));
    let (index, logs) = (dir.path().join("index"), dir.path().to_owned());
    let keys = formstream_tests::write_keys_file().expect("a keys file");
    let search = free_address();
    let instance = format!("slang-kill-{}", unique());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let mut lives = 0;
    let start = |lives: &mut usize| {
        *lives += 1;
        Slangd::start(
            &topics,
            &instance,
            &index,
            &keys,
            &search,
            &logs.join(format!("slang-{lives}.log")),
        )
    };
    let mut slang = start(&mut lives);
    for (i, wave) in waves.iter().enumerate() {
        let items: Vec<(i32, Response)> = wave
            .iter()
            .map(|r| (partition(r.response), record(&form_id, &run, r)))
            .collect();
        let before = answers(&client, &search, &form_id)
            .await
            .unwrap_or_default();
        producer.responses(&items).await;
        // Killed once the processor has started on this wave (its counts moved), wherever it is
        // in its batches and commits; or, every third wave, as soon as the wave is produced
        // (often while it is still opening its index). Then started again on the same index.
        if i % 3 == 2 {
            slang.kill();
            slang = start(&mut lives);
            continue;
        }
        let moved = wait_until(Duration::from_secs(60), || {
            let (client, search, form_id, before) = (&client, &search, &form_id, &before);
            async move {
                answers(client, search, form_id)
                    .await
                    .is_some_and(|now| now != *before)
            }
        })
        .await;
        assert!(moved, "slang indexed nothing of a wave within 60 s");
        slang.kill();
        slang = start(&mut lives);
    }
    // The API's counts once they equal the expected ones, or as they are after `deadline`.
    let settled = |deadline| {
        let (client, search, form_id, expected) = (&client, &search, &form_id, &expected);
        let counts = move || async move { anyhow::Ok(answers(client, search, form_id).await) };
        async move {
            poll_until(deadline, Duration::from_millis(200), counts, |found| {
                found.as_ref() == Some(expected)
            })
            .await
            .expect("polled")
        }
    };
    let found = settled(Duration::from_secs(120)).await;
    assert_eq!(
        found.as_ref(),
        Some(&expected),
        "per-city answers after {} kills",
        lives - 1
    );
    // And once more from the counts saved with the last commit.
    slang.kill();
    let _slang = start(&mut lives);
    let found = settled(Duration::from_secs(60)).await;
    assert_eq!(found, Some(expected.clone()), "after a last restart");
    topics.delete().await;
}
