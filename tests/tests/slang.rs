//! The slang processor on the real broker: multilingual answers indexed by city and
//! searched through its API; corrections, restarts and rebuilds.
//!
//! Invariants proved here: words are Unicode words in every script (Hindi, Tamil, Bengali, Urdu,
//! and Latin mixed with Devanagari); counts are per answer, per city; a correction replaces its
//! earlier entries and an older revision arriving late changes nothing; a restart over the same
//! topic duplicates nothing (the index resumes from the offsets in its own commits); a deleted
//! index rebuilds from the topic to the same answers, although the group has committed the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use formstream_runtime::RuntimeConfig;
use formstream_schemas::fixtures;
use formstream_schemas::{Form, FormVersion, QuestionType, Response, Slang};
use formstream_tests::runtime::*;
use formstream_tests::slang::{SlangProcess, search_listener};
use formstream_tests::{ACME_KEY, GLOBEX_KEY};
use serde_json::{Value, json};

const FORM: &str = "slang-survey";

fn form(id: &str) -> Form {
    let mut form = test_form(id);
    form.versions[0] = FormVersion {
        title: "Slang".into(),
        slang: Some(Slang {
            city_question: "city".into(),
            text_questions: vec!["slang".into()],
        }),
        created_at: form.created_at,
        ..fixtures::version(
            1,
            vec![
                fixtures::choice_question(
                    "city",
                    QuestionType::MultipleChoice,
                    &["pune", "chennai", "kolkata", "lucknow"],
                ),
                fixtures::question("slang", QuestionType::Text),
                fixtures::question("name", QuestionType::Text),
            ],
        )
    };
    form
}

fn response(form_id: &str, id: &str, revision: i32, cities: &[&str], text: &str) -> Response {
    let mut r = test_response(form_id, id, revision);
    r.answers = vec![
        fixtures::choice_answer("city", cities),
        fixtures::text_answer("slang", text),
        // Not in the slang action: never indexed.
        fixtures::text_answer("name", "भाई Secret"),
    ];
    r
}

/// The multilingual fixtures: (response id, cities, answer).
const FIXTURES: &[(&str, &[&str], &str)] = &[
    ("r1", &["pune"], "क्या बात है भाई"),
    ("r2", &["pune"], "भाई एकदम झकास"),
    ("r3", &["pune"], "क्या scene है bhai"),
    ("r4", &["chennai"], "வணக்கம் மச்சான்"),
    ("r5", &["chennai"], "மச்சான் சூப்பர்"),
    ("r6", &["kolkata"], "কী খবর দাদা"),
    ("r7", &["kolkata"], "দাদা দারুণ"),
    ("r8", &["lucknow"], "کیا حال ہے بھائی"),
    ("r9", &["lucknow"], "بھائی زبردست"),
    ("r10", &["pune", "lucknow"], "भाई mast hai, BHAI!"),
];

struct Slangd {
    process: SlangProcess,
    client: reqwest::Client,
}

fn keys_file(dir: &Path) -> PathBuf {
    let path = dir.join("api-keys.toml");
    let entry = |org: &str, key: &str| {
        format!(
            "[[keys]]\norganisation = \"{org}\"\nsha256 = \"{}\"\nname = \"test\"\n",
            hex::encode(formstream_core::api::keys::hash_key(key))
        )
    };
    std::fs::write(
        &path,
        entry("acme", ACME_KEY) + &entry("globex", GLOBEX_KEY),
    )
    .expect("writing the keys file");
    path
}

