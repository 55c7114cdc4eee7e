//! The validate processor on the real broker: outcomes of clean, flagged, corrected and
//! erroring responses; a form whose rules do not compile goes to the dead-letter topic; the
//! correction loop through the gateway until the flags API shows the flag resolved; and exactly
//! one flag per (response, revision) through a `kill -9` and a restart (Kafka transactions).
//!
//! The kill test runs `formstream process validate`: build the binary first (`cargo build --bin
//! formstream`; `deploy/local/test.sh` does).

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formstream_schemas::fixtures::{choice_answer, choice_question, number_answer, question, rule};
use formstream_schemas::{
    Answer, Codec, FlagStatus, Form, FormVersion, QuestionType, Response, ResponseFlag, Rule,
};
use formstream_tests::runtime::*;
use formstream_tests::{ACME_KEY, read_topic, send_json, spawn_app, unique};
use formstream_validate::Validate;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::Method;
use serde_json::{Value, json};

/// A household form: savings may not exceed income, and a second language must differ from the
/// first (which errors, index out of range, when only one language is answered).
fn household_form(id: &str, rules: Vec<Rule>) -> Form {
    let mut form = test_form(id);
    let version: &mut FormVersion = &mut form.versions[0];
    version.questions = vec![
        question("monthly_income", QuestionType::Number),
        question("monthly_savings", QuestionType::Number),
        choice_question("langs", QuestionType::MultipleChoice, &["hi", "en", "mr"]),
    ];
    version.rules = rules;
    form
}

fn household_rules() -> Vec<Rule> {
    vec![
        rule(
            "savings_le_income",
            "monthly_savings <= monthly_income",
            &["monthly_savings", "monthly_income"],
        ),
        rule("second_lang_differs", "langs[1] != langs[0]", &["langs"]),
    ]
}

