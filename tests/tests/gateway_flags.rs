//! End-to-end tests of `GET /v1/forms/{form_id}/flags` against the real broker: the gateway's flags
//! view follows the response-flags topic as the validate processor writes it, in Kafka
//! transactions.
//!
//! Invariant proved here: the API shows exactly the committed outcomes (never an aborted one), a
//! flag resolved by a later clean revision stays resolved whatever older outcome comes again, and
//! an organisation sees only its own forms' flags.

use std::time::{Duration, Instant};

use formstream_core::config::KafkaArgs;
use formstream_core::topics::{TopicSpec, ensure_topics};
use formstream_schemas::{Codec, Encoder, FlagStatus, ResponseFlag, Violation};
use formstream_tests::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use reqwest::Method;
use serde_json::Value;

/// Publishes outcomes to a test's flags topic the way the validate processor does: in
/// transactions, keyed by form id.
struct FlagsProducer {
    producer: FutureProducer,
    topic: String,
    encoder: Encoder<ResponseFlag>,
}

/// What the transactional calls may take; the local broker answers in milliseconds.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl FlagsProducer {
    async fn new(app: &TestGateway) -> Self {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &app.bootstrap)
            .set("transactional.id", format!("test-flags-{}", unique()))
            .create()
            .expect("creating a transactional producer");
        // The transactional calls block; the runtime has other workers for the gateway.
        tokio::task::block_in_place(|| producer.init_transactions(TXN_TIMEOUT))
            .expect("initialising transactions");
        let encoder = Codec::single_object()
            .encoder::<ResponseFlag>(&app.topics.flags)
            .await
            .expect("a ResponseFlag encoder");
        FlagsProducer {
            producer,
            topic: app.topics.flags.clone(),
            encoder,
        }
    }

    /// Publishes `flags` in one transaction, then commits it or aborts it.
    async fn transaction(&self, flags: &[ResponseFlag], commit: bool) {
        self.producer
            .begin_transaction()
            .expect("beginning a transaction");
        for flag in flags {
            let payload = self.encoder.encode(flag).expect("encoding a flag");
            self.producer
                .send(
                    FutureRecord::to(&self.topic)
                        .key(&flag.form_id)
                        .payload(&payload),
                    TXN_TIMEOUT,
                )
                .await
                .map_err(|(error, _)| error)
                .expect("producing a flag");
        }
        tokio::task::block_in_place(|| {
            if commit {
                self.producer.commit_transaction(TXN_TIMEOUT)
            } else {
                self.producer.abort_transaction(TXN_TIMEOUT)
            }
        })
        .expect("ending a transaction");
    }
}

