//! Attack 4: rules without a budget. Globex tries to stall everyone with its form's rules.
//!
//! - At save, rules whose cost cannot be bounded (comprehensions over literals, nested three deep,
//!   huge literals) are refused with a 422 `rule_too_expensive` pointing at the rule, and nothing
//!   is stored; so are rules each within budget that together exceed a form's (at `/rules`).
//! - Rules within the budget whose time still grows with the answers (a long answer scanned with
//!   `matches` again and again) are accepted at save, where the sample answers are short; in
//!   validate, globex's long answers make them run for seconds per response.
//!   Each of globex's responses is then flagged `rule_too_expensive` after `--rule-deadline`, and
//!   acme's responses, published behind globex's, are flagged correctly and promptly: the
//!   evaluation runs on a blocking thread, never on the async threads that carry acme's records.
//!   Evaluations given up are counted on validate's /metrics, by outcome only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use formstream_core::rules::TOO_EXPENSIVE;
use formstream_schemas::{
    Answer, Codec, FlagStatus, Form, QuestionType, Response, ResponseFlag, Rule,
};
use formstream_tests::runtime::*;
use formstream_tests::{
    ACME_KEY, GLOBEX_KEY, TestGateway, assert_problem, field_problems, pairs, read_topic,
    spawn_app, unique,
};
use formstream_validate::{Validate, ValidateArgs};
use reqwest::Method;
use serde_json::{Value, json};

/// A rule as long as a rule may be that tests a long answer with `matches` over and over: each
/// call compiles its pattern again and scans the whole answer. Within the budget (the pattern is
/// a small literal; there is no loop), microseconds on the sample answer ("text"), but tens of
/// milliseconds per call on a 300 KB answer: a second or more per response.
fn scans_again_and_again() -> String {
    let call = r#"t.matches("^\\w+$")"#;
    let calls = 1_000 / (call.len() + 4);
    vec![call; calls].join(" && ")
}

fn form_body(id: &str, rules: Value) -> Value {
    json!({
        "id": id,
        "title": "Expensive rules",
        "questions": [
            {"key": "t", "text": "Notes", "type": "text"},
            {"key": "langs", "text": "Languages", "type": "multiple_choice",
             "choices": [{"key": "hi", "text": "Hindi"}, {"key": "en", "text": "English"}]}
        ],
        "rules": rules
    })
}

fn rule_json(id: &str, expression: &str) -> Value {
    json!({"id": id, "expression": expression, "message": "check", "question_keys": ["t"]})
}

#[tokio::test]
async fn rules_beyond_the_budget_are_refused_at_save_and_nothing_is_stored() {
    let gateway = spawn_app().await;
    let id = format!("f{}", unique());
    let literal = (0..100)
        .map(|i| format!("\"c{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = json!([
        rule_json(
            "literals",
            "[1, 2, 3, 4, 5, 6, 7, 8].all(a, [1, 2, 3, 4, 5, 6, 7, 8].all(b, [1, 2, 3, 4, 5, 6, 7, 8].all(c, a + b + c > 0)))"
        ),
        rule_json(
            "nested",
            "langs.all(a, langs.all(b, langs.all(c, a != b || b != c)))"
        ),
        rule_json("huge_literal", &format!("t in [{literal}]")),
        rule_json("fine", "size(t) < 1000"),
    ]);
    let response = gateway
        .globex(Method::POST, "/v1/forms")
        .json(&form_body(&id, rules))
        .send()
        .await
        .expect("POST /v1/forms");
    let problem = assert_problem(response, 422).await;
    let mut found = field_problems(&problem);
    found.dedup();
    assert_eq!(
        found,
        pairs(&[
            ("/rules/0/expression", TOO_EXPENSIVE),
            ("/rules/1/expression", TOO_EXPENSIVE),
            ("/rules/2/expression", TOO_EXPENSIVE),
        ]),
        "{problem}"
    );
    assert_not_stored(&gateway, &id).await;

    // The rule whose time grows with the answers is within the budget: accepted at save (the
    // validate test below bounds it with the deadline), as is acme's ordinary form.
    let slow = json!([rule_json("slow", &scans_again_and_again())]);
    gateway
        .create_form_as(GLOBEX_KEY, &form_body(&format!("f{}", unique()), slow))
        .await;
    gateway
        .create_form_as(
            ACME_KEY,
            &form_body(&id, json!([rule_json("short", "size(t) < 1000")])),
        )
        .await;
    gateway.finish().await;
}

/// Globex's form `id` is not there: a refused save stored nothing.
async fn assert_not_stored(gateway: &TestGateway, id: &str) {
    let stored = gateway
        .globex(Method::GET, &format!("/v1/forms/{id}"))
        .send()
        .await
        .expect("GET the form");
    assert_eq!(stored.status(), 404, "nothing stored");
}

