//! A response whose record is larger than Kafka accepts is a 413 with a clear message, at once,
//! never a 503 that clients retry for ever; a smaller one from the same client is accepted. A form
//! whose record (every version) would grow past it is refused at save (422 `form_too_large`).

use std::time::Duration;

use formstream_tests::{
    GatewayOptions, assert_problem, field_problems, pairs, read_topic, send_json, spawn_gateway,
    typical_form, valid_response,
};
use reqwest::Method;

#[tokio::test]
async fn a_record_larger_than_kafka_accepts_is_413_not_503() {
    // The producer's message.max.bytes far below --max-body-bytes: the body passes the gateway's
    // limit, the record does not pass Kafka's.
    let gateway =
        spawn_gateway(GatewayOptions::default().arg("-X", "message.max.bytes=2000")).await;
    let form_id = gateway.create_typical_form().await;
    let mut big = valid_response("Asha");
    big["answers"]["notes"] = "n".repeat(5_000).into();
    let response = gateway
        .acme(Method::POST, &format!("/v1/forms/{form_id}/responses"))
        .json(&big)
        .send()
        .await
        .expect("POST");
    let problem = assert_problem(response, 413).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("larger than Kafka accepts")),
        "{problem}"
    );
    let (status, body) = gateway.submit(&form_id, &valid_response("Ravi")).await;
    assert_eq!(status, 202, "{body}");
    gateway.finish().await;
}

/// A form's record holds every version, so it grows with each update: the update that would take
/// it past what Kafka accepts is a 422 `form_too_large`, not a 413 or 503, and the stored form
/// (the gateway's view and the forms topic) stays as it was, still taking responses.
#[tokio::test]
async fn a_form_grown_past_what_kafka_accepts_is_refused_and_stays_as_it_was() {
    let gateway =
        spawn_gateway(GatewayOptions::default().arg("-X", "message.max.bytes=20000")).await;
    let form_id = gateway.create_typical_form().await;
    let path = format!("/v1/forms/{form_id}");
    let mut form = typical_form(&form_id);
    let mut saved = 1;
    let refused = loop {
        form["description"] = format!("version {}: {}", saved + 1, "d".repeat(3_000)).into();
        let response = gateway
            .acme(Method::PUT, &path)
            .json(&form)
            .send()
            .await
            .expect("PUT");
        if response.status() != 200 {
            break response;
        }
        saved += 1;
        assert!(saved < 50, "the form never became too large");
    };
    let problem = assert_problem(refused, 422).await;
    assert_eq!(
        field_problems(&problem),
        pairs(&[("", "form_too_large")]),
        "{problem}"
    );
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("larger than Kafka accepts")),
        "{problem}"
    );
    assert!(saved >= 3, "several versions fitted before: {saved}");

    let (status, current) = send_json(gateway.acme(Method::GET, &path)).await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["version"], saved, "{current}");
    let key_suffix = format!("/{form_id}");
    let records: Vec<_> = read_topic(
        &gateway.bootstrap,
        &gateway.topics.forms,
        saved,
        Duration::from_secs(30),
    )
    .await
    .expect("reading the forms topic")
    .into_iter()
    .filter(|r| r.key.as_deref().is_some_and(|k| k.ends_with(&key_suffix)))
    .collect();
    assert_eq!(
        records.len(),
        saved,
        "one record per saved version, none for the refused one"
    );
    let (status, body) = gateway.submit(&form_id, &valid_response("Ravi")).await;
    assert_eq!(status, 202, "{body}");
    gateway.finish().await;
}