fn answers(income: Option<f64>, savings: Option<f64>, langs: &[&str]) -> Vec<Answer> {
    [
        income.map(|n| number_answer("monthly_income", n)),
        savings.map(|n| number_answer("monthly_savings", n)),
        Some(choice_answer("langs", langs)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn household_response(
    form_id: &str,
    response_id: &str,
    revision: i32,
    answers: Vec<Answer>,
) -> Response {
    let mut response = test_response(form_id, response_id, revision);
    response.answers = answers;
    response
}

/// The validate processor, in-process, on `topics`.
async fn spawn_validate(topics: &RuntimeTopics) -> RunningRuntime {
    let config = topics.config(&[]);
    let validate = Validate::new(&config)
        .await
        .expect("the validate processor");
    spawn_runtime(validate, config).await
}

/// Every committed flag on the flags topic (read_committed), decoded, once `expected` are there.
async fn flags_on_topic(bootstrap: &str, topic: &str, expected: usize) -> Vec<ResponseFlag> {
    let codec = Codec::single_object();
    let started = Instant::now();
    loop {
        let records = read_topic(bootstrap, topic, expected, Duration::from_secs(30))
            .await
            .expect("reading the flags topic");
        if records.len() >= expected || started.elapsed() > Duration::from_secs(60) {
            let mut flags = Vec::with_capacity(records.len());
            for record in records {
                flags.push(
                    codec
                        .decode::<ResponseFlag>(&record.payload)
                        .await
                        .expect("a ResponseFlag"),
                );
            }
            return flags;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcomes_of_clean_flagged_corrected_and_erroring_responses_and_a_bad_form_dead_lettered() {
    init_logs();
    let topics = RuntimeTopics::create(3).await;
    topics.create_flags_topic().await;
    let producer = TestProducer::new(&topics);
    let form = format!("f{}", unique());
    producer
        .form(&household_form(&form, household_rules()))
        .await;
    // Written around the gateway (which refuses it): rules that do not compile.
    let broken = format!("f{}", unique());
    producer
        .form(&household_form(
            &broken,
            vec![rule("dangling", "monthly_income <=", &["monthly_income"])],
        ))
        .await;

    let both = ["hi", "en"];
    let items = vec![
        (
            0,
            household_response(&form, "clean", 0, answers(Some(1000.0), Some(200.0), &both)),
        ),
        (
            0,
            household_response(&form, "over", 0, answers(Some(1000.0), Some(5000.0), &both)),
        ),
        (
            0,
            household_response(&form, "over", 1, answers(Some(1000.0), Some(100.0), &both)),
        ),
        (
            1,
            household_response(
                &form,
                "one-lang",
                0,
                answers(Some(9000.0), Some(10000.0), &["hi"]),
            ),
        ),
        (
            1,
            household_response(&form, "no-savings", 0, answers(Some(1000.0), None, &both)),
        ),
        (
            2,
            household_response(&broken, "orphan", 0, answers(Some(1.0), Some(1.0), &both)),
        ),
    ];
    producer.responses(&items).await;

    let runtime = spawn_validate(&topics).await;
    wait_committed_to_ends(&topics, Duration::from_secs(60)).await;

    let flags = flags_on_topic(&topics.bootstrap, &topics.flags, 5).await;
    let by_id: HashMap<(String, i32), &ResponseFlag> = flags
        .iter()
        .map(|f| ((f.response_id.clone(), f.revision), f))
        .collect();
    assert_eq!(flags.len(), 5, "one flag per response revision: {flags:#?}");
    assert_eq!(by_id.len(), 5, "no (response, revision) twice: {flags:#?}");

    let flag = |id: &str, revision: i32| *by_id.get(&(id.to_owned(), revision)).expect(id);
    assert_eq!(flag("clean", 0).status, FlagStatus::Clean);
    assert!(flag("clean", 0).violations.is_empty());

    // Numbers compare as numbers: 5000 > 1000, and "10000" > "9000" as numbers, not strings.
    let over = flag("over", 0);
    assert_eq!(over.status, FlagStatus::Flagged);
    assert_eq!(over.violations.len(), 1, "{over:?}");
    assert_eq!(over.violations[0].rule_id, "savings_le_income");
    assert_eq!(over.violations[0].message, "savings_le_income failed");
    assert_eq!(over.violations[0].error, None);
    assert_eq!(over.collector_id, "collector-1");
    assert_eq!(
        flag("over", 1).status,
        FlagStatus::Clean,
        "the correction passes"
    );

    // A rule that cannot be evaluated flags the response with the error, beside real violations.
    let one_lang = flag("one-lang", 0);
    assert_eq!(one_lang.status, FlagStatus::Flagged);
    let rules: Vec<&str> = one_lang
        .violations
        .iter()
        .map(|v| v.rule_id.as_str())
        .collect();
    assert_eq!(rules, ["savings_le_income", "second_lang_differs"]);
    assert!(one_lang.violations[0].error.is_none());
    assert!(one_lang.violations[1].error.is_some(), "{one_lang:?}");

    // An unanswered question: the rule over it does not apply.
    assert_eq!(flag("no-savings", 0).status, FlagStatus::Clean);

    // Keyed by form id, with the response id and revision in headers.
    let records = read_topic(&topics.bootstrap, &topics.flags, 5, Duration::from_secs(10))
        .await
        .expect("reading flags");
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(form.as_str()));
        assert!(
            record.headers.contains_key("response_id"),
            "{:?}",
            record.headers
        );
        assert!(
            record.headers.contains_key("revision"),
            "{:?}",
            record.headers
        );
    }

    // The broken form's response: dead-lettered with the reason, and its offset committed.
    let letters = read_topic(&topics.bootstrap, &topics.dlq, 1, Duration::from_secs(30))
        .await
        .expect("reading the dead-letter topic");
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].headers["formstream.dlq.error.message"];
    assert!(reason.contains("do not compile"), "{reason}");
    assert_eq!(letters[0].headers["formstream.dlq.error.kind"], "permanent");
    assert_eq!(
        runtime
            .metric(
                "formstream_processor_outputs_total",
                &[("processor", "validate")]
            )
            .await,
        5.0
    );

    runtime.stop().await.expect("a clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_is_corrected_through_the_gateway_until_its_flag_is_resolved() {
    init_logs();
    let app = spawn_app().await;
    let form_id = format!("hh{}", unique());
    app.create_form_as(
        ACME_KEY,
        &json!({
            "id": form_id,
            "title": "Household finances",
            "questions": [
                {"key": "monthly_income", "text": "Monthly income", "type": "number", "required": true},
                {"key": "monthly_savings", "text": "Monthly savings", "type": "number", "required": true}
            ],
            "rules": [
                {"id": "savings_le_income", "constraint": ". <= ${monthly_income}",
                 "message": "Savings cannot exceed income.",
                 "question_keys": ["monthly_savings", "monthly_income"]}
            ]
        }),
    )
    .await;
    let topics = RuntimeTopics {
        bootstrap: app.bootstrap.clone(),
        forms: app.topics.forms.clone(),
        responses: app.topics.responses.clone(),
        flags: app.topics.flags.clone(),
        dlq: format!("test-{}-dlq", unique()),
        group: format!("test-{}-group", unique()),
        partitions: 6,
    };
    let runtime = spawn_validate(&topics).await;

    let response_id = uuid::Uuid::new_v4().to_string();
    let submit = |revision: i32, savings: u32| {
        let mut body = json!({
            "response_id": response_id,
            "collector": {"id": "asha"},
            "answers": {"monthly_income": "9000", "monthly_savings": savings.to_string()}
        });
        if revision > 0 {
            body["revision"] = json!(revision);
        }
        let path = format!("/v1/forms/{form_id}/responses/{response_id}");
        let request = if revision == 0 {
            app.acme(Method::POST, &format!("/v1/forms/{form_id}/responses"))
        } else {
            app.acme(Method::PUT, &path)
        };
        send_json(request.json(&body))
    };
    let flags = |status: &'static str| {
        let request = app.acme(
            Method::GET,
            &format!("/v1/forms/{form_id}/flags?status={status}"),
        );
        async move { send_json(request).await }
    };
    let items_of =
        |answer: &(u16, Value)| answer.1["items"].as_array().cloned().unwrap_or_default();

    // "10000" > "9000" as numbers (as strings it would be smaller): flagged.
    let (status, first) = submit(0, 10000).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(60), "the flag is open", || async {
        items_of(&flags("open").await).len() == 1
    })
    .await;
    let open = items_of(&flags("open").await);
    assert_eq!(open[0]["response_id"], json!(response_id));
    assert_eq!(open[0]["violations"][0]["rule_id"], "savings_le_income");
    assert_eq!(
        open[0]["violations"][0]["message"],
        "Savings cannot exceed income."
    );

    // A correction that still breaks the rule keeps it open, with the new revision.
    assert_eq!(submit(1, 9500).await.0, 202);
    eventually(
        Duration::from_secs(60),
        "revision 1 is the open flag",
        || async {
            items_of(&flags("open").await)
                .first()
                .is_some_and(|item| item["revision"] == 1)
        },
    )
    .await;

    // A correction that passes resolves it.
    assert_eq!(submit(2, 500).await.0, 202);
    eventually(Duration::from_secs(60), "the flag is resolved", || async {
        items_of(&flags("resolved").await).len() == 1
    })
    .await;
    assert!(items_of(&flags("open").await).is_empty());
    let resolved = items_of(&flags("resolved").await);
    assert_eq!(resolved[0]["resolved_by_revision"], 2);

    // Revision 0 dead-lettered after all (its transaction timed out, say), then re-driven: its
    // outcome is published again, and changes nothing (an older revision never reopens a flag).
    let (partition, offset) = (
        first["partition"].as_i64().expect("a partition") as i32,
        first["offset"].as_i64().expect("an offset"),
    );
    dead_letter_and_redrive(&topics, "validate", &topics.responses, partition, offset).await;
    let outcomes = flags_on_topic(&topics.bootstrap, &topics.flags, 4).await;
    assert_eq!(
        outcomes.iter().filter(|f| f.revision == 0).count(),
        2,
        "the re-driven revision's outcome: {outcomes:#?}"
    );
    // A later outcome of the same form (same partition of the flags topic): once the view shows
    // it, it has applied the re-driven one before it.
    let later = uuid::Uuid::new_v4().to_string();
    let body = json!({"response_id": later, "collector": {"id": "asha"},
                      "answers": {"monthly_income": "1", "monthly_savings": "2"}});
    let (status, _) = send_json(
        app.acme(Method::POST, &format!("/v1/forms/{form_id}/responses"))
            .json(&body),
    )
    .await;
    assert_eq!(status, 202);
    eventually(
        Duration::from_secs(60),
        "the later flag is open",
        || async {
            items_of(&flags("open").await)
                .iter()
                .any(|item| item["response_id"] == json!(later))
        },
    )
    .await;
    assert_eq!(
        items_of(&flags("open").await).len(),
        1,
        "only the later one"
    );
    assert_eq!(items_of(&flags("resolved").await), resolved);

    runtime.stop().await.expect("a clean stop");
    app.finish().await;
}

/// A `formstream process validate` process; killed (SIGKILL) when dropped.
struct ValidateProcess {
    child: Child,
}

impl ValidateProcess {
    fn start(topics: &RuntimeTopics, instance: &str, log: &std::path::Path) -> Self {
        let log_file = std::fs::File::create(log).expect("creating the process log");
        let child = Command::new(formstream_binary())
            .args(["process", "validate"])
            // Transactions every 200 ms (FAST_FLAGS), so that the kill lands between some.
            .args(topics.runtime_args())
            .args(["--instance-id", instance])
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting formstream process validate");
        ValidateProcess { child }
    }
}

impl Drop for ValidateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_run_then_restart_gives_exactly_one_flag_per_revision() {
    init_logs();
    const RECORDS: usize = 100_000;
    let topics = RuntimeTopics::create(6).await;
    topics.create_flags_topic().await;
    let producer = TestProducer::new(&topics);
    let mut forms = Vec::new();
    for _ in 0..6 {
        let id = format!("f{}", unique());
        producer.form(&household_form(&id, household_rules())).await;
        forms.push(id);
    }
    let items: Vec<(i32, Response)> = (0..RECORDS)
        .map(|i| {
            let partition = i % forms.len();
            let savings = if i % 3 == 0 { 5000.0 } else { 100.0 };
            (
                partition as i32,
                household_response(
                    &forms[partition],
                    &uuid::Uuid::new_v4().to_string(),
                    0,
                    answers(Some(1000.0), Some(savings), &["hi", "en"]),
                ),
            )
        })
        .collect();
    let produced = producer.responses(&items).await;
    assert_eq!(produced.len(), RECORDS);

    let dir = tempfile::tempdir().expect("a temp dir");
    // The same instance id for both: the restart fences the killed instance's open transaction
    // at once instead of waiting for the transaction timeout.
    let instance = format!("validate-{}", unique());
    let first = ValidateProcess::start(&topics, &instance, &dir.path().join("first.log"));
    // Kill once some transactions committed and the run is not over. One client polls the
    // group's commits (read_uncommitted: it must not wait for the open transaction's offsets).
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &topics.bootstrap)
        .set("group.id", &topics.group)
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a group watcher");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..topics.partitions {
        partitions.add_partition(&topics.responses, partition);
    }
    let started = Instant::now();
    let at_kill = loop {
        let committed: i64 = watcher
            .committed_offsets(partitions.clone(), Duration::from_secs(5))
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0);
        if committed > 0 {
            break committed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no commit within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(first);
    assert!(
        at_kill < RECORDS as i64,
        "the kill came after the whole run ({at_kill} committed)"
    );
    eprintln!("kill -9 with {at_kill} of {RECORDS} records committed");

    let _second = ValidateProcess::start(&topics, &instance, &dir.path().join("second.log"));
    wait_committed_to_ends(&topics, Duration::from_secs(120)).await;

    let flags = flags_on_topic(&topics.bootstrap, &topics.flags, RECORDS).await;
    let mut seen: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for flag in &flags {
        *seen
            .entry((flag.response_id.clone(), flag.revision))
            .or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "flags published twice: {doubled:?}");
    assert_eq!(seen.len(), RECORDS, "every response has its flag");
    let flagged = flags
        .iter()
        .filter(|f| f.status == FlagStatus::Flagged)
        .count();
    assert_eq!(flagged, RECORDS.div_ceil(3));
    topics.delete().await;
}
