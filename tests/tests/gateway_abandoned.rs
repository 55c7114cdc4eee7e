//! A client that goes away while its response is being published: Kafka's answer still reaches
//! the gateway's retry cache, so the client's retry is answered from it (the same partition and
//! offset, `duplicate: true`) rather than published again and again.
//!
//! Invariant proved here: a claimed submission's cache entry follows Kafka's answer for its
//! record, whether or not the request that claimed it is still waiting.

use std::sync::Mutex;
use std::time::Duration;

use formstream_tests::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_client_went_away_mid_publish_is_answered_from_the_cache() {
    // A long linger keeps the record in the producer well after the client has gone.
    let app = spawn_gateway(GatewayOptions::default().arg("--linger-ms", 500)).await;
    let form = app.create_typical_form().await;
    let mut body = valid_response("Asha");
    body["response_id"] = json!(uuid::Uuid::new_v4().to_string());

    // The request, written in one piece over a raw connection...
    let host = app.address.trim_start_matches("http://").to_owned();
    let payload = serde_json::to_string(&body).expect("a JSON body");
    let request = format!(
        "POST /v1/forms/{form}/responses HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ACME_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connecting to the gateway");
    stream.write_all(request.as_bytes()).await.expect("writing");
    // ...which is closed once the gateway holds the request (it is in flight beside the scrape
    // that asks), and so before Kafka answers (the linger holds the record back).
    assert!(
        wait_until(Duration::from_secs(10), || in_flight_at_least(&app, 2.0)).await,
        "the request never showed as in flight"
    );
    stream.shutdown().await.expect("closing");
    drop(stream);

    // Kafka takes the record all the same.
    let landed = app.responses_on_topic(1).await;
    let first = &landed[0];

    // Until Kafka's answer has reached the cache, a retry is published again (a harmless
    // duplicate); from then on it is answered from the cache, with the first record's place.
    let answers = Mutex::new(Vec::new());
    let answered_from_cache = wait_until(Duration::from_secs(20), || {
        let (app, form, body, answers) = (&app, &form, &body, &answers);
        async move {
            let (status, answer) = app.submit(form, body).await;
            assert_eq!(status, 202, "{answer}");
            let repeat = answer["duplicate"] == json!(true);
            answers.lock().expect("not poisoned").push(answer);
            repeat
        }
    })
    .await;
    let answers = answers.into_inner().expect("not poisoned");
    assert!(
        answered_from_cache,
        "every retry was published again: the abandoned request's claim never completed: {answers:#?}"
    );
    let last = answers.last().expect("an answer");
    assert_eq!(last["partition"], json!(first.partition), "{last}");
    assert_eq!(last["offset"], json!(first.offset), "{last}");

    // The abandoned request left the in-flight gauge too: only the scrape is in flight.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            in_flight(&app).await == Some(1.0)
        })
        .await,
        "the in-flight gauge still counts the abandoned request: {:?}",
        in_flight(&app).await
    );
    app.finish().await;
}

/// `formstream_gateway_http_requests_in_flight`, counting the scrape that reads it.
async fn in_flight(app: &TestGateway) -> Option<f64> {
    app.metric("formstream_gateway_http_requests_in_flight")
        .await
}

async fn in_flight_at_least(app: &TestGateway, count: f64) -> bool {
    in_flight(app).await.is_some_and(|n| n >= count)
}
