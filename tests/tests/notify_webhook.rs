//! Signed webhook delivery against a receiver that verifies Standard Webhooks signatures on its
//! own: signatures, secret rotation, and which failures are retriable.

use std::time::Duration;

use formstream_notify::Destinations;
use formstream_notify::webhook::{
    self, Envelope, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookError, WebhookSecret,
    WebhookSender,
};
use formstream_tests::webhook_receiver::WebhookReceiver;
use serde_json::json;
use time::OffsetDateTime;

fn envelope() -> Envelope<serde_json::Value> {
    Envelope::new(
        "response.flagged",
        OffsetDateTime::now_utc(),
        json!({"response_id": "7f3a", "revision": 2, "rule": "savings <= income", "city": "पुणे"}),
    )
}

/// The tests' receivers listen on 127.0.0.1: loopback is allowed, as in development.
fn sender() -> WebhookSender {
    WebhookSender::new(Duration::from_secs(5), Destinations::PublicAndLoopback).unwrap()
}

#[tokio::test]
async fn a_signed_delivery_verifies_at_the_receiver() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(&[&secret.expose()]).await;
    let sent = envelope();
    let delivered = sender()
        .deliver(&receiver.url(), &[secret], "7f3a.2", &sent)
        .await
        .unwrap();
    assert_eq!(delivered.status, 204);

    let received = receiver.deliveries();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert!(got.verified, "{got:?}");
    assert_eq!(got.id.as_deref(), Some("7f3a.2"));
    assert_eq!(got.body, serde_json::to_value(&sent).unwrap());
    assert_eq!(got.body["type"], "response.flagged");
    let timestamp: i64 = got.timestamp.as_deref().unwrap().parse().unwrap();
    assert!((OffsetDateTime::now_utc().unix_timestamp() - timestamp).abs() < 60);
    assert!(got.signatures.as_deref().unwrap().starts_with("v1,"));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_permanent() {
    let receiver = WebhookReceiver::start(&[&WebhookSecret::generate().expose()]).await;
    let error = sender()
        .deliver(
            &receiver.url(),
            &[WebhookSecret::generate()],
            "id-1",
            &envelope(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, WebhookError::Rejected { status: 401, .. }),
        "{error:?}"
    );
    let received = receiver.deliveries();
    assert_eq!(received.len(), 1);
    assert!(!received[0].verified);
    assert_eq!(received[0].answered, 401);
}

/// During a rotation the sender signs with both secrets; a receiver on either one accepts.
#[tokio::test]
async fn rotation_sends_two_signatures_that_either_receiver_accepts() {
    let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
    let on_old = WebhookReceiver::start(&[&old.expose()]).await;
    let on_new = WebhookReceiver::start(&[&new.expose()]).await;
    let both = [new.clone(), old.clone()];
    for receiver in [&on_old, &on_new] {
        sender()
            .deliver(&receiver.url(), &both, "rot-1", &envelope())
            .await
            .unwrap();
        let got = &receiver.deliveries()[0];
        assert!(got.verified);
        assert_eq!(got.signatures.as_deref().unwrap().split(' ').count(), 2);
    }
    // After the rotation, the old secret alone no longer gets through.
    on_old.set_secrets(&[&new.expose()]);
    let error = sender()
        .deliver(&on_old.url(), &[old], "rot-2", &envelope())
        .await
        .unwrap_err();
    assert!(!error.is_retriable());
}

/// Retries of one notification keep its webhook-id, so the receiver can deduplicate.
#[tokio::test]
async fn server_errors_and_429_are_retriable_and_retries_keep_the_id() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(&[&secret.expose()]).await;
    receiver.fail_next(1, 503, None);
    receiver.fail_next(1, 429, Some(12));
    receiver.fail_next(1, 500, None);
    let secrets = [secret];
    let (sender, envelope, url) = (sender(), envelope(), receiver.url());
    let attempt = || sender.deliver(&url, &secrets, "dup-1", &envelope);

    let first = attempt().await.unwrap_err();
    assert!(
        first.is_retriable() && first.retry_after().is_none(),
        "{first:?}"
    );
    let second = attempt().await.unwrap_err();
    assert_eq!(second.retry_after(), Some(Duration::from_secs(12)));
    assert!(attempt().await.unwrap_err().is_retriable());
    attempt().await.unwrap();

    let received = receiver.deliveries_of("dup-1");
    let answers: Vec<u16> = received.iter().map(|d| d.answered).collect();
    assert_eq!(answers, [503, 429, 500, 204]);
    assert!(received.iter().all(|d| d.verified));
}

#[tokio::test]
async fn gone_and_other_4xx_are_permanent() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(&[&secret.expose()]).await;
    receiver.fail_next(1, 410, None);
    receiver.fail_next(1, 400, None);
    let secrets = [secret];
    let gone = sender()
        .deliver(&receiver.url(), &secrets, "g-1", &envelope())
        .await
        .unwrap_err();
    assert!(gone.is_gone() && !gone.is_retriable(), "{gone:?}");
    let bad = sender()
        .deliver(&receiver.url(), &secrets, "g-2", &envelope())
        .await
        .unwrap_err();
    assert!(
        matches!(bad, WebhookError::Rejected { status: 400, .. }),
        "{bad:?}"
    );
}

#[tokio::test]
async fn a_slow_or_absent_receiver_is_retriable() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(&[&secret.expose()]).await;
    let secrets = [secret];
    let impatient =
        WebhookSender::new(Duration::from_millis(300), Destinations::PublicAndLoopback).unwrap();

    receiver.set_delay(Duration::from_secs(30));
    let slow = impatient
        .deliver(&receiver.url(), &secrets, "s-1", &envelope())
        .await
        .unwrap_err();
    assert!(slow.is_retriable(), "{slow:?}");
    assert_eq!(receiver.deliveries_of("s-1").len(), 1, "it did arrive");
    receiver.set_delay(Duration::ZERO);

    receiver.go_down();
    let down = impatient
        .deliver(&receiver.url(), &secrets, "s-2", &envelope())
        .await
        .unwrap_err();
    assert!(down.is_retriable(), "{down:?}");
    receiver.come_back().await;
    impatient
        .deliver(&receiver.url(), &secrets, "s-2", &envelope())
        .await
        .unwrap();
    assert_eq!(receiver.deliveries_of("s-2").len(), 1);
}

/// Our own `verify` (for receivers we write) agrees with the sender and the independent receiver.
#[tokio::test]
async fn verify_headers_accepts_what_the_sender_signs() {
    let secret = WebhookSecret::generate();
    let body = serde_json::to_vec(&envelope()).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(HEADER_ID, "v-1".parse().unwrap());
    headers.insert(
        HEADER_TIMESTAMP,
        now.unix_timestamp().to_string().parse().unwrap(),
    );
    let signature = webhook::signature_header(
        std::slice::from_ref(&secret),
        "v-1",
        now.unix_timestamp(),
        &body,
    );
    headers.insert(HEADER_SIGNATURE, signature.parse().unwrap());
    assert_eq!(
        webhook::verify_headers(std::slice::from_ref(&secret), &headers, &body, now),
        Ok(())
    );
    let later = now + time::Duration::minutes(6);
    assert!(webhook::verify_headers(&[secret], &headers, &body, later).is_err());
}
