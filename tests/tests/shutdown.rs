//! Graceful shutdown of the gateway: once the shutdown signal comes, requests already in flight
//! are answered before `run` returns (in the binary, returning ends the process), their records
//! are on the topic, and no new connection is served.

use std::time::{Duration, Instant};

use formstream_tests::{GatewayOptions, spawn_gateway, valid_response, wait_until};
use serde_json::Value;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_their_records_reach_the_topic() {
    // A long linger keeps each produce waiting for its batch, so requests are verifiably in
    // flight when the signal comes.
    let gateway = spawn_gateway(GatewayOptions::default().arg("--linger-ms", 1000)).await;
    let form_id = gateway.create_typical_form().await;
    let address = gateway.address.clone();
    let bootstrap = gateway.bootstrap.clone();
    let responses_topic = gateway.topics.responses.clone();

    let submissions = 20;
    let mut tasks = Vec::new();
    for i in 0..submissions {
        let request = gateway
            .acme(
                reqwest::Method::POST,
                &format!("/v1/forms/{form_id}/responses"),
            )
            .json(&{
                let mut body = valid_response(&format!("in-flight {i}"));
                body["response_id"] = Value::String(Uuid::new_v4().to_string());
                body
            });
        tasks.push(tokio::spawn(async move {
            // A transport error (the request never reached a gateway that was still accepting)
            // is reported as status 0.
            match request.send().await {
                Err(_) => (0, Value::Null, Instant::now()),
                Ok(response) => {
                    let answered = Instant::now();
                    let status = response.status().as_u16();
                    let body = response.json().await.unwrap_or(Value::Null);
                    (status, body, answered)
                }
            }
        }));
    }

    // Wait until the gateway holds several of them (the /metrics request itself counts as one).
    let in_flight = wait_until(Duration::from_secs(20), || async {
        gateway
            .metric("formstream_gateway_http_requests_in_flight")
            .await
            .is_some_and(|n| n >= 3.0)
    })
    .await;
    assert!(in_flight, "requests never piled up in flight");

    gateway
        .stop()
        .await
        .expect("the gateway stops cleanly within its deadline");
    let stopped = Instant::now();

    let mut accepted = Vec::new();
    for task in tasks {
        let (status, body, answered) = task.await.expect("submission task");
        // A request that reached the gateway before the signal is answered; one that had not yet
        // connected is refused (status 0). Nothing else.
        assert!(status == 202 || status == 0, "unexpected {status}: {body}");
        // Answered before `run` returned (allowing the client a moment to read the answer); a
        // gateway that returned early would leave them to be cut when its process exits.
        assert!(
            answered <= stopped + Duration::from_millis(250),
            "a request was answered {:?} after the gateway had stopped",
            answered - stopped
        );
        if status == 202 {
            accepted.push(
                body["response_id"]
                    .as_str()
                    .expect("response_id")
                    .to_owned(),
            );
        }
    }
    assert!(
        accepted.len() >= 2,
        "in-flight requests were cut instead of finished: {accepted:?}"
    );

    // Every acknowledged response is on the topic.
    let landed = formstream_tests::read_responses(
        &bootstrap,
        &responses_topic,
        accepted.len(),
        Duration::from_secs(30),
    )
    .await
    .expect("reading the responses topic");
    for id in &accepted {
        assert!(
            landed.iter().any(|l| &l.response.response_id == id),
            "response {id} was answered 202 but is not on the topic"
        );
    }

    // The gateway no longer serves.
    let after = reqwest::Client::new()
        .get(format!("{address}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "the gateway still answers after shutdown");
    formstream_tests::delete_topics(&bootstrap, &[&responses_topic]).await;
}
