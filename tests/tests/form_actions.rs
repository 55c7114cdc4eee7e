//! A form action that a processor declares itself, through the real `formstream` binary: the
//! journal owns `"actions": {"journal": {"answers": [...]}}` (processors/journal/src/action.rs;
//! no gateway code names it). `formstream gateway` saves a form with it and shows it back,
//! refuses a bad one and an action no processor owns with 422 problems pointing at them, and
//! `formstream process journal` then writes the chosen answers into the form's journal lines.
//!
//! Build the binary first (`cargo build --bin formstream`; `deploy/local/test.sh` does).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use formstream_tests::runtime::{eventually, formstream_binary};
use formstream_tests::{
    ACME_KEY, Topics, bootstrap, delete_topics, field_problems, pairs, send_json, typical_form,
    unique, valid_response, write_keys_file,
};
use reqwest::Client;
use serde_json::{Value, json};

/// A child process of the test, killed when dropped (also when the test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn topic_flags(topics: &Topics) -> Vec<String> {
    let flags = [
        ("--kafka-bootstrap", bootstrap()),
        ("--forms-topic", topics.forms.clone()),
        ("--responses-topic", topics.responses.clone()),
        ("--flags-topic", topics.flags.clone()),
    ];
    flags
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// `formstream gateway` on `topics`, ready: the process, its API keys file (kept while it runs),
/// an HTTP client and its base URL.
async fn start_gateway(topics: &Topics) -> (Running, tempfile::TempPath, Client, String) {
    let keys = write_keys_file().expect("an API keys file");
    let port = free_port();
    let gateway = Running(
        Command::new(formstream_binary())
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
            .args(topic_flags(topics))
            .args(["--responses-partitions", "3", "--forms-partitions", "1"])
            .args(["--api-keys-file", &keys.to_string_lossy()])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting formstream gateway"),
    );
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(60), "the gateway is ready", || async {
        let ready = client.get(format!("{base}/readyz")).send().await;
        ready.is_ok_and(|r| r.status().is_success())
    })
    .await;
    (gateway, keys, client, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_declares_its_form_action_and_the_gateway_checks_it() {
    let topics = Topics::fresh();
    let (_gateway, _keys, client, base) = start_gateway(&topics).await;
    let url = |path: &str| format!("{base}{path}");
    let post_form = |form: Value| {
        let request = client.post(url("/v1/forms")).bearer_auth(ACME_KEY);
        send_json(request.json(&form))
    };

    // A form with the journal's action is saved, and shown with it.
    let form_id = format!("f-{}", unique());
    let mut form = typical_form(&form_id);
    form["actions"] = json!({"journal": {"answers": ["name", "city"]}});
    let (status, saved) = post_form(form.clone()).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["actions"], form["actions"]);
    let request = client
        .get(url(&format!("/v1/forms/{form_id}")))
        .bearer_auth(ACME_KEY);
    let (status, shown) = send_json(request).await;
    assert_eq!((status, &shown["actions"]), (200, &form["actions"]));

    // Bad settings, and an action no processor owns: 422, pointing at each problem.
    let mut bad = typical_form(&format!("f-{}", unique()));
    bad["actions"] = json!({"journal": {"answers": ["name", "nope"]}, "mailchimp": {"list": 3}});
    let (status, problem) = post_form(bad).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[
            ("/actions/journal/answers/1", "unknown_question"),
            ("/actions/mailchimp", "unknown_action"),
        ])
    );
    let mut bad = typical_form(&format!("f-{}", unique()));
    bad["actions"] = json!({"journal": {"answer": ["name"]}});
    let (status, problem) = post_form(bad).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_problems(&problem),
        pairs(&[("/actions/journal/answer", "invalid_action")])
    );

    // The journal processor writes the chosen answers into the form's lines.
    let dir = tempfile::tempdir().expect("a folder for the journal");
    let journal = dir.path().join("journal.jsonl");
    let group = format!("test-{}-journal", unique());
    let _processor = Running(
        Command::new(formstream_binary())
            .args([
                "process",
                "journal",
                "--journal-path",
                &journal.to_string_lossy(),
            ])
            .args(topic_flags(&topics))
            .args(["--group-id", &group, "--dlq-topic", &format!("{group}.dlq")])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting formstream process journal"),
    );
    let path = format!("/v1/forms/{form_id}/responses");
    let request = client.post(url(&path)).bearer_auth(ACME_KEY);
    let (status, receipt) = send_json(request.json(&valid_response("Asha"))).await;
    assert_eq!(status, 202, "{receipt}");
    let line_of_form = || {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["form_id"] == form_id.as_str())
    };
    eventually(
        Duration::from_secs(60),
        "the journal has the response",
        || {
            let found = line_of_form().is_some();
            async move { found }
        },
    )
    .await;
    let line = line_of_form().expect("the journal line");
    assert_eq!(line["answers"]["name"]["text"], "Asha", "{line}");
    assert_eq!(
        line["answers"]["city"]["choices"],
        json!(["pune"]),
        "{line}"
    );
    assert!(
        line["answers"].get("income").is_none(),
        "only the chosen answers: {line}"
    );

    let dlq = format!("{group}.dlq");
    let mut all: Vec<&str> = topics.all().to_vec();
    all.push(&dlq);
    delete_topics(&bootstrap(), &all).await;
}

