//! End-to-end tests of form rules and notification settings at the gateway, against the real
//! broker: a form with valid rules is stored on the forms topic and shown back; an invalid rule is
//! refused with a 422 that points at each problem, and nothing reaches the forms topic (promise 7).

use std::time::Duration;

use formstream_schemas::{Codec, Form};
use formstream_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A household form with two rules, one written as an XLSForm constraint.
fn form_with_rules(id: &str) -> Value {
    json!({
        "id": id,
        "title": "Household finances",
        "questions": [
            {"key": "monthly_income", "text": "Monthly income", "type": "number", "required": true},
            {"key": "monthly_savings", "text": "Monthly savings", "type": "number"},
            {"key": "langs", "text": "Languages", "type": "multiple_choice",
             "choices": [{"key": "hi", "text": "Hindi"}, {"key": "en", "text": "English"}]}
        ],
        "rules": [
            {"id": "savings-le-income", "expression": "monthly_savings <= monthly_income",
             "message": "Savings cannot exceed income.", "question_keys": ["monthly_savings", "monthly_income"]},
            {"id": "income_cap", "constraint": ". <= 1000000 and . >= 0",
             "message": "Check the income.", "question_keys": ["monthly_income"]}
        ],
        "notify": {"sms_collector": true, "webhook_url": "https://hooks.example.org/flags"}
    })
}

/// Every form record on the gateway's forms topic, decoded.
async fn forms_on_topic(app: &TestGateway, expected: usize) -> Vec<Form> {
    let records = read_topic(
        &app.bootstrap,
        &app.topics.forms,
        expected,
        Duration::from_secs(10),
    )
    .await
    .expect("reading the forms topic");
    let codec = Codec::single_object();
    let mut forms = Vec::new();
    for record in records {
        let payload = record.payload;
        forms.push(codec.decode::<Form>(&payload).await.expect("a Form"));
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_with_rules_is_stored_shown_back_and_updated_as_a_new_version() {
    let app = spawn_app().await;
    let id = format!("r{}", unique());
    let created = app.create_form_as(ACME_KEY, &form_with_rules(&id)).await;
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["rules"],
        json!([
            {"id": "savings-le-income", "expression": "monthly_savings <= monthly_income",
             "message": "Savings cannot exceed income.", "question_keys": ["monthly_savings", "monthly_income"]},
            {"id": "income_cap", "expression": "monthly_income <= 1000000 && monthly_income >= 0",
             "constraint": ". <= 1000000 and . >= 0",
             "message": "Check the income.", "question_keys": ["monthly_income"]}
        ]),
        "{created}"
    );
    assert_eq!(
        created["notify"],
        json!({"sms_collector": true, "webhook_url": "https://hooks.example.org/flags"})
    );

    let (status, shown) = send_json(app.acme(Method::GET, &format!("/v1/forms/{id}"))).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["rules"], created["rules"]);
    assert_eq!(shown["notify"], created["notify"]);

    // An update with other rules is the next version; the first keeps its own.
    let mut v2 = form_with_rules(&id);
    v2.as_object_mut().expect("object").remove("id");
    v2["rules"] = json!([{"id": "speaks_hindi", "expression": "\"hi\" in langs",
                          "message": "Hindi expected.", "question_keys": ["langs"]}]);
    v2["notify"] = json!({"webhook_url": "http://127.0.0.1:9/hook"});
    let (status, updated) =
        send_json(app.acme(Method::PUT, &format!("/v1/forms/{id}")).json(&v2)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["rules"][0]["id"], "speaks_hindi");
    assert_eq!(
        updated["notify"],
        json!({"sms_collector": false, "webhook_url": "http://127.0.0.1:9/hook"})
    );
    let (_, first) = send_json(app.acme(Method::GET, &format!("/v1/forms/{id}?version=1"))).await;
    assert_eq!(first["rules"], created["rules"]);

    // The forms topic holds both versions with their rules, as the validate processor reads them.
    let forms = forms_on_topic(&app, 2).await;
    let latest = forms.last().expect("a form record");
    assert_eq!(latest.id, id);
    assert_eq!(latest.versions.len(), 2);
    assert_eq!(latest.versions[0].rules.len(), 2);
    assert_eq!(
        latest.versions[0].rules[1].constraint.as_deref(),
        Some(". <= 1000000 and . >= 0")
    );
    assert!(latest.versions[0].notify.sms_collector);
    assert_eq!(latest.versions[1].rules[0].expression, "\"hi\" in langs");
    for version in &latest.versions {
        formstream_core::rules::RuleSet::compile(version).expect("stored rules compile");
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_get_422_listing_each_problem_and_nothing_is_published() {
    let app = spawn_app().await;
    let id = format!("r{}", unique());
    let mut body = form_with_rules(&id);
    body["rules"] = json!([
        {"id": "parse", "expression": "monthly_savings <=", "message": "m"},
        {"id": "unknown", "expression": "monthly_spend <= monthly_income", "message": "m",
         "question_keys": ["monthly_spend"]},
        {"id": "unknown", "expression": "monthly_income > \"5000\"", "message": "m"},
        {"id": "xls", "constraint": "regex(., '^[0-9]+$')", "message": "m",
         "question_keys": ["monthly_income"]},
        {"id": "both", "expression": "true", "constraint": ". > 0", "message": "m"},
        {"id": "not_bool", "expression": "monthly_income + 1", "message": " "}
    ]);
    body["notify"] = json!({"webhook_url": "http://hooks.example.org/flags"});
    let (status, problem) = send_json(app.acme(Method::POST, "/v1/forms").json(&body)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/rules/0/expression", "invalid_expression"),
            ("/rules/1/expression", "unknown_question"),
            ("/rules/1/question_keys/0", "unknown_question"),
            ("/rules/2/id", "duplicate_id"),
            ("/rules/2/expression", "invalid_type"),
            ("/rules/3/constraint", "untranslatable_constraint"),
            ("/rules/4", "expression_or_constraint"),
            ("/rules/5/expression", "invalid_type"),
            ("/rules/5/message", "required"),
            ("/notify/webhook_url", "invalid_webhook_url"),
        ]),
        "{problem}"
    );

    // An update with an invalid rule is refused as well, and the form stays at version 1.
    app.create_form_as(ACME_KEY, &form_with_rules(&id)).await;
    let mut v2 = form_with_rules(&id);
    v2.as_object_mut().expect("object").remove("id");
    v2["rules"] = json!([{"id": "x", "expression": "langs > 1", "message": "m"}]);
    let (status, problem) =
        send_json(app.acme(Method::PUT, &format!("/v1/forms/{id}")).json(&v2)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/rules/0/expression", "invalid_type")])
    );
    let (_, shown) = send_json(app.acme(Method::GET, &format!("/v1/forms/{id}"))).await;
    assert_eq!(shown["version"], 1);

    // Only the one valid create reached the topic. Every 2xx and 422 above was answered after
    // its publish was acknowledged or refused, so reading to the end of each partition is enough.
    let forms = forms_on_topic(&app, 1).await;
    assert_eq!(forms.len(), 1, "{forms:?}");
    assert_eq!(forms[0].versions.len(), 1);
    app.finish().await;
}