/// Rules each within their own budget can still add up: a form's rules together have a budget
/// too (`formstream_core::rules::MAX_FORM_STEPS`), refused at `/rules`, and nothing is stored.
#[tokio::test]
async fn rules_that_together_exceed_a_forms_budget_are_refused_at_save() {
    let gateway = spawn_app().await;
    let id = format!("f{}", unique());
    let choices: Vec<Value> = (0..30)
        .map(|i| json!({"key": format!("c{i}"), "text": format!("Choice {i}")}))
        .collect();
    // Two nested comprehensions over 30 choices: within one rule's budget.
    let expression = r#"many.all(a, many.exists(b, a != b || a == "c1"))"#;
    let body = |count: usize| {
        let rules: Vec<Value> = (0..count)
            .map(|i| json!({"id": format!("r{i}"), "expression": expression, "message": "check", "question_keys": ["many"]}))
            .collect();
        json!({
            "id": id,
            "title": "Many rules",
            "questions": [{"key": "many", "text": "Many", "type": "multiple_choice", "choices": choices}],
            "rules": rules
        })
    };
    let refused = gateway
        .globex(Method::POST, "/v1/forms")
        .json(&body(10))
        .send()
        .await
        .expect("POST /v1/forms");
    let problem = assert_problem(refused, 422).await;
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/rules", TOO_EXPENSIVE)]),
        "{problem}"
    );
    assert_not_stored(&gateway, &id).await;
    // Fewer of the same rules fit.
    gateway.create_form_as(GLOBEX_KEY, &body(3)).await;
    gateway.finish().await;
}

fn rule(id: &str, expression: &str) -> Rule {
    Rule {
        id: id.to_owned(),
        expression: expression.to_owned(),
        constraint: None,
        message: format!("{id} failed"),
        question_keys: vec!["t".to_owned()],
    }
}

/// A form of `organisation` with one text question `t` and `rules`, as the gateway stores it.
fn form(organisation: &str, rules: Vec<Rule>) -> Form {
    let mut form = test_form(&format!("f{}", unique()));
    form.organisation = organisation.to_owned();
    let version = &mut form.versions[0];
    version.questions[0].key = "t".to_owned();
    version.questions[0].kind = QuestionType::Text;
    version.rules = rules;
    form
}

