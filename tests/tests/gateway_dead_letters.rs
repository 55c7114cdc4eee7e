//! `/v1/dead-letters` through the real gateway and broker: the `journal` processor of
//! the same binary dead-letters responses while an outage outlasts its retry budget; after the
//! fix, their organisation re-drives them over HTTP and each takes effect exactly once (re-driving
//! again is skipped), and another organisation's API key can neither list, show, re-drive nor
//! discard them. Build the binary first (`cargo build --bin formstream`; `deploy/local/test.sh`
//! does).
//!
//! Invariant proved here: the HTTP routes are the re-drive library's operations scoped to the
//! caller's organisation: exactly once, 404 for another organisation's dead letter as for a
//! missing one, 422 problems at their pointers, phone numbers redacted.

use std::path::PathBuf;
use std::time::Duration;

use formstream_runtime::redrive::RedriveTopics;
use formstream_tests::runtime::*;
use formstream_tests::{
    GatewayOptions, TestGateway, assert_problem, field_problems, pairs, send_json, spawn_gateway,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The collectors' phone on every dead-lettered response: never shown in full.
const PHONE: &str = "+14155550123";

/// Dead letters of acme's responses, waiting in the journal processor's dead-letter topic, and a
/// gateway serving them.
struct Setup {
    topics: RuntimeTopics,
    gateway: TestGateway,
    journal: PathBuf,
    outage: PathBuf,
    /// The dead letters' ids, as the gateway lists them.
    ids: Vec<String>,
    _process: JournalProcess,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(count: usize) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (journal, outage) = (dir.path().join("journal.jsonl"), dir.path().join("down"));
        let topics = RuntimeTopics::create(2).await;
        let producer = TestProducer::new(&topics);
        let forms = forms_per_partition(&producer, 2).await;
        std::fs::write(&outage, b"").expect("taking the journal down");
        let process =
            JournalProcess::start(&topics, &journal, &outage, &dir.path().join("journal.log"));
        let mut responses = fresh_responses(&forms, count);
        for (_, response) in &mut responses {
            response.collector.phone = Some(PHONE.to_owned());
        }
        producer.responses(&responses).await;
        let gateway = spawn_gateway(GatewayOptions::default().arg(
            "--dead-letter-processors",
            format!("journal={}", topics.dlq),
        ))
        .await;
        eventually(
            Duration::from_secs(90),
            "every response dead-lettered",
            || async { pending(&gateway, "acme").await.len() == count },
        )
        .await;
        let ids = pending(&gateway, "acme")
            .await
            .iter()
            .map(|letter| letter["id"].as_str().expect("an id").to_owned())
            .collect();
        Setup {
            topics,
            gateway,
            journal,
            outage,
            ids,
            _process: process,
            _dir: dir,
        }
    }

    fn fix(&self) {
        std::fs::remove_file(&self.outage).expect("ending the outage");
    }

    async fn finish(self) {
        self.gateway.finish().await;
        self.topics.delete().await;
    }
}

fn as_org(gateway: &TestGateway, org: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    match org {
        "acme" => gateway.acme(method, path),
        _ => gateway.globex(method, path),
    }
}

/// A GET that must answer 200, as JSON.
async fn get(gateway: &TestGateway, org: &str, path: &str) -> Value {
    let (status, body) = send_json(as_org(gateway, org, Method::GET, path)).await;
    assert_eq!(status, 200, "GET {path} as {org}: {body}");
    body
}