fn outcome(
    form_id: &str,
    response_id: &str,
    revision: i32,
    flagged: bool,
    at: i64,
) -> ResponseFlag {
    ResponseFlag {
        response_id: response_id.to_owned(),
        form_id: form_id.to_owned(),
        form_version: 1,
        organisation: "acme".to_owned(),
        revision,
        collector_id: "collector-7".to_owned(),
        collector_phone: None,
        status: if flagged {
            FlagStatus::Flagged
        } else {
            FlagStatus::Clean
        },
        violations: if flagged {
            vec![Violation {
                rule_id: format!("income-positive-r{revision}"),
                message: "Monthly income must be positive".to_owned(),
                question_keys: vec!["income".to_owned()],
                error: None,
            }]
        } else {
            Vec::new()
        },
        evaluated_at: at,
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fixed point in time plus `n` seconds, so that the expected order is known.
fn at(n: i64) -> i64 {
    1_780_000_000_000 + n * 1_000
}

/// `GET /v1/forms/{form_id}/flags<query>` with `key`.
async fn list(app: &TestGateway, key: &str, form_id: &str, query: &str) -> (u16, Value) {
    send_json(app.as_key(
        key,
        Method::GET,
        &format!("/v1/forms/{form_id}/flags{query}"),
    ))
    .await
}

/// The response ids of a listing, in order.
fn ids(listing: &Value) -> Vec<String> {
    listing["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing has items: {listing}"))
        .iter()
        .map(|item| item["response_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The item for `response_id` in a listing.
fn item<'a>(listing: &'a Value, response_id: &str) -> Option<&'a Value> {
    listing["items"]
        .as_array()?
        .iter()
        .find(|item| item["response_id"] == response_id)
}

/// Polls the `status` listing of `form_id` (acme) until it contains `response_id`, with a deadline;
/// returns that listing.
async fn wait_listed(app: &TestGateway, form_id: &str, status: &str, response_id: &str) -> Value {
    let query = format!("?status={status}&limit=500");
    let started = Instant::now();
    loop {
        let (code, listing) = list(app, ACME_KEY, form_id, &query).await;
        if code == 200 && item(&listing, response_id).is_some() {
            return listing;
        }
        assert!(
            started.elapsed() < READ_DEADLINE,
            "{response_id} not listed as {status} within {READ_DEADLINE:?}; last answer {code}: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_open_resolve_and_never_reopen_and_aborted_outcomes_never_show() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let producer = FlagsProducer::new(&app).await;
    let (asha, ravi, aborted, marker) = (new_id(), new_id(), new_id(), new_id());

    producer
        .transaction(
            &[
                outcome(&form, &asha, 0, true, at(1)),
                outcome(&form, &ravi, 0, true, at(2)),
            ],
            true,
        )
        .await;
    // Aborted: a flag that must never show, and a clean revision that must not resolve asha.
    producer
        .transaction(
            &[
                outcome(&form, &aborted, 0, true, at(3)),
                outcome(&form, &asha, 1, false, at(4)),
            ],
            false,
        )
        .await;
    // Same key, same partition: once the marker shows, the aborted records were read past.
    producer
        .transaction(&[outcome(&form, &marker, 0, true, at(5))], true)
        .await;

    let open = wait_listed(&app, &form, "open", &marker).await;
    assert_eq!(open["form_id"], form.as_str());
    assert_eq!(open["status"], "open");
    assert_eq!(
        ids(&open),
        [asha.clone(), ravi.clone(), marker.clone()],
        "oldest flag first"
    );
    let flag = item(&open, &asha).expect("asha is open");
    assert_eq!(flag["status"], "open");
    assert_eq!(flag["revision"], 0);
    assert_eq!(flag["flagged_revision"], 0);
    assert_eq!(flag["collector_id"], "collector-7");
    assert_eq!(flag["flagged_at"], "2026-05-28T20:26:41Z");
    assert_eq!(
        flag["violations"],
        serde_json::json!([{
            "rule_id": "income-positive-r0",
            "message": "Monthly income must be positive",
            "question_keys": ["income"],
            "error": null
        }])
    );
    assert!(flag.get("resolved_at").is_none(), "open: {flag}");
    assert_eq!(open["next_cursor"], Value::Null);
    let (_, resolved) = list(&app, ACME_KEY, &form, "?status=resolved").await;
    assert_eq!(ids(&resolved), Vec::<String>::new(), "nothing resolved yet");

    // The collector corrects asha's response; revision 1 passes.
    producer
        .transaction(&[outcome(&form, &asha, 1, false, at(10))], true)
        .await;
    let resolved = wait_listed(&app, &form, "resolved", &asha).await;
    let flag = item(&resolved, &asha).expect("asha is resolved");
    assert_eq!(flag["status"], "resolved");
    assert_eq!(flag["revision"], 1);
    assert_eq!(flag["flagged_revision"], 0);
    assert_eq!(flag["resolved_by_revision"], 1);
    assert!(flag["resolved_at"].is_string(), "{flag}");
    assert_eq!(
        flag["violations"][0]["rule_id"], "income-positive-r0",
        "the reasons of the flag are kept"
    );

    // Revision 0 flagged again (a replay of the validate processor): it must not reopen asha.
    let second_marker = new_id();
    producer
        .transaction(
            &[
                outcome(&form, &asha, 0, true, at(11)),
                outcome(&form, &second_marker, 0, true, at(12)),
            ],
            true,
        )
        .await;
    let open = wait_listed(&app, &form, "open", &second_marker).await;
    assert_eq!(
        ids(&open),
        [ravi.clone(), marker.clone(), second_marker.clone()]
    );
    let (status, resolved_again) = list(&app, ACME_KEY, &form, "?status=resolved").await;
    assert_eq!(status, 200);
    assert_eq!(item(&resolved_again, &asha), item(&resolved, &asha));

    for listing in [&open, &resolved_again] {
        assert!(
            item(listing, &aborted).is_none(),
            "an aborted outcome never shows: {listing}"
        );
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_scoped_checked_and_paged() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let producer = FlagsProducer::new(&app).await;
    let expected: Vec<String> = (0..5).map(|_| new_id()).collect();
    // Published newest first; listed oldest flag first.
    let flags: Vec<ResponseFlag> = expected
        .iter()
        .enumerate()
        .rev()
        .map(|(i, id)| outcome(&form, id, 0, true, at(i as i64)))
        .collect();
    producer.transaction(&flags, true).await;
    let last = expected.last().cloned().expect("five ids");
    wait_listed(&app, &form, "open", &last).await;

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    for page in 0.. {
        assert!(page < 5, "paging ends: {seen:?}");
        let (status, listing) = list(&app, ACME_KEY, &form, &query).await;
        assert_eq!(status, 200, "{listing}");
        assert!(ids(&listing).len() <= 2, "a page holds at most the limit");
        seen.extend(ids(&listing));
        match listing["next_cursor"].as_str() {
            None => break,
            Some(cursor) => {
                let mut url = reqwest::Url::parse("http://x/?limit=2").expect("a URL");
                url.query_pairs_mut().append_pair("after", cursor);
                query = format!("?{}", url.query().unwrap_or_default());
            }
        }
    }
    assert_eq!(seen, expected, "every flag once, oldest first");

    // Another organisation's key, and an unknown form, get the same 404.
    let other = app
        .globex(Method::GET, &format!("/v1/forms/{form}/flags"))
        .send()
        .await
        .expect("GET as globex");
    assert_problem(other, 404).await;
    let unknown = app
        .acme(Method::GET, &format!("/v1/forms/nope-{}/flags", unique()))
        .send()
        .await
        .expect("GET an unknown form");
    assert_problem(unknown, 404).await;
    let anonymous = app
        .client
        .get(app.url(&format!("/v1/forms/{form}/flags")))
        .send()
        .await
        .expect("GET without a key");
    assert_problem(anonymous, 401).await;

    // Bad parameters: 422, each one named.
    let bad = app
        .acme(
            Method::GET,
            &format!("/v1/forms/{form}/flags?status=closed&limit=0&after=x"),
        )
        .send()
        .await
        .expect("GET with bad parameters");
    let problem = assert_problem(bad, 422).await;
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/after", "invalid_cursor"),
            ("/limit", "invalid_limit"),
            ("/status", "invalid_status"),
        ])
    );
    let too_many = app
        .acme(Method::GET, &format!("/v1/forms/{form}/flags?limit=501"))
        .send()
        .await
        .expect("GET with a large limit");
    assert_problem(too_many, 422).await;
    app.finish().await;
}

/// Without its topic the flags view never catches up: the flags API answers 503 with Retry-After,
/// while the gateway is ready and serves everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_answer_503_until_their_view_caught_up_without_holding_readiness() {
    let topics = Topics::fresh();
    let kafka = KafkaArgs {
        bootstrap: bootstrap(),
        properties: Vec::new(),
    };
    let specs: Vec<TopicSpec> = [&topics.forms, &topics.responses]
        .into_iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: 2,
            replication_factor: 1,
            config: Vec::new(),
        })
        .collect();
    ensure_topics(&kafka, &specs, Duration::from_secs(30))
        .await
        .expect("creating the forms and responses topics");
    let app = spawn_gateway(
        GatewayOptions {
            topics: Some(topics),
            ..GatewayOptions::default()
        }
        .arg("--create-topics", "false")
        .arg("--retry-after-secs", 7),
    )
    .await;
    let form = app.create_typical_form().await;

    let response = app
        .acme(Method::GET, &format!("/v1/forms/{form}/flags"))
        .send()
        .await
        .expect("GET flags");
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let problem = assert_problem(response, 503).await;
    assert_eq!(retry_after.as_deref(), Some("7"));
    assert_eq!(problem["type"], "/problems/not-ready");
    let (status, _) = send_json(app.acme(Method::GET, &format!("/v1/forms/{form}"))).await;
    assert_eq!(status, 200, "the rest of the API is served");
    app.finish().await;
}
