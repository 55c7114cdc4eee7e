//! End-to-end tests of the ingest gateway against the real broker: what a client is told, and
//! what lands on the topics (docs/design.md, promises 1 and 7).
//!
//! Invariant proved here: a 2xx names a record that is on the topic exactly where the gateway said,
//! decodable and typed; anything the gateway refuses never reaches a topic.

use std::collections::{HashMap, HashSet};

use formstream_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A response id a client might generate.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Landed records indexed by response id (each test knows its ids are unique per revision).
fn by_response_id(landed: &[Landed]) -> HashMap<String, Vec<&Landed>> {
    let mut map: HashMap<String, Vec<&Landed>> = HashMap::new();
    for record in landed {
        map.entry(record.response.response_id.clone())
            .or_default()
            .push(record);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_round_trip_through_the_topic_typed_keyed_and_where_the_gateway_said() {
    let app = spawn_app().await;
    let form_a = app.create_typical_form().await;
    let form_b = app.create_typical_form().await;

    let explicit_id = new_id();
    let bodies = vec![
        (form_a.clone(), valid_response("Asha")),
        (
            form_a.clone(),
            json!({
                "response_id": explicit_id,
                "submitted_at": "2026-11-28T10:15:00+05:30",
                "collector": {"id": "collector-2"},
                "answers": {"name": "Ravi", "income": 800, "phone": "09876543211", "city": "delhi",
                            "langs": ["en"], "notes": "लिखित नोट"},
                "metadata": {"app": "android-3.1"}
            }),
        ),
        (
            form_a.clone(),
            json!({"collector": {"id": "c3"}, "answers": {"name": "Meera", "income": "-4.25"}}),
        ),
        (form_b.clone(), valid_response("Other form")),
        (form_b.clone(), valid_response("Other form again")),
    ];

    let mut accepted = Vec::new();
    for (form_id, body) in &bodies {
        let (status, answer) = app.submit(form_id, body).await;
        assert_eq!(status, 202, "a valid response is accepted: {answer}");
        assert_eq!(answer["form_id"], form_id.as_str());
        assert_eq!(answer["form_version"], 1);
        assert_eq!(answer["revision"], 0);
        assert_eq!(answer["duplicate"], false);
        assert!(
            uuid::Uuid::parse_str(answer["response_id"].as_str().expect("response_id")).is_ok(),
            "the response id is a UUID: {answer}"
        );
        accepted.push(answer);
    }
    assert_eq!(
        accepted[1]["response_id"],
        explicit_id.as_str(),
        "a client-supplied id is kept"
    );

    let landed = app.responses_on_topic(bodies.len()).await;
    assert_eq!(
        landed.len(),
        bodies.len(),
        "exactly the accepted responses are on the topic: {landed:#?}"
    );
    let landed_by_id = by_response_id(&landed);

    for answer in &accepted {
        let id = answer["response_id"].as_str().expect("response_id");
        let records = &landed_by_id[id];
        assert_eq!(records.len(), 1, "response {id} is on the topic once");
        let record = records[0];
        let form_id = answer["form_id"].as_str().expect("form_id");
        assert_eq!(
            record.key.as_deref(),
            Some(form_id),
            "records are keyed by form id"
        );
        assert_eq!(
            i64::from(record.partition),
            answer["partition"].as_i64().expect("partition")
        );
        assert_eq!(record.offset, answer["offset"].as_i64().expect("offset"));
        assert_eq!(
            record.headers.get("response_id").map(String::as_str),
            Some(id)
        );
        assert_eq!(
            record.headers.get("revision").map(String::as_str),
            Some("0")
        );
        assert_eq!(record.response.form_id, form_id);
        assert_eq!(record.response.form_version, 1);
        assert_eq!(record.response.revision, 0);
        assert_eq!(record.response.organisation, "acme");
    }

    // One key, one partition.
    for form_id in [&form_a, &form_b] {
        let partitions: HashSet<i32> = landed
            .iter()
            .filter(|r| r.key.as_deref() == Some(form_id.as_str()))
            .map(|r| r.partition)
            .collect();
        assert_eq!(
            partitions.len(),
            1,
            "every record of form {form_id} is on one partition"
        );
    }

    // Answers are typed and normalised.
    let first = &landed_by_id[accepted[0]["response_id"].as_str().expect("id")][0].response;
    let answer = |r: &formstream_schemas::Response, key: &str| {
        r.answer(key)
            .cloned()
            .unwrap_or_else(|| panic!("answer {key} is on the record: {r:?}"))
    };
    assert_eq!(answer(first, "name").text.as_deref(), Some("Asha"));
    assert_eq!(
        answer(first, "income").number,
        Some(12000.5),
        "a number is stored as a number"
    );
    assert_eq!(
        answer(first, "income").text.as_deref(),
        Some("12000.50"),
        "and as the text the client sent"
    );
    assert_eq!(
        answer(first, "phone").text.as_deref(),
        Some("+919876543210"),
        "phones are E.164"
    );
    assert_eq!(answer(first, "city").choices, vec!["pune".to_owned()]);
    assert_eq!(
        answer(first, "langs").choices,
        vec!["mr".to_owned(), "hi".to_owned()]
    );
    assert!(
        first.answer("notes").is_none(),
        "an unanswered optional question has no answer"
    );
    assert_eq!(first.collector.id, "collector-7");
    assert_eq!(
        first.collector.phone.as_deref(),
        Some("+919876543210"),
        "the collector's phone is E.164"
    );

    let second = &landed_by_id[explicit_id.as_str()][0].response;
    assert_eq!(answer(second, "income").number, Some(800.0));
    assert_eq!(
        answer(second, "phone").text.as_deref(),
        Some("+919876543211"),
        "the form's region applies"
    );
    assert_eq!(answer(second, "city").choices, vec!["delhi".to_owned()]);
    assert_eq!(answer(second, "notes").text.as_deref(), Some("लिखित नोट"));
    assert_eq!(
        second.submitted_at, 1_795_841_100_000,
        "submitted_at is the client's instant, in UTC millis"
    );
    assert_eq!(second.collector.phone, None);
    let metadata: Value =
        serde_json::from_str(&second.metadata_json).expect("metadata_json is JSON");
    assert_eq!(metadata, json!({"app": "android-3.1"}));

    let third = &landed_by_id[accepted[2]["response_id"].as_str().expect("id")][0].response;
    assert_eq!(answer(third, "income").number, Some(-4.25));

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_response_gets_422_listing_every_problem_and_nothing_reaches_the_topic() {
    let app = spawn_gateway(GatewayOptions::default().arg("--max-text-chars", 200)).await;
    let form = app.create_typical_form().await;

    // One request with one problem of each kind, and a required answer missing.
    let (status, problem) = app
        .submit(
            &form,
            &json!({
                "collector": {"id": "c1"},
                "answers": {
                    "bogus": "an answer to no question",
                    "income": "lots",
                    "phone": "12",
                    "city": "mumbai",
                    "langs": ["hi", "xx", "hi"],
                    "notes": "n".repeat(201)
                }
            }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["status"], 422);
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/answers/bogus", "unknown_question"),
            ("/answers/name", "required"),
            ("/answers/income", "not_a_number"),
            ("/answers/phone", "invalid_phone"),
            ("/answers/city", "unknown_choice"),
            ("/answers/langs/1", "unknown_choice"),
            ("/answers/langs/2", "duplicate_choice"),
            ("/answers/notes", "too_long"),
        ]),
        "every problem is listed: {problem}"
    );

    // The other problems a collector app can make, again all in one request.
    let (status, problem) = app
        .submit(
            &form,
            &json!({
                "response_id": "not-a-uuid",
                "submitted_at": "yesterday",
                "collector": {"id": " ", "phone": "call me"},
                "answers": {"name": "a name well over twenty characters", "income": {"amount": 5},
                            "notes": 42, "city": ["pune"], "langs": "hi"}
            }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/response_id", "invalid_uuid"),
            ("/submitted_at", "invalid_timestamp"),
            ("/collector/id", "required"),
            ("/collector/phone", "invalid_phone"),
            ("/answers/name", "too_long"),
            ("/answers/income", "not_a_number"),
            ("/answers/notes", "expected_text"),
            ("/answers/city", "expected_choice"),
            ("/answers/langs", "expected_choices"),
        ]),
        "every problem is listed: {problem}"
    );

    // Blank answers count as missing.
    let (status, problem) = app
        .submit(
            &form,
            &json!({"collector": {"id": "c1"}, "answers": {"name": "   ", "income": null}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/answers/name", "required"),
            ("/answers/income", "required")
        ])
    );

    // JSON of the wrong shape is a 422 too, pointing at the field.
    let (status, problem) = app
        .submit(
            &form,
            &json!({"collector": {"id": "c1"}, "answers": ["not", "an", "object"]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/answers", "{problem}");
    let (status, problem) = app
        .submit(
            &form,
            &json!({"collector": {"id": "c1"}, "answers": {}, "surprise": true}),
        )
        .await;
    assert_eq!(status, 422, "an unknown field is refused: {problem}");

    // A valid marker: once it is on the topic, anything published before it would be too.
    let (status, marker) = app.submit(&form, &valid_response("Marker")).await;
    assert_eq!(status, 202, "{marker}");
    let landed = app.responses_on_topic(1).await;
    assert_eq!(
        landed.len(),
        1,
        "only the valid response reached the topic: {landed:#?}"
    );
    assert_eq!(
        landed[0].response.response_id,
        marker["response_id"].as_str().expect("id")
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrong_type_too_large_and_unknown_form_are_problems_and_publish_nothing() {
    let app = spawn_gateway(GatewayOptions::default().arg("--max-body-bytes", 2048)).await;
    let form = app.create_typical_form().await;
    let path = format!("/v1/forms/{form}/responses");

    let malformed = app
        .acme(Method::POST, &path)
        .header("content-type", "application/json")
        .body(r#"{"collector": {"id": "c1"}, "answers": {"name": "#)
        .send()
        .await
        .expect("POST malformed");
    assert_problem(malformed, 400).await;

    let trailing = app
        .acme(Method::POST, &path)
        .header("content-type", "application/json")
        .body(r#"{"collector": {"id": "c1"}, "answers": {"name": "x", "income": 1}} {"#)
        .send()
        .await
        .expect("POST trailing garbage");
    assert_problem(trailing, 400).await;

    let wrong_type = app
        .acme(Method::POST, &path)
        .header("content-type", "text/plain")
        .body(serde_json::to_string(&valid_response("Plain")).expect("json"))
        .send()
        .await
        .expect("POST text/plain");
    assert_problem(wrong_type, 415).await;

    let no_type = app
        .acme(Method::POST, &path)
        .body(serde_json::to_string(&valid_response("Untyped")).expect("json"))
        .send()
        .await
        .expect("POST without content type");
    assert_problem(no_type, 415).await;

    let mut large = valid_response("Large");
    large["answers"]["notes"] = json!("x".repeat(4096));
    let too_large = app
        .acme(Method::POST, &path)
        .json(&large)
        .send()
        .await
        .expect("POST too large");
    assert_problem(too_large, 413).await;

    let unknown_form = app
        .acme(Method::POST, "/v1/forms/no-such-form/responses")
        .json(&valid_response("Nobody"))
        .send()
        .await
        .expect("POST to unknown form");
    assert_problem(unknown_form, 404).await;
    let unknown_get = app
        .acme(Method::GET, "/v1/forms/no-such-form")
        .send()
        .await
        .expect("GET unknown form");
    assert_problem(unknown_get, 404).await;
    let unknown_route = app
        .acme(Method::GET, "/v1/nothing-here")
        .send()
        .await
        .expect("GET unknown route");
    assert_problem(unknown_route, 404).await;

    let landed = app.responses_on_topic(0).await;
    assert!(
        landed.is_empty(),
        "nothing refused reached the topic: {landed:#?}"
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_response_id_is_a_duplicate_and_a_reused_id_is_a_conflict() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let id = new_id();
    let mut body = valid_response("Retry");
    body["response_id"] = json!(id);

    let (status, first) = app.submit(&form, &body).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, second) = app.submit(&form, &body).await;
    assert_eq!(status, 202, "a retry is accepted: {second}");
    assert_eq!(second["response_id"], id.as_str());
    assert_eq!(
        second["duplicate"], true,
        "a retry is marked as a duplicate: {second}"
    );
    assert_eq!(second["partition"], first["partition"]);
    assert_eq!(
        second["offset"], first["offset"],
        "a retry points at the one record"
    );

    // The same id with other content is not a retry.
    let mut other = body.clone();
    other["answers"]["income"] = json!(1);
    let conflict = app
        .acme(Method::POST, &format!("/v1/forms/{form}/responses"))
        .json(&other)
        .send()
        .await
        .expect("POST reused id");
    assert_problem(conflict, 409).await;

    let (status, marker) = app.submit(&form, &valid_response("Marker")).await;
    assert_eq!(status, 202, "{marker}");
    let landed = app.responses_on_topic(2).await;
    assert_eq!(
        landed.len(),
        2,
        "one record for the retried response, one for the marker: {landed:#?}"
    );
    let records = by_response_id(&landed);
    assert_eq!(
        records[id.as_str()].len(),
        1,
        "the retried response is on the topic once"
    );
    assert_eq!(
        records[id.as_str()][0]
            .response
            .answer("income")
            .and_then(|a| a.number),
        Some(12000.5)
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_publishes_the_next_revision_of_the_same_response() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let (status, original) = app.submit(&form, &valid_response("Before")).await;
    assert_eq!(status, 202, "{original}");
    let id = original["response_id"]
        .as_str()
        .expect("response_id")
        .to_owned();
    let path = format!("/v1/forms/{form}/responses/{id}");

    let mut correction = valid_response("After");
    correction["revision"] = json!(1);
    let (status, corrected) = send_json(app.acme(Method::PUT, &path).json(&correction)).await;
    assert_eq!(status, 202, "{corrected}");
    assert_eq!(corrected["response_id"], id.as_str());
    assert_eq!(corrected["revision"], 1);
    assert_eq!(
        corrected["partition"], original["partition"],
        "a correction follows its response's key"
    );

    // A correction must say which revision it publishes.
    let (status, problem) = send_json(
        app.acme(Method::PUT, &path)
            .json(&valid_response("No revision")),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/revision", "required")])
    );
    let mut zero = valid_response("Zero");
    zero["revision"] = json!(0);
    let (status, problem) = send_json(app.acme(Method::PUT, &path).json(&zero)).await;
    assert_eq!(
        status, 422,
        "revision 0 is the original, not a correction: {problem}"
    );
    let mut mismatch = correction.clone();
    mismatch["response_id"] = json!(new_id());
    mismatch["revision"] = json!(2);
    let (status, problem) = send_json(app.acme(Method::PUT, &path).json(&mismatch)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/response_id", "mismatch")])
    );
    // An invalid correction is refused like an invalid response.
    let mut invalid = correction.clone();
    invalid["revision"] = json!(2);
    invalid["answers"]["income"] = json!("lots");
    let (status, problem) = send_json(app.acme(Method::PUT, &path).json(&invalid)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/answers/income", "not_a_number")])
    );
    // POST may not smuggle a revision in.
    let mut smuggled = valid_response("Smuggled");
    smuggled["revision"] = json!(3);
    let (status, problem) = app.submit(&form, &smuggled).await;
    assert_eq!(status, 422, "{problem}");

    let landed = app.responses_on_topic(2).await;
    assert_eq!(
        landed.len(),
        2,
        "revision 0 and revision 1, nothing else: {landed:#?}"
    );
    let mut revisions: Vec<(i32, String, String, i64)> = landed
        .iter()
        .map(|r| {
            assert_eq!(
                r.response.response_id, id,
                "both revisions belong to one response"
            );
            assert_eq!(r.key.as_deref(), Some(form.as_str()));
            (
                r.response.revision,
                r.headers.get("revision").cloned().unwrap_or_default(),
                r.response
                    .answer("name")
                    .and_then(|a| a.text.clone())
                    .unwrap_or_default(),
                r.offset,
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions[0].0, 0);
    assert_eq!(revisions[0].1, "0");
    assert_eq!(revisions[0].2, "Before");
    assert_eq!(revisions[1].0, 1);
    assert_eq!(revisions[1].1, "1");
    assert_eq!(revisions[1].2, "After");
    assert!(
        revisions[0].3 < revisions[1].3,
        "the correction comes after the original"
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_have_versions_preconditions_validation_and_are_scoped_to_their_organisation() {
    let app = spawn_app().await;
    let id = format!("f{}", unique());
    let create = app
        .acme(Method::POST, "/v1/forms")
        .json(&typical_form(&id))
        .send()
        .await
        .expect("POST /v1/forms");
    assert_eq!(create.status(), 201);
    assert_eq!(
        create
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("/v1/forms/{id}").as_str())
    );
    let created: Value = create.json().await.expect("form JSON");
    assert_eq!(created["version"], 1);
    assert_eq!(created["organisation"], "acme");
    assert_eq!(created["default_region"], "IN");
    assert_eq!(created["questions"].as_array().map(Vec::len), Some(6));
    assert_eq!(created["metadata"], json!({"team": "field"}));

    // The same id again is a conflict.
    let again = app
        .acme(Method::POST, "/v1/forms")
        .json(&typical_form(&id))
        .send()
        .await
        .expect("POST again");
    assert_problem(again, 409).await;

    // Version 2 adds a required question.
    let mut v2 = typical_form(&id);
    v2["title"] = json!("Household survey, with age");
    v2["questions"]
        .as_array_mut()
        .expect("questions")
        .push(json!({"key": "age", "text": "Age", "type": "number", "required": true}));
    let (status, updated) =
        send_json(app.acme(Method::PUT, &format!("/v1/forms/{id}")).json(&v2)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);

    let (status, current) = send_json(app.acme(Method::GET, &format!("/v1/forms/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(current["version"], 2);
    assert_eq!(current["title"], "Household survey, with age");
    let (status, first) =
        send_json(app.acme(Method::GET, &format!("/v1/forms/{id}?version=1"))).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["version"], 1);
    assert_eq!(first["title"], "Household survey");
    assert_eq!(first["questions"].as_array().map(Vec::len), Some(6));
    let missing = app
        .acme(Method::GET, &format!("/v1/forms/{id}?version=7"))
        .send()
        .await
        .expect("GET v7");
    assert_problem(missing, 404).await;

    // Responses answer the current version, and are validated against it.
    let (status, problem) = app.submit(&id, &valid_response("No age")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/answers/age", "required")])
    );
    let mut with_age = valid_response("With age");
    with_age["answers"]["age"] = json!(41);
    let (status, accepted) = app.submit(&id, &with_age).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["form_version"], 2);

    // If-Match guards against lost updates.
    let stale = app
        .acme(Method::PUT, &format!("/v1/forms/{id}"))
        .header("if-match", "\"1\"")
        .json(&v2)
        .send()
        .await
        .expect("PUT stale");
    assert_problem(stale, 412).await;
    let fresh = app
        .acme(Method::PUT, &format!("/v1/forms/{id}"))
        .header("if-match", "\"2\"")
        .json(&v2)
        .send()
        .await
        .expect("PUT fresh");
    assert_eq!(fresh.status(), 200);
    let fresh: Value = fresh.json().await.expect("form JSON");
    assert_eq!(fresh["version"], 3);

    // An invalid form lists every problem.
    let (status, problem) = send_json(app.acme(Method::POST, "/v1/forms").json(&json!({
        "id": "bad id!",
        "title": " ",
        "default_region": "XX",
        "questions": [
            {"key": "Income", "text": "x", "type": "number"},
            {"key": "city", "text": "", "type": "single_choice"},
            {"key": "city", "text": "again", "type": "text", "choices": [{"key": "a", "text": "A"}]},
            {"key": "pick", "text": "Pick", "type": "multiple_choice",
             "choices": [{"key": "a", "text": "A"}, {"key": "a", "text": " "}]},
            {"key": "age", "text": "Age", "type": "number", "max_length": 3}
        ]
    })))
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/id", "invalid_id"),
            ("/title", "required"),
            ("/default_region", "invalid_region"),
            ("/questions/0/key", "invalid_key"),
            ("/questions/1/text", "required"),
            ("/questions/1/choices", "required"),
            ("/questions/2/key", "duplicate_key"),
            ("/questions/2/choices", "not_allowed"),
            ("/questions/3/choices/1/key", "duplicate_key"),
            ("/questions/3/choices/1/text", "required"),
            ("/questions/4/max_length", "not_allowed"),
        ]),
        "{problem}"
    );
    let (status, problem) = send_json(
        app.acme(Method::POST, "/v1/forms")
            .json(&json!({"title": "No questions", "questions": []})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/questions", "required")])
    );
    let (status, problem) = send_json(app.acme(Method::PUT, &format!("/v1/forms/{id}")).json(
        &json!({
            "title": "", "questions": [{"key": "q", "text": "Q", "type": "text"}]
        }),
    ))
    .await;
    assert_eq!(status, 422, "an invalid update is refused too: {problem}");

    // Lists are per organisation.
    let other = app.create_typical_form().await;
    let globex_form = format!("g{}", unique());
    app.create_form_as(GLOBEX_KEY, &typical_form(&globex_form))
        .await;
    let list_ids = |list: &Value| -> HashSet<String> {
        list["forms"]
            .as_array()
            .unwrap_or_else(|| panic!("a list of forms: {list}"))
            .iter()
            .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (status, acme_list) = send_json(app.acme(Method::GET, "/v1/forms")).await;
    assert_eq!(status, 200);
    assert_eq!(
        list_ids(&acme_list),
        HashSet::from([id.clone(), other.clone()])
    );
    assert!(
        acme_list["forms"]
            .as_array()
            .expect("forms")
            .iter()
            .all(|f| f["organisation"] == "acme"),
        "{acme_list}"
    );
    let listed = acme_list["forms"]
        .as_array()
        .expect("forms")
        .iter()
        .find(|f| f["id"] == id.as_str());
    assert_eq!(
        listed.map(|f| f["version"].clone()),
        Some(json!(3)),
        "lists show current versions"
    );
    let (status, globex_list) = send_json(app.globex(Method::GET, "/v1/forms")).await;
    assert_eq!(status, 200);
    assert_eq!(list_ids(&globex_list), HashSet::from([globex_form]));

    // The response recorded the version it answered.
    let landed = app.responses_on_topic(1).await;
    assert_eq!(landed.len(), 1, "{landed:#?}");
    assert_eq!(landed[0].response.form_version, 2);
    assert_eq!(
        landed[0].response.answer("age").and_then(|a| a.number),
        Some(41.0)
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gateway_rebuilds_the_forms_view_from_the_topic() {
    let first = spawn_app().await;
    let updated = first.create_typical_form().await;
    let mut v2 = typical_form(&updated);
    v2["title"] = json!("Second version");
    let (status, answer) = send_json(
        first
            .acme(Method::PUT, &format!("/v1/forms/{updated}"))
            .json(&v2),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let plain = first.create_typical_form().await;
    let globex_form = format!("g{}", unique());
    first
        .create_form_as(GLOBEX_KEY, &typical_form(&globex_form))
        .await;
    let topics = first.topics.clone();
    first.stop().await.expect("the first gateway stops cleanly");

    // spawn_gateway returns only once /readyz answers 200.
    let second = spawn_gateway(GatewayOptions {
        topics: Some(topics.clone()),
        ..GatewayOptions::default()
    })
    .await;
    assert_eq!(second.topics, topics);

    let (status, form) = send_json(second.acme(Method::GET, &format!("/v1/forms/{updated}"))).await;
    assert_eq!(status, 200, "{form}");
    assert_eq!(form["version"], 2);
    assert_eq!(form["title"], "Second version");
    let (status, form) =
        send_json(second.acme(Method::GET, &format!("/v1/forms/{updated}?version=1"))).await;
    assert_eq!(status, 200, "{form}");
    assert_eq!(form["title"], "Household survey");
    let (status, form) = send_json(second.acme(Method::GET, &format!("/v1/forms/{plain}"))).await;
    assert_eq!(status, 200, "{form}");
    assert_eq!(form["version"], 1);
    let (status, list) = send_json(second.acme(Method::GET, "/v1/forms")).await;
    assert_eq!(status, 200);
    assert_eq!(list["forms"].as_array().map(Vec::len), Some(2), "{list}");
    let (status, list) = send_json(second.globex(Method::GET, "/v1/forms")).await;
    assert_eq!(status, 200);
    assert_eq!(list["forms"][0]["id"], globex_form.as_str(), "{list}");

    let (status, accepted) = second
        .submit(&updated, &valid_response("After restart"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["form_version"], 2);
    // A form id taken before the restart is still taken.
    let taken = second
        .acme(Method::POST, "/v1/forms")
        .json(&typical_form(&plain))
        .send()
        .await
        .expect("POST");
    assert_problem(taken, 409).await;

    let landed = second.responses_on_topic(1).await;
    assert_eq!(landed.len(), 1, "{landed:#?}");
    assert_eq!(landed[0].response.form_version, 2);

    second.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_a_result_per_item_and_only_valid_items_reach_the_topic() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let globex_form = format!("g{}", unique());
    app.create_form_as(GLOBEX_KEY, &typical_form(&globex_form))
        .await;

    let with_form = |form_id: &str, mut body: Value| {
        body["form_id"] = json!(form_id);
        body
    };
    let chosen_id = new_id();
    let mut chosen = with_form(&form, valid_response("Chosen id"));
    chosen["response_id"] = json!(chosen_id);
    let items = json!({"items": [
        with_form(&form, valid_response("First")),
        with_form(&form, json!({"collector": {"id": "c1"}, "answers": {"name": "Bad", "income": "lots", "bogus": 1}})),
        with_form("no-such-form", valid_response("Unknown form")),
        with_form(&globex_form, valid_response("Another organisation's form")),
        chosen,
        valid_response("No form id"),
        with_form(&form, json!({"collector": {"id": "c1"}, "answers": {"name": "Shape"}, "extra": 1})),
    ]});
    let (status, result) =
        send_json(app.acme(Method::POST, "/v1/responses/batch").json(&items)).await;
    assert_eq!(status, 207, "{result}");
    assert_eq!(result["accepted"], 2, "{result}");
    assert_eq!(result["rejected"], 5, "{result}");
    let results = result["results"].as_array().expect("results");
    let statuses: Vec<(u64, u64)> = results
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().expect("index"),
                r["status"].as_u64().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (0, 202),
            (1, 422),
            (2, 404),
            (3, 404),
            (4, 202),
            (5, 422),
            (6, 422)
        ]
    );
    assert_eq!(
        field_problems(&results[1]["problem"]),
        pairs(&[
            ("/items/1/answers/bogus", "unknown_question"),
            ("/items/1/answers/income", "not_a_number")
        ]),
        "an item's problems point into the batch: {result}"
    );
    assert_eq!(
        field_problems(&results[5]["problem"]),
        pairs(&[("/items/5/form_id", "required")])
    );
    assert_eq!(results[2]["problem"]["status"], 404);
    assert_eq!(
        results[3]["problem"], results[2]["problem"],
        "another organisation's form looks exactly like a missing one"
    );
    assert_eq!(results[4]["response_id"], chosen_id.as_str());

    // An empty batch is refused.
    let (status, problem) = send_json(
        app.acme(Method::POST, "/v1/responses/batch")
            .json(&json!({"items": []})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");

    let landed = app.responses_on_topic(2).await;
    assert_eq!(
        landed.len(),
        2,
        "only the valid items reached the topic: {landed:#?}"
    );
    for index in [0, 4] {
        let item = &results[index];
        let record = landed
            .iter()
            .find(|r| r.response.response_id == item["response_id"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("item {index} is on the topic: {item}"));
        assert_eq!(
            i64::from(record.partition),
            item["partition"].as_i64().expect("partition")
        );
        assert_eq!(record.offset, item["offset"].as_i64().expect("offset"));
        assert_eq!(record.key.as_deref(), Some(form.as_str()));
        assert_eq!(record.response.organisation, "acme");
    }

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_needs_a_key_and_another_organisations_forms_are_invisible() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let responses = format!("/v1/forms/{form}/responses");

    let anonymous = app
        .client
        .post(app.url(&responses))
        .json(&valid_response("Anonymous"))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        anonymous
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "a 401 says how to authenticate"
    );
    assert_problem(anonymous, 401).await;
    let bad_key = app
        .as_key("not-a-key", Method::POST, &responses)
        .json(&valid_response("Bad key"))
        .send()
        .await
        .expect("POST");
    assert_problem(bad_key, 401).await;
    let bad_list = app
        .as_key("not-a-key", Method::GET, "/v1/forms")
        .send()
        .await
        .expect("GET");
    assert_problem(bad_list, 401).await;
    let anonymous_form = app
        .client
        .post(app.url("/v1/forms"))
        .json(&typical_form("anon"))
        .send()
        .await
        .expect("POST");
    assert_problem(anonymous_form, 401).await;

    // X-Api-Key works as well as Bearer.
    let (status, list) = send_json(
        app.client
            .get(app.url("/v1/forms"))
            .header("x-api-key", ACME_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["forms"][0]["id"], form.as_str());

    // Globex cannot see, change or answer acme's form: 404, exactly like a form that does not exist.
    let missing = send_json(app.globex(Method::GET, "/v1/forms/no-such-form")).await;
    let (status, body) = send_json(app.globex(Method::GET, &format!("/v1/forms/{form}"))).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        (status, body),
        missing,
        "nothing reveals that the form exists"
    );
    let get = app
        .globex(Method::GET, &format!("/v1/forms/{form}"))
        .send()
        .await
        .expect("GET");
    assert_problem(get, 404).await;
    let put = app
        .globex(Method::PUT, &format!("/v1/forms/{form}"))
        .json(&typical_form(&form))
        .send()
        .await
        .expect("PUT");
    assert_problem(put, 404).await;
    let post = app
        .globex(Method::POST, &responses)
        .json(&valid_response("Globex"))
        .send()
        .await
        .expect("POST");
    assert_problem(post, 404).await;
    let mut correction = valid_response("Globex correction");
    correction["revision"] = json!(1);
    let correct = app
        .globex(Method::PUT, &format!("{responses}/{}", new_id()))
        .json(&correction)
        .send()
        .await
        .expect("PUT correction");
    assert_problem(correct, 404).await;
    let (status, list) = send_json(app.globex(Method::GET, "/v1/forms")).await;
    assert_eq!(status, 200);
    assert_eq!(
        list["forms"],
        json!([]),
        "globex's list holds none of acme's forms"
    );
    // Globex cannot take over acme's form id either: a form of the same id is globex's own,
    // another form (201, not a 409 that would reveal acme's).
    let (status, theirs) = send_json(
        app.globex(Method::POST, "/v1/forms")
            .json(&typical_form(&form)),
    )
    .await;
    assert_eq!(status, 201, "{theirs}");
    assert_eq!(theirs["organisation"], "globex");

    // The form is unchanged and nothing was published for globex.
    let (status, unchanged) = send_json(app.acme(Method::GET, &format!("/v1/forms/{form}"))).await;
    assert_eq!(status, 200);
    assert_eq!(unchanged["version"], 1);
    assert_eq!(unchanged["organisation"], "acme");
    let landed = app.responses_on_topic(0).await;
    assert!(landed.is_empty(), "{landed:#?}");

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template_never_by_form_id() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    for name in ["One", "Two"] {
        let (status, body) = app.submit(&form, &valid_response(name)).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _) = app
        .submit(&form, &json!({"collector": {"id": "c"}, "answers": {}}))
        .await;
    assert_eq!(status, 422);
    let (status, _) = app.submit("no-such-form", &valid_response("Nobody")).await;
    assert_eq!(status, 404);
    let (status, _) = send_json(app.acme(Method::GET, &format!("/v1/forms/{form}"))).await;
    assert_eq!(status, 200);

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("metrics text");
    assert!(
        !text.contains(&form),
        "no metric label holds a form id:\n{text}"
    );
    assert!(
        !text.contains("no-such-form"),
        "no metric label holds a requested path:\n{text}"
    );

    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("formstream_gateway_http_requests_total{"))
        .collect();
    let count = |route: &str, method: &str, status: &str| -> f64 {
        requests
            .iter()
            .filter(|l| {
                l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!(
        count("/v1/forms/{form_id}/responses", "POST", "202"),
        2.0,
        "{text}"
    );
    assert_eq!(
        count("/v1/forms/{form_id}/responses", "POST", "422"),
        1.0,
        "{text}"
    );
    assert_eq!(
        count("/v1/forms/{form_id}/responses", "POST", "404"),
        1.0,
        "{text}"
    );
    assert_eq!(count("/v1/forms/{form_id}", "GET", "200"), 1.0, "{text}");
    assert_eq!(count("/v1/forms", "POST", "201"), 1.0, "{text}");
    assert!(
        text.contains("formstream_gateway_http_request_duration_seconds_bucket"),
        "latency histograms are exported:\n{text}"
    );
    assert!(
        text.contains("formstream_gateway_produce_duration_seconds"),
        "{text}"
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_id_reused_for_another_form_is_not_answered_with_the_first_forms_record() {
    let app = spawn_app().await;
    let form_a = app.create_typical_form().await;
    let form_b = app.create_typical_form().await;
    let id = new_id();
    let mut body = valid_response("Same body");
    body["response_id"] = json!(id);
    let (status, first) = app.submit(&form_a, &body).await;
    assert_eq!(status, 202, "{first}");

    // The same id and body, to another form of the same organisation: not a retry of the first.
    let (status, answer) = app.submit(&form_b, &body).await;
    assert!(
        status == 409
            || (status == 202
                && answer["form_id"] == form_b.as_str()
                && answer["duplicate"] == false),
        "a POST to form B must not be answered with form A's record: {status} {answer}"
    );
    if status == 202 {
        let landed = app.responses_on_topic(2).await;
        assert!(
            landed
                .iter()
                .any(|r| r.key.as_deref() == Some(form_b.as_str())),
            "a 202 for form B names a record of form B: {landed:#?}"
        );
    }

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_id_reused_by_another_organisation_reveals_nothing_of_the_first() {
    let app = spawn_app().await;
    let acme_form = app.create_typical_form().await;
    let globex_form = format!("g{}", unique());
    app.create_form_as(GLOBEX_KEY, &typical_form(&globex_form))
        .await;
    let id = new_id();
    let mut body = valid_response("Same body");
    body["response_id"] = json!(id);
    let (status, first) = app.submit(&acme_form, &body).await;
    assert_eq!(status, 202, "{first}");

    // The same id and body from globex, to its own form: never answered with acme's form id,
    // partition and offset.
    let (status, answer) = send_json(
        app.globex(Method::POST, &format!("/v1/forms/{globex_form}/responses"))
            .json(&body),
    )
    .await;
    assert!(
        !answer.to_string().contains(&acme_form),
        "globex must not learn acme's form id from a reused response id: {status} {answer}"
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_reuses_a_response_id_with_other_content_publishes_it_once() {
    let app = spawn_app().await;
    let form = app.create_typical_form().await;
    let id = new_id();
    let item = |name: &str| {
        let mut body = valid_response(name);
        body["form_id"] = json!(form);
        body["response_id"] = json!(id);
        body
    };
    let (status, result) = send_json(
        app.acme(Method::POST, "/v1/responses/batch")
            .json(&json!({"items": [item("First content"), item("Other content")]})),
    )
    .await;
    assert_eq!(status, 207, "{result}");
    let statuses: Vec<u64> = result["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "one id with two contents: one is accepted, the other is a conflict: {result}"
    );

    let landed = app.responses_on_topic(1).await;
    let names: Vec<String> = landed
        .iter()
        .filter(|r| r.response.response_id == id && r.response.revision == 0)
        .filter_map(|r| r.response.answer("name").and_then(|a| a.text.clone()))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "revision 0 of one response is published once, not as two contents: {names:?}"
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_served_without_a_key_and_describes_the_routes() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{:?}",
        response.headers()
    );
    let doc: Value = response.json().await.expect("a JSON document");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{doc}"
    );
    let create = &doc["paths"]["/v1/forms"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/FormBody",
        "{create}"
    );
    assert!(
        create["responses"]["422"]["content"]["application/problem+json"].is_object(),
        "{create}"
    );
    assert!(
        doc["paths"]["/v1/forms/{form_id}/flags"]["get"]["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "status")),
        "{doc}"
    );
    app.finish().await;
}
