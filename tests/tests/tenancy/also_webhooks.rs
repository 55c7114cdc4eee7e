//! A form's `webhook_url` cannot make notify-collectors reach into its own network: a URL whose
//! host is, or resolves to, a loopback, private or link-local address is refused at send, before
//! any connection, and the refusal is permanent (the record is dead-lettered with the reason, not
//! retried). Loopback is allowed only with the development setting.
//!
//! Only loopback receivers are used: a refusal that failed would otherwise send traffic to a
//! private address. The private and link-local classes are covered address by address in
//! `formstream_notify::destination`'s unit tests, on the same code path.

use std::time::Duration;

use formstream_notify::Destinations;
use formstream_notify::webhook::{Envelope, WebhookError, WebhookSecret, WebhookSender};
use formstream_tests::webhook_receiver::WebhookReceiver;
use serde_json::json;
use time::OffsetDateTime;

fn envelope() -> Envelope<serde_json::Value> {
    Envelope::new(
        "response.flagged",
        OffsetDateTime::now_utc(),
        json!({"response_id": "7f3a", "revision": 0}),
    )
}

#[tokio::test]
async fn webhooks_to_loopback_are_refused_unless_development_allows_them() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(&[&secret.expose()]).await;
    let url = receiver.url();
    let port = url::Url::parse(&url).unwrap().port().unwrap();
    let production = WebhookSender::new(Duration::from_secs(5), Destinations::Public).unwrap();

    // An IP literal (checked before sending), a name (checked by the resolver the connection
    // uses) and a loopback address dressed as IPv6.
    for target in [
        url.clone(),
        url.replace("127.0.0.1", "localhost"),
        url.replace("127.0.0.1", "[::ffff:127.0.0.1]"),
        format!("http://127.1.2.3:{port}/hook"),
    ] {
        let error = production
            .deliver(&target, std::slice::from_ref(&secret), "id-1", &envelope())
            .await
            .expect_err("a loopback webhook is refused");
        assert!(
            matches!(&error, WebhookError::Invalid(reason) if reason.contains("loopback")),
            "{target}: {error:?}"
        );
        assert!(!error.is_retriable(), "{target}: a refusal is permanent");
    }
    assert!(
        receiver.deliveries().is_empty(),
        "nothing reached the receiver: {:?}",
        receiver.deliveries()
    );

    // The same receiver, with the development setting: delivered.
    let development =
        WebhookSender::new(Duration::from_secs(5), Destinations::PublicAndLoopback).unwrap();
    for target in [url.clone(), url.replace("127.0.0.1", "localhost")] {
        development
            .deliver(&target, std::slice::from_ref(&secret), "id-2", &envelope())
            .await
            .unwrap_or_else(|e| panic!("{target}: {e:?}"));
    }
    assert_eq!(receiver.deliveries_of("id-2").len(), 2);
    assert!(receiver.deliveries_of("id-1").is_empty());
}
