//! The console's Slang page's data path (issue 16): the gateway's
//! `/console/api/slang/{form_id}/{question}/words|answers` routes forward to a real slang processor
//! (its index and search API, in-process, on the real broker) as the caller's organisation.
//!
//! Invariants proved here: an organisation sees its own slang words and answers through the
//! gateway, by key or by console session; another organisation asking for its form gets the
//! gateway's own 404 (decided by the gateway, even when slang is down), and its own form of the
//! same id shows only its own words; the search API's problems (a bad `limit`) are relayed as
//! they are; slang down is a 503 problem+json; a gateway without `--console-slang-url` says so
//! (501).

use std::time::Duration;

use formstream_tests::runtime::RuntimeTopics;
use formstream_tests::slang::{SlangProcess, search_listener};
use formstream_tests::*;
use serde_json::{Value, json};

/// The same form id in both organisations, with a slang action on `words`.
const FORM: &str = "household";

fn household(title: &str) -> Value {
    json!({
        "id": FORM,
        "title": title,
        "questions": [
            {"key": "city", "text": "City", "type": "single_choice",
             "choices": [{"key": "pune", "text": "Pune"}, {"key": "delhi", "text": "Delhi"}]},
            {"key": "words", "text": "How do you greet a friend?", "type": "text"}
        ],
        "slang": {"city_question": "city", "text_questions": ["words"]}
    })
}

fn answer(city: &str, words: &str) -> Value {
    json!({"collector": {"id": "collector-1"}, "answers": {"city": city, "words": words}})
}