fn response(form: &Form, id: &str, text: String) -> Response {
    let mut response = test_response(&form.id, id, 0);
    response.organisation = form.organisation.clone();
    response.answers = vec![Answer {
        question_key: "t".to_owned(),
        text: Some(text),
        number: None,
        choices: Vec::new(),
    }];
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pathological_rule_is_flagged_at_its_deadline_while_other_organisations_flow() {
    init_logs();
    let topics = RuntimeTopics::create(3).await;
    topics.create_flags_topic().await;
    let producer = TestProducer::new(&topics);
    let slow: Vec<Rule> = (0..3)
        .map(|i| rule(&format!("slow{i}"), &scans_again_and_again()))
        .collect();
    let globex = form("globex", slow);
    let acme = form("acme", vec![rule("short", "size(t) <= 5")]);
    producer.form(&globex).await;
    producer.form(&acme).await;

    let config = topics.config(&[]);
    let args = ValidateArgs {
        rule_deadline: Duration::from_millis(100),
        ..ValidateArgs::default()
    };
    let validate = Validate::with_args(&config, &args)
        .await
        .expect("the validate processor");
    let runtime = spawn_runtime(validate, config).await;
    // Once acme's first flag is out, the processor has its partitions: the time from publishing
    // to a flag is then the processor's alone.
    producer
        .responses(&[(0, response(&acme, "warm-up", "short".to_owned()))])
        .await;
    flags_on_topic(&topics, 1).await;

    // Globex's long answers first, on every partition; then acme's, behind them.
    let long = "x".repeat(300_000);
    let mut items: Vec<(i32, Response)> = (0..3)
        .map(|i| (i, response(&globex, &format!("g{i}"), long.clone())))
        .collect();
    let acme_count = 60;
    items.extend((0..acme_count).map(|i| {
        let text = if i % 2 == 0 { "short" } else { "much too long" };
        (i % 3, response(&acme, &format!("a{i}"), text.to_owned()))
    }));
    let published = formstream_core::time::now_millis();
    producer.responses(&items).await;
    let flags = flags_on_topic(&topics, items.len() + 1).await;
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;

    assert_eq!(
        flags.len(),
        items.len() + 1,
        "one flag per response: {:?}",
        flags.keys()
    );
    for i in 0..3 {
        let flag = &flags[&format!("g{i}")];
        assert_eq!(flag.status, FlagStatus::Flagged, "{flag:?}");
        let error = flag.violations[0].error.as_deref().unwrap_or_default();
        assert!(error.contains(TOO_EXPENSIVE), "{flag:?}");
    }
    let mut slowest = Duration::ZERO;
    for i in 0..acme_count {
        let flag = &flags[&format!("a{i}")];
        let status = if i % 2 == 0 {
            FlagStatus::Clean
        } else {
            FlagStatus::Flagged
        };
        assert_eq!(flag.status, status, "{flag:?}");
        assert!(
            flag.violations.iter().all(|v| v.error.is_none()),
            "{flag:?}"
        );
        let waited = Duration::from_millis((flag.evaluated_at - published).max(0) as u64);
        slowest = slowest.max(waited);
    }
    // Evaluated in place, acme's records wait for seconds behind globex's evaluations.
    assert!(
        slowest < Duration::from_secs(5),
        "acme's slowest flag came {slowest:?} after publishing"
    );
}

/// Pathological rules of many forms cannot pile up blocked threads: with one evaluation slot,
/// globex's three forms (each allowed one late evaluation) get one thread between them; the
/// others' responses are flagged at their deadline without starting one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rule_evaluations_of_many_forms_are_bounded_per_instance() {
    init_logs();
    let topics = RuntimeTopics::create(3).await;
    topics.create_flags_topic().await;
    let producer = TestProducer::new(&topics);
    let forms: Vec<Form> = (0..3)
        .map(|i| {
            let mut form = form("globex", vec![rule("slow", &scans_again_and_again())]);
            form.id = format!("{}-{i}", form.id);
            form
        })
        .collect();
    for form in &forms {
        producer.form(form).await;
    }
    let config = topics.config(&[]);
    let args = ValidateArgs {
        rule_deadline: Duration::from_millis(100),
        max_rule_evaluations: 1,
    };
    let validate = Validate::with_args(&config, &args)
        .await
        .expect("the validate processor");
    let runtime = spawn_runtime(validate, config).await;
    // The first response's evaluation runs on in the one slot for seconds (twice the usual answer)
    // after its deadline; the other two are published only once it does, so that they ask for
    // the slot while it is held, however the machine's load staggers their arrival.
    let items: Vec<(i32, Response)> = forms
        .iter()
        .enumerate()
        .map(|(i, form)| {
            let long = "x".repeat(if i == 0 { 600_000 } else { 300_000 });
            (i as i32, response(form, &format!("g{i}"), long))
        })
        .collect();
    producer.responses(&items[..1]).await;
    eventually(
        Duration::from_secs(30),
        "the first evaluation given up at its deadline, running on",
        || async {
            runtime
                .metric(ABANDONED, &[("outcome", "past_deadline")])
                .await
                >= 1.0
        },
    )
    .await;
    producer.responses(&items[1..]).await;
    let flags = flags_on_topic(&topics, items.len()).await;
    // Counted before each flag was published, so there by now.
    let metrics = runtime.metrics().await;
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;

    assert_eq!(flags.len(), items.len(), "{:?}", flags.keys());
    let errors: Vec<String> = flags
        .values()
        .map(|f| f.violations[0].error.clone().unwrap_or_default())
        .collect();
    assert!(
        errors.iter().all(|e| e.contains(TOO_EXPENSIVE)),
        "{errors:#?}"
    );
    let ran = errors.iter().filter(|e| e.contains("ran past")).count();
    assert_eq!(ran, 1, "one evaluation thread at most: {errors:#?}");
    // The operator sees the same on /metrics: one given up at its deadline, two that found no
    // slot; labelled by outcome alone (never the organisation or the form).
    let given_up = |outcome| metric_value(&metrics, ABANDONED, &[("outcome", outcome)]);
    assert_eq!(given_up("past_deadline"), 1.0, "{metrics}");
    assert_eq!(given_up("no_slot"), 2.0, "{metrics}");
    assert_eq!(given_up("still_running"), 0.0, "{metrics}");
    let series: Vec<&str> = (metrics.lines())
        .filter(|line| line.starts_with(ABANDONED))
        .collect();
    assert!(
        (series.iter()).all(
            |line| line.starts_with(&format!("{ABANDONED}{{outcome=\"")) && !line.contains(',')
        ),
        "{series:#?}"
    );
}

/// validate's count of rule evaluations it gave up on, by outcome.
const ABANDONED: &str = "formstream_validate_rule_evaluations_abandoned_total";

/// The flags on the topic (read_committed), by response id, once `expected` are there or a minute
/// passed.
async fn flags_on_topic(topics: &RuntimeTopics, expected: usize) -> HashMap<String, ResponseFlag> {
    let codec = Codec::single_object();
    let mut flags = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flags.len() < expected && Instant::now() < deadline {
        let records = read_topic(
            &topics.bootstrap,
            &topics.flags,
            expected,
            Duration::from_secs(5),
        )
        .await
        .expect("reading the flags topic");
        for record in records {
            let flag: ResponseFlag = codec.decode(&record.payload).await.expect("a flag");
            flags.insert(flag.response_id.clone(), flag);
        }
    }
    flags
}