impl Slangd {
    async fn start(config: RuntimeConfig, index_dir: &Path, keys: &Path) -> Slangd {
        let (search, _) = search_listener().await;
        Slangd {
            process: SlangProcess::start_in(config, search, index_dir, keys).await,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
        }
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.process.search_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("the search API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(ACME_KEY, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    async fn stop(self) {
        self.process.stop().await;
    }
}

/// City -> [(word, answers)] for one question, as the words API gives it.
fn words_of(body: &Value) -> Vec<(String, Vec<(String, u64)>)> {
    body["cities"]
        .as_array()
        .expect("cities")
        .iter()
        .map(|c| {
            let words = c["words"]
                .as_array()
                .expect("words")
                .iter()
                .map(|w| {
                    (
                        w["word"].as_str().expect("word").to_owned(),
                        w["answers"].as_u64().expect("answers"),
                    )
                })
                .collect();
            (c["city"].as_str().expect("city").to_owned(), words)
        })
        .collect()
}

fn count(body: &Value, city: &str, word: &str) -> u64 {
    words_of(body)
        .into_iter()
        .find(|(c, _)| c == city)
        .and_then(|(_, words)| words.into_iter().find(|(w, _)| w == word))
        .map_or(0, |(_, n)| n)
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Everything the API says about the fixtures, to compare across restarts and rebuilds.
async fn snapshot(slang: &Slangd, form: &str) -> Value {
    let base = format!("/v1/forms/{form}/slang/slang");
    let mut cities = Vec::new();
    for word in ["भाई", "क्या", "மச்சான்", "দাদা", "بھائی", "bhai", "झकास", "बिंदास"]
    {
        cities.push(
            slang
                .ok(&format!("{base}/cities?word={}", encode(word)))
                .await,
        );
    }
    // Scores depend on the segments' statistics (deleted documents count until merged), and so
    // does the order of equal scores: compare the answers as a set.
    let answers = slang
        .ok(&format!("{base}/answers?q={}&limit=100", encode("भाई")))
        .await;
    let mut items: Vec<Value> = answers["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| json!([i["response_id"], i["revision"], i["cities"], i["text"]]))
        .collect();
    items.sort_by_key(Value::to_string);
    json!({
        "words": slang.ok(&format!("{base}/words?limit=50")).await,
        "cities": cities,
        "answers": {"total": answers["total"], "items": items},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multilingual_answers_by_city_corrections_restart_and_rebuild() {
    init_logs();
    let topics = RuntimeTopics::create(3).await;
    let producer = TestProducer::new(&topics);
    let form_id = format!("{FORM}-{}", formstream_tests::unique());
    producer.form(&form(&form_id)).await;
    let items: Vec<(i32, Response)> = FIXTURES
        .iter()
        .enumerate()
        .map(|(i, (id, cities, text))| ((i % 3) as i32, response(&form_id, id, 0, cities, text)))
        .collect();
    producer.responses(&items).await;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = keys_file(dir.path());
    let index_dir = dir.path().join("index");
    let slang = Slangd::start(topics.config(&[]), &index_dir, &keys).await;
    let base = format!("/v1/forms/{form_id}/slang/slang");

    // Words per city, once everything is indexed (and committed: searches see commits).
    let words_url = format!("{base}/words?limit=50");
    eventually(
        Duration::from_secs(60),
        "all ten answers are searchable",
        || {
            let (slang, url) = (&slang, &words_url);
            async move {
                let body = slang.ok(url).await;
                words_of(&body)
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    == ["pune", "lucknow", "chennai", "kolkata"]
                    && body["cities"][0]["answers"] == 4
                    && body["cities"][1]["answers"] == 3
            }
        },
    )
    .await;
    let words = slang.ok(&words_url).await;
    // Hindi, with "क्या" one word (Tantivy's default tokenizer would give "क" and "या"); the
    // mixed answer counts "bhai" once per answer although it says "BHAI" twice.
    assert_eq!(words_of(&words)[0].1[0], ("भाई".to_owned(), 3), "{words}");
    assert_eq!(count(&words, "pune", "क्या"), 2);
    assert_eq!(count(&words, "pune", "क"), 0);
    assert_eq!(count(&words, "pune", "bhai"), 2);
    assert_eq!(
        count(&words, "pune", "secret"),
        0,
        "other questions are not indexed"
    );
    assert_eq!(count(&words, "chennai", "மச்சான்"), 2);
    assert_eq!(count(&words, "kolkata", "দাদা"), 2);
    assert_eq!(count(&words, "lucknow", "بھائی"), 2);
    assert_eq!(
        count(&words, "lucknow", "भाई"),
        1,
        "a multiple choice counts in each city"
    );
    let pune_phrases = &words["cities"][0]["phrases"];
    assert!(
        pune_phrases
            .as_array()
            .expect("phrases")
            .iter()
            .any(|p| p["word"] == "क्या बात" && p["answers"] == 1),
        "{pune_phrases}"
    );
    let one_city = slang
        .ok(&format!("{base}/words?city=chennai&limit=1"))
        .await;
    assert_eq!(
        words_of(&one_city),
        [("chennai".to_owned(), vec![("மச்சான்".to_owned(), 2)])]
    );

    // Cities per word.
    let cities = slang
        .ok(&format!("{base}/cities?word={}", encode("भाई")))
        .await;
    assert_eq!(
        cities["cities"],
        json!([{"city": "pune", "answers": 3}, {"city": "lucknow", "answers": 1}])
    );
    let cities = slang
        .ok(&format!("{base}/cities?word={}", encode("বাংলা নেই")))
        .await;
    assert_eq!(cities["cities"], json!([]));

    // Answers matching a query, by city, in pages.
    let page = slang
        .ok(&format!(
            "{base}/answers?q={}&city=pune&limit=2",
            encode("भाई")
        ))
        .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    assert_eq!(page["next_offset"], 2);
    let last = slang
        .ok(&format!(
            "{base}/answers?q={}&city=pune&limit=2&offset=2",
            encode("भाई")
        ))
        .await;
    assert_eq!(last["items"].as_array().expect("items").len(), 1);
    assert_eq!(last["next_offset"], Value::Null);
    let phrase = slang
        .ok(&format!("{base}/answers?q={}", encode("\"scene है\"")))
        .await;
    assert_eq!(phrase["total"], 1);
    assert_eq!(phrase["items"][0]["response_id"], "r3");
    assert_eq!(phrase["items"][0]["text"], "क्या scene है bhai");

    // Scoping and problems.
    let (status, body) = slang.get(GLOBEX_KEY, &words_url).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = slang.get("no-such-key", &words_url).await;
    assert_eq!(status, 401);
    let (status, _) = slang
        .get(ACME_KEY, &format!("/v1/forms/{form_id}/slang/name/words"))
        .await;
    assert_eq!(
        status, 404,
        "questions outside the slang action are not searchable"
    );
    let (status, body) = slang
        .get(ACME_KEY, &format!("{base}/answers?limit=0"))
        .await;
    assert_eq!(status, 422);
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["pointer"].as_str().expect("pointer"))
        .collect();
    assert_eq!(pointers, ["/limit", "/q"], "{body}");

    // A correction replaces its earlier entries; its older revision arriving late changes nothing.
    producer
        .responses(&[(1, response(&form_id, "r2", 1, &["pune"], "भाई एकदम बिंदास"))])
        .await;
    producer
        .responses(&[(2, response(&form_id, "r2", 0, &["pune"], "भाई एकदम झकास"))])
        .await;
    eventually(
        Duration::from_secs(30),
        "the correction is searchable",
        || {
            let (slang, url) = (&slang, &words_url);
            async move { count(&slang.ok(url).await, "pune", "बिंदास") == 1 }
        },
    )
    .await;
    // A marker after the late revision, on the same partition: once it is searchable, the late
    // revision has been handled.
    producer
        .responses(&[(
            2,
            response(&form_id, "marker-1", 0, &["kolkata"], "ঠিক আছে"),
        )])
        .await;
    eventually(Duration::from_secs(30), "the marker is searchable", || {
        let (slang, url) = (&slang, &words_url);
        async move { count(&slang.ok(url).await, "kolkata", "ঠিক") == 1 }
    })
    .await;
    let words = slang.ok(&words_url).await;
    assert_eq!(count(&words, "pune", "झकास"), 0, "{words}");
    assert_eq!(
        count(&words, "pune", "भाई"),
        3,
        "the correction replaced, not added"
    );
    let before = snapshot(&slang, &form_id).await;
    slang.stop().await;

    // A restart over the same topic: the same answers, nothing doubled.
    let slang = Slangd::start(topics.config(&[]), &index_dir, &keys).await;
    producer
        .responses(&[(0, response(&form_id, "marker-2", 0, &["chennai"], "சரி"))])
        .await;
    eventually(
        Duration::from_secs(30),
        "the second marker is searchable",
        || {
            let (slang, url) = (&slang, &words_url);
            async move { count(&slang.ok(url).await, "chennai", "சரி") == 1 }
        },
    )
    .await;
    let mut expected = before.clone();
    let after_restart = snapshot(&slang, &form_id).await;
    // Only the second marker's city changed: compare everything else.
    let strip = |mut v: Value| {
        v["words"]["cities"]
            .as_array_mut()
            .expect("cities")
            .retain(|c| c["city"] != "chennai");
        v
    };
    assert_eq!(strip(after_restart.clone()), strip(expected.clone()));
    slang.stop().await;

    // A rebuild from an empty index: the group has committed the end of every partition, yet the
    // index reads the topic again from the beginning and answers the same.
    std::fs::remove_dir_all(&index_dir).expect("deleting the index");
    let committed = committed_offsets(&topics).await.expect("group offsets");
    assert_eq!(committed, end_offsets(&topics).await.expect("ends"));
    let slang = Slangd::start(topics.config(&[]), &index_dir, &keys).await;
    eventually(
        Duration::from_secs(60),
        "the rebuilt index answers the same",
        || {
            let (slang, form_id, after_restart) = (&slang, &form_id, &after_restart);
            async move { &snapshot(slang, form_id).await == after_restart }
        },
    )
    .await;
    expected = snapshot(&slang, &form_id).await;
    assert_eq!(count(&expected["words"], "pune", "भाई"), 3);
    slang.stop().await;
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redriven_record_already_indexed_is_not_counted_twice() {
    init_logs();
    let topics = RuntimeTopics::create(3).await;
    let producer = TestProducer::new(&topics);
    let form_id = format!("{FORM}-{}", formstream_tests::unique());
    producer.form(&form(&form_id)).await;
    let items: Vec<(i32, Response)> = FIXTURES[..3]
        .iter()
        .enumerate()
        .map(|(i, (id, cities, text))| ((i % 3) as i32, response(&form_id, id, 0, cities, text)))
        .collect();
    let produced = producer.responses(&items).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = keys_file(dir.path());
    let slang = Slangd::start(topics.config(&[]), &dir.path().join("index"), &keys).await;
    let pune = format!("/v1/forms/{form_id}/slang/slang/words?city=pune&limit=50");
    eventually(Duration::from_secs(60), "three answers indexed", || {
        let (slang, url) = (&slang, &pune);
        async move { slang.ok(url).await["cities"][0]["answers"] == 3 }
    })
    .await;
    let before = slang.ok(&pune).await;
    assert_eq!(count(&before, "pune", "भाई"), 2, "{before}");

    // r1 dead-lettered after all (say its batch timed out after the index had it), re-driven.
    dead_letter_and_redrive(
        &topics,
        "slang",
        &topics.responses,
        produced[0].partition,
        produced[0].offset,
    )
    .await;
    // A later answer: once it is searchable, so is everything handled before it.
    producer
        .responses(&[(0, response(&form_id, "later", 0, &["chennai"], "வணக்கம்"))])
        .await;
    let chennai = format!("/v1/forms/{form_id}/slang/slang/words?city=chennai&limit=50");
    eventually(Duration::from_secs(60), "the later answer indexed", || {
        let (slang, url) = (&slang, &chennai);
        async move { slang.ok(url).await["cities"][0]["answers"] == 1 }
    })
    .await;
    assert_eq!(slang.ok(&pune).await, before, "r1 counted once");
    slang.stop().await;
    topics.delete().await;
}