/// `org`'s pending dead letters of the journal processor.
async fn pending(gateway: &TestGateway, org: &str) -> Vec<Value> {
    let (status, page) = send_json(as_org(
        gateway,
        org,
        Method::GET,
        "/v1/dead-letters/journal",
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// A re-drive or discard that must answer 200: its outcome.
async fn change(gateway: &TestGateway, org: &str, action: &str, body: Value) -> Value {
    let path = format!("/v1/dead-letters/journal/{action}");
    let (status, outcome) = send_json(as_org(gateway, org, Method::POST, &path).json(&body)).await;
    assert_eq!(status, 200, "POST {path} {body} as {org}: {outcome}");
    outcome
}

fn sorted(values: &Value) -> Vec<String> {
    let mut ids: Vec<String> = values
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_redriven_over_http_after_the_fix_exactly_once() {
    let setup = Setup::start(4).await;
    let gateway = &setup.gateway;
    let mut ids = setup.ids.clone();
    ids.sort();

    for letter in pending(gateway, "acme").await {
        assert_eq!(letter["status"], "pending");
        assert_eq!(letter["error"]["kind"], "retries_exhausted");
        assert_eq!(letter["record"]["organisation"], "acme");
    }
    let counts = get(gateway, "acme", "/v1/dead-letters").await;
    assert_eq!(
        counts,
        json!({"processors": [{"processor": "journal", "pending": 4}]})
    );
    let one = &setup.ids[0];
    let shown = get(gateway, "acme", &format!("/v1/dead-letters/journal/{one}")).await;
    assert_eq!(shown["id"], one.as_str());
    assert_eq!(shown["value"]["organisation"], "acme");
    let text = shown.to_string();
    assert!(!text.contains(&PHONE[2..]), "a phone shown in full: {text}");
    assert!(text.contains("+1******0123"), "{text}");
    assert!(read_journal(&setup.journal).is_empty());

    // Fixed: re-driven by id, each journaled once.
    setup.fix();
    let outcome = change(gateway, "acme", "redrive", json!({ "ids": ids })).await;
    assert_eq!(outcome["action"], "redrive");
    assert_eq!(sorted(&outcome["done"]), ids);
    assert_eq!(outcome["skipped"], json!([]));
    eventually(
        Duration::from_secs(60),
        "every re-driven response journaled",
        || async { journaled(&setup.journal).len() == 4 },
    )
    .await;

    // Again: skipped, by id and by filter.
    let again = change(gateway, "acme", "redrive", json!({ "ids": ids })).await;
    assert_eq!(again["done"], json!([]));
    let skipped = again["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 4, "{again}");
    assert!(skipped.iter().all(|s| s["status"] == "redriven"), "{again}");
    let all = change(gateway, "acme", "redrive", json!({ "filter": {} })).await;
    assert_eq!(all["done"], json!([]));

    let shown = get(gateway, "acme", &format!("/v1/dead-letters/journal/{one}")).await;
    assert_eq!(shown["status"], "redriven");
    assert_eq!(shown["handled"]["by"], "acme/test");
    assert!(pending(gateway, "acme").await.is_empty());
    let redriven = get(gateway, "acme", "/v1/dead-letters/journal?status=redriven").await;
    assert_eq!(redriven["items"].as_array().map(Vec::len), Some(4));
    let counts = get(gateway, "acme", "/v1/dead-letters").await;
    assert_eq!(counts["processors"][0]["pending"], 0);

    // Once the processor has finished every copy, each response was journaled exactly once,
    // from the re-drive topic.
    let redrive = RedriveTopics::of(&setup.topics.dlq).redrive;
    let ends = end_offsets_of(&setup.topics, &redrive).await.expect("ends");
    eventually(
        Duration::from_secs(30),
        "the re-drives committed",
        || async {
            committed_offsets_of(&setup.topics, &redrive)
                .await
                .is_ok_and(|c| ends.iter().all(|(p, e)| *e == 0 || c.get(p) == Some(e)))
        },
    )
    .await;
    let journaled = journaled(&setup.journal);
    assert_eq!(journaled.len(), 4);
    for (response, entries) in journaled {
        assert_eq!(entries.len(), 1, "{response}: {entries:#?}");
        assert_eq!(entries[0].topic, redrive);
    }
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_organisation_cannot_list_show_redrive_or_discard_them() {
    let setup = Setup::start(2).await;
    let gateway = &setup.gateway;
    setup.fix();
    let one = setup.ids[0].clone();

    // globex sees none of acme's.
    let counts = get(gateway, "globex", "/v1/dead-letters").await;
    assert_eq!(
        counts,
        json!({"processors": [{"processor": "journal", "pending": 0}]})
    );
    assert!(pending(gateway, "globex").await.is_empty());
    let every = get(gateway, "globex", "/v1/dead-letters/journal?status=all").await;
    assert_eq!(every["items"], json!([]));
    let path = format!("/v1/dead-letters/journal/{one}");
    let send = |method: Method, path: String, body: Option<Value>| {
        let request = gateway.globex(method, &path);
        async move {
            match body {
                Some(body) => request.json(&body),
                None => request,
            }
            .send()
            .await
            .expect("sending")
        }
    };
    assert_problem(send(Method::GET, path.clone(), None).await, 404).await;
    for action in ["redrive", "discard"] {
        let path = format!("/v1/dead-letters/journal/{action}");
        let by_id = Some(json!({ "ids": [one] }));
        assert_problem(send(Method::POST, path.clone(), by_id).await, 404).await;
        let outcome = change(gateway, "globex", action, json!({ "filter": {} })).await;
        assert_eq!(outcome["done"], json!([]), "{outcome}");
    }
    // A missing dead letter answers the same.
    assert_problem(
        send(
            Method::GET,
            "/v1/dead-letters/journal/0-999999".into(),
            None,
        )
        .await,
        404,
    )
    .await;

    // acme's are untouched, and nothing ran.
    assert_eq!(pending(gateway, "acme").await.len(), 2);
    let shown = get(gateway, "acme", &path).await;
    assert_eq!(shown["status"], "pending");
    assert!(read_journal(&setup.journal).is_empty());

    // Bad input: 422 at its pointers; an unknown processor: 404.
    let problem = assert_problem(
        gateway
            .acme(
                Method::GET,
                "/v1/dead-letters/journal?kind=nope&since=yesterday&limit=0",
            )
            .send()
            .await
            .expect("sending"),
        422,
    )
    .await;
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/kind", "invalid_kind"),
            ("/since", "invalid_time"),
            ("/limit", "invalid_limit"),
        ])
    );
    let problem = assert_problem(
        gateway
            .acme(Method::POST, "/v1/dead-letters/journal/redrive")
            .json(&json!({"ids": [one, "banana"]}))
            .send()
            .await
            .expect("sending"),
        422,
    )
    .await;
    assert_eq!(field_problems(&problem), pairs(&[("/ids/1", "invalid_id")]));
    let problem = assert_problem(
        gateway
            .acme(Method::POST, "/v1/dead-letters/journal/discard")
            .json(&json!({"filter": {"kind": "permanent", "until": "soon"}}))
            .send()
            .await
            .expect("sending"),
        422,
    )
    .await;
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/filter/until", "invalid_time")])
    );
    assert_problem(
        gateway
            .acme(Method::GET, "/v1/dead-letters/no-such-processor")
            .send()
            .await
            .expect("sending"),
        404,
    )
    .await;
    assert_eq!(pending(gateway, "acme").await.len(), 2);
    setup.finish().await;
}