/// The actions that are top-level fields of a form (`receipt`, `notify`, `slang`, `sheets`), each
/// owned by its processor's crate and registered by src/processors.rs, keep the public JSON of
/// docs/api.md: saved and shown back as posted, every problem at its pointer in the order the
/// gateway always listed them, and a field of the wrong shape refused alone as `invalid_shape`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processors_top_level_actions_keep_their_json() {
    let topics = Topics::fresh();
    let (_gateway, _keys, client, base) = start_gateway(&topics).await;
    let post_form = |form: Value| {
        let request = client
            .post(format!("{base}/v1/forms"))
            .bearer_auth(ACME_KEY);
        send_json(request.json(&form))
    };

    let form_id = format!("f-{}", unique());
    let mut form = typical_form(&form_id);
    let actions = json!({
        "receipt": {"phone_question": "phone", "template": "Thanks {{ answers.name }}"},
        "notify": {"sms_collector": true, "webhook_url": "https://example.org/hook"},
        "slang": {"city_question": "city", "text_questions": ["notes"]},
        "sheets": {"create": true},
    });
    for (field, settings) in actions.as_object().expect("an object") {
        form[field] = settings.clone();
    }
    let (status, saved) = post_form(form).await;
    assert_eq!(status, 201, "{saved}");
    let request = client
        .get(format!("{base}/v1/forms/{form_id}"))
        .bearer_auth(ACME_KEY);
    let (status, shown) = send_json(request).await;
    assert_eq!(status, 200, "{shown}");
    for (field, settings) in actions.as_object().expect("an object") {
        assert_eq!((field, &saved[field]), (field, settings), "{saved}");
        assert_eq!((field, &shown[field]), (field, settings), "{shown}");
    }
    // Without them: notify shown as telling nobody, sheets as null, the others absent.
    let plain_id = format!("f-{}", unique());
    let (status, plain) = post_form(typical_form(&plain_id)).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["notify"], json!({"sms_collector": false}), "{plain}");
    assert_eq!(plain["sheets"], Value::Null, "{plain}");
    assert!(plain.get("receipt").is_none() && plain.get("slang").is_none());

    // Every problem, at its pointer, in the gateway's order (the rules', then each field's).
    let mut bad = typical_form(&format!("f-{}", unique()));
    bad["receipt"] = json!({"phone_question": "name", "template": "{{ answers.age }}"});
    bad["notify"] = json!({"webhook_url": "ftp://example.org/x"});
    bad["slang"] = json!({"city_question": "town", "text_questions": ["income"]});
    bad["sheets"] = json!({});
    let (status, problem) = post_form(bad).await;
    assert_eq!(status, 422, "{problem}");
    let in_order: Vec<(String, String)> = (problem["errors"].as_array().expect("errors"))
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap_or_default().to_owned(),
                e["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("/receipt/phone_question", "not_a_phone_question"),
        ("/receipt/template", "unknown_question"),
        ("/notify/webhook_url", "invalid_webhook_url"),
        ("/slang/city_question", "unknown_question"),
        ("/slang/text_questions/0", "not_a_text_question"),
        ("/sheets", "required"),
    ];
    let expected: Vec<(String, String)> = (expected.iter())
        .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(in_order, expected, "{problem}");

    // A field of the wrong shape: that problem alone, as for any body of the wrong shape.
    for (field, settings, pointer) in [
        ("receipt", json!({"phone_question": "phone"}), "/receipt"),
        ("notify", Value::Null, "/notify"),
        (
            "slang",
            json!({"city_question": 3, "text_questions": []}),
            "/slang/city_question",
        ),
        ("sheets", json!({"create": true, "tab": "x"}), "/sheets/tab"),
    ] {
        let mut bad = typical_form(&format!("f-{}", unique()));
        bad["title"] = json!(" "); // a problem of its own, not listed beside a shape problem
        bad[field] = settings;
        let (status, problem) = post_form(bad).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(
            field_problems(&problem),
            pairs(&[(pointer, "invalid_shape")]),
            "{field}"
        );
    }

    delete_topics(&bootstrap(), &topics.all()).await;
}