/// City -> [(word, answers)] of a words answer.
fn words_of(body: &Value) -> Vec<(String, Vec<(String, u64)>)> {
    body["cities"]
        .as_array()
        .map(|cities| {
            cities
                .iter()
                .map(|c| {
                    let words = c["words"]
                        .as_array()
                        .map(|ws| {
                            ws.iter()
                                .map(|w| {
                                    (
                                        w["word"].as_str().unwrap_or_default().to_owned(),
                                        w["answers"].as_u64().unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (c["city"].as_str().unwrap_or_default().to_owned(), words)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Signs in with `key`; the session cookie to send back.
async fn session_cookie(app: &TestGateway, key: &str) -> String {
    let response = app
        .client
        .post(app.url("/console/api/session"))
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("signing in");
    assert_eq!(response.status(), 201);
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    assert!(
        !response.text().await.expect("a body").contains(key),
        "the key is never sent back to the browser"
    );
    cookie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slang_words_and_answers_reach_their_own_organisation_only_through_the_console_routes() {
    let id = unique();
    let (listener, search_url) = search_listener().await;
    let app = spawn_gateway(GatewayOptions::default().arg("--console-slang-url", &search_url)).await;
    let topics = RuntimeTopics {
        bootstrap: app.bootstrap.clone(),
        forms: app.topics.forms.clone(),
        responses: app.topics.responses.clone(),
        flags: app.topics.flags.clone(),
        dlq: format!("test-{id}-slang-dlq"),
        group: format!("test-{id}-slang"),
        partitions: 6,
    };
    let slang = SlangProcess::start(topics.config(&[]), listener).await;

    app.create_form_as(ACME_KEY, &household("Acme households"))
        .await;
    app.create_form_as(GLOBEX_KEY, &household("Globex households"))
        .await;
    let mut acme_only = household("Acme only");
    acme_only["id"] = json!("acme-only");
    app.create_form_as(ACME_KEY, &acme_only).await;
    for (city, words) in [
        ("pune", "kya scene hai bhai"),
        ("pune", "bhai ekdum jhakaas"),
        ("pune", "namaste"),
        ("delhi", "kya haal hai yaar"),
    ] {
        let request = app
            .acme(reqwest::Method::POST, &format!("/v1/forms/{FORM}/responses"))
            .json(&answer(city, words));
        let (status, body) = send_json(request).await;
        assert_eq!(status, 202, "{body}");
    }
    let request = app
        .globex(reqwest::Method::POST, &format!("/v1/forms/{FORM}/responses"))
        .json(&answer("pune", "howdy partner"));
    let (status, body) = send_json(request).await;
    assert_eq!(status, 202, "{body}");

    let words_path = format!("/console/api/slang/{FORM}/words/words");
    let get = |key: &'static str, path: String| {
        let request = app.as_key(key, reqwest::Method::GET, &path);
        async move { anyhow::Ok(send_json(request).await) }
    };
    // Acme's words through the gateway, once slang has indexed all four answers.
    let (status, acme_words) = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || get(ACME_KEY, words_path.clone()),
        |(status, body)| *status == 200 && body["cities"].as_array().is_some_and(|c| c.len() == 2),
    )
    .await
    .expect("polling the words");
    assert_eq!(status, 200, "{acme_words}");
    let acme = words_of(&acme_words);
    assert_eq!(acme[0].0, "pune", "{acme_words}");
    assert_eq!(acme[0].1[0], ("bhai".to_owned(), 2), "{acme_words}");
    assert!(
        acme.iter()
            .all(|(_, words)| words.iter().all(|(w, _)| w != "howdy")),
        "globex's words never reach acme: {acme_words}"
    );

    // The same through a console session (the key stays on the server).
    let cookie = session_cookie(&app, ACME_KEY).await;
    let request = app
        .client
        .get(app.url(&format!(
            "/console/api/slang/{FORM}/words/answers?q=bhai&city=pune"
        )))
        .header(reqwest::header::COOKIE, &cookie);
    let (status, found) = send_json(request).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["total"], 2, "{found}");
    let mut texts: Vec<&str> = found["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|hit| {
            assert_eq!(hit["cities"], json!(["pune"]), "{hit}");
            hit["text"].as_str().expect("a text")
        })
        .collect();
    texts.sort_unstable();
    assert_eq!(texts, ["bhai ekdum jhakaas", "kya scene hai bhai"]);
    let request = app
        .client
        .get(app.url(&words_path))
        .header(reqwest::header::COOKIE, &cookie);
    assert_eq!(send_json(request).await, (200, acme_words.clone()));

    // Globex: its own household shows its own words only.
    let (status, globex_words) = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || get(GLOBEX_KEY, words_path.clone()),
        |(status, body)| *status == 200 && !words_of(body).is_empty(),
    )
    .await
    .expect("polling globex's words");
    assert_eq!(status, 200, "{globex_words}");
    assert_eq!(
        words_of(&globex_words),
        vec![(
            "pune".to_owned(),
            vec![("howdy".to_owned(), 1), ("partner".to_owned(), 1)]
        )],
        "{globex_words}"
    );
    // Acme's other form is the 404 every route gives globex for it, by key and by session.
    let not_found = |response| assert_problem(response, 404);
    let direct = not_found(
        app.globex(reqwest::Method::GET, "/v1/forms/acme-only")
            .send()
            .await
            .expect("GET /v1/forms/acme-only"),
    )
    .await;
    let proxied = not_found(
        app.globex(
            reqwest::Method::GET,
            "/console/api/slang/acme-only/words/words",
        )
        .send()
        .await
        .expect("the console route"),
    )
    .await;
    assert_eq!(proxied, direct);
    let globex_cookie = session_cookie(&app, GLOBEX_KEY).await;
    let by_session = app
        .client
        .get(app.url("/console/api/slang/acme-only/words/answers?q=bhai"))
        .header(reqwest::header::COOKIE, &globex_cookie)
        .send()
        .await
        .expect("the console route");
    assert_eq!(not_found(by_session).await, direct);
    // No key, no session: 401.
    let anonymous = app
        .client
        .get(app.url(&words_path))
        .send()
        .await
        .expect("the console route");
    assert_problem(anonymous, 401).await;

    // The search API's own problem, relayed: limit out of range.
    let bad = app
        .acme(reqwest::Method::GET, &format!("{words_path}?limit=0"))
        .send()
        .await
        .expect("the console route");
    let problem = assert_problem(bad, 422).await;
    assert_eq!(field_problems(&problem), pairs(&[("/limit", "out_of_range")]));

    // Slang down: a 503 problem for acme; globex still gets the gateway's own 404 for acme's form.
    slang.stop().await;
    let down = app
        .acme(reqwest::Method::GET, &words_path)
        .send()
        .await
        .expect("the console route");
    let problem = assert_problem(down, 503).await;
    assert_eq!(problem["type"], "/problems/slang-unavailable", "{problem}");
    let still_hidden = app
        .globex(
            reqwest::Method::GET,
            "/console/api/slang/acme-only/words/words",
        )
        .send()
        .await
        .expect("the console route");
    assert_eq!(not_found(still_hidden).await, direct);
    app.finish().await;

    // A gateway without --console-slang-url says so.
    let plain = spawn_app().await;
    let unconfigured = plain
        .acme(reqwest::Method::GET, &words_path)
        .send()
        .await
        .expect("the console route");
    let problem = assert_problem(unconfigured, 501).await;
    assert_eq!(problem["type"], "/problems/slang-not-configured", "{problem}");
    plain.finish().await;
}
