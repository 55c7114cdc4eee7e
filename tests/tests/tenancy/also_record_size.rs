//! A response whose record is larger than Kafka accepts is a 413 with a clear message, at once,
//! never a 503 that clients retry for ever; a smaller one from the same client is accepted.

use formstream_tests::{GatewayOptions, assert_problem, spawn_gateway, valid_response};
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
