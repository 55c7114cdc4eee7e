//! The Twilio client against the stateful fake: every outcome class, and reconciliation that
//! keeps an ambiguous failure from becoming a second SMS (promise 2).

use std::time::Duration;

use formstream_notify::twilio::{ListFilter, Originator, TwilioClient, TwilioConfig};
use formstream_notify::{Outbox, SmsError, SmsSender};
use formstream_tests::twilio_fake::{FAKE_FROM, FakeTwilio, Fault};
use formstream_tests::wait_until;
use time::OffsetDateTime;

const TO: &str = "+919876543210";
const DEADLINE: Duration = Duration::from_secs(10);

fn today() -> time::Date {
    OffsetDateTime::now_utc().date()
}

fn client(config: TwilioConfig) -> TwilioClient {
    TwilioClient::new(config).expect("a valid config")
}

#[tokio::test]
async fn a_message_is_created_with_the_real_parameters() {
    let fake = FakeTwilio::start().await;
    let mut config = fake.config();
    config.status_callback = Some("https://example.org/twilio/status".into());
    let sent = client(config)
        .send(TO, "Receipt R1a2b-0: thank you")
        .await
        .unwrap();

    assert!(
        sent.sid.starts_with("SM") && sent.sid.len() == 34,
        "{sent:?}"
    );
    assert_eq!(sent.status, "queued");
    assert_eq!(sent.num_segments, Some(1));
    let held = fake.messages();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].sid, sent.sid);
    assert_eq!(held[0].to, TO);
    assert_eq!(held[0].from.as_deref(), Some(FAKE_FROM));
    assert_eq!(held[0].body, "Receipt R1a2b-0: thank you");
    assert_eq!(
        held[0].status_callback.as_deref(),
        Some("https://example.org/twilio/status")
    );
    assert_eq!(fake.requests_of("POST"), 1);
}

#[tokio::test]
async fn a_messaging_service_sends_instead_of_a_number() {
    let fake = FakeTwilio::start().await;
    let config = fake.config_with(Originator::MessagingService("MG0123".into()));
    let sent = client(config).send(TO, "धन्यवाद R9").await.unwrap();
    assert_eq!(sent.status, "accepted");
    let held = fake.messages_to(TO);
    assert_eq!(held[0].messaging_service_sid.as_deref(), Some("MG0123"));
    assert_eq!(held[0].from, None);
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_create_nothing() {
    let fake = FakeTwilio::start().await;
    let twilio = client(fake.config());
    fake.fail_next(
        1,
        Fault::RateLimit {
            retry_after: Some(7),
        },
    );
    fake.fail_next(1, Fault::RateLimit { retry_after: None });

    let first = twilio.send(TO, "R1").await.unwrap_err();
    assert!(
        matches!(first, SmsError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{first:?}"
    );
    let second = twilio.send(TO, "R1").await.unwrap_err();
    assert!(matches!(
        second,
        SmsError::RateLimited { retry_after: None }
    ));
    assert!(!second.needs_reconciliation());
    assert!(fake.messages().is_empty());

    // Safe to retry blindly: the retry creates the one message.
    twilio.send(TO, "R1").await.unwrap();
    assert_eq!(fake.messages_to(TO).len(), 1);
    assert_eq!(fake.requests_of("POST"), 3);
}

/// A 5xx after the message was created: the caller must not re-send blindly. Reconciling by the
/// receipt reference finds the message, so the caller records its sid and sends nothing more.
#[tokio::test]
async fn an_ambiguous_failure_is_reconciled_without_a_second_sms() {
    let fake = FakeTwilio::start().await;
    let twilio = client(fake.config());
    fake.fail_next(1, Fault::FailAfterCreate(500));

    let reference = "R7f3a9c-2";
    let error = twilio
        .send(TO, &format!("Receipt {reference}: thank you"))
        .await
        .unwrap_err();
    assert!(error.needs_reconciliation(), "{error:?}");
    assert!(error.is_retriable());

    let found = send_unless_found(&twilio, reference).await;
    let held = fake.messages_to(TO);
    assert_eq!(held.len(), 1, "no second SMS");
    assert_eq!(found, held[0].sid);
    assert_eq!(fake.requests_of("POST"), 1);
}

/// A 5xx before anything was created: reconciliation finds nothing, so one re-send is right.
#[tokio::test]
async fn an_ambiguous_failure_that_created_nothing_is_sent_once_more() {
    let fake = FakeTwilio::start().await;
    let twilio = client(fake.config());
    fake.fail_next(1, Fault::FailBeforeCreate(503));

    let error = twilio.send(TO, "Receipt Rb0b-0").await.unwrap_err();
    assert!(error.needs_reconciliation(), "{error:?}");
    let sid = send_unless_found(&twilio, "Rb0b-0").await;
    let held = fake.messages_to(TO);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].sid, sid);
    assert_eq!(fake.requests_of("POST"), 2);
}

/// What a processor does on the attempt after an ambiguous failure: look first, send if absent.
async fn send_unless_found(twilio: &TwilioClient, reference: &str) -> String {
    match twilio.find_sent(TO, reference, today()).await.unwrap() {
        Some(found) => found.sid,
        None => {
            twilio
                .send(TO, &format!("Receipt {reference}: thank you"))
                .await
                .unwrap()
                .sid
        }
    }
}

#[tokio::test]
async fn a_slow_answer_times_out_as_ambiguous_and_the_message_is_found() {
    let fake = FakeTwilio::start().await;
    let mut config = fake.config();
    config.timeout = Duration::from_millis(300);
    let twilio = client(config);
    fake.fail_next(1, Fault::SlowAfterCreate(Duration::from_secs(30)));

    let error = twilio.send(TO, "Receipt Rslow-1").await.unwrap_err();
    assert!(
        matches!(error, SmsError::Ambiguous(ref m) if m.contains("timed out")),
        "{error:?}"
    );
    assert!(wait_until(DEADLINE, || async { fake.messages_to(TO).len() == 1 }).await);
    let found = twilio
        .find_sent(TO, "Rslow-1", today())
        .await
        .unwrap()
        .expect("the timed-out message exists");
    assert_eq!(found.sid, fake.messages_to(TO)[0].sid);
}

#[tokio::test]
async fn permanent_refusals_carry_twilio_codes() {
    let fake = FakeTwilio::start().await;
    let twilio = client(fake.config());
    fake.unsubscribe("+919800000001");
    fake.mark_not_mobile("+912012345678");

    for (to, code) in [
        ("12345", 21211),
        ("+919800000001", 21610),
        ("+912012345678", 21614),
    ] {
        let error = twilio.send(to, "hello").await.unwrap_err();
        assert!(
            matches!(error, SmsError::Permanent { status: Some(400), code: Some(c), .. } if c == code),
            "{to}: {error:?}"
        );
        assert!(!error.is_retriable());
    }
    assert!(fake.messages().is_empty());
    assert_eq!(fake.requests_of("POST"), 3);
}

#[tokio::test]
async fn a_body_over_1600_characters_is_refused_without_a_request() {
    let fake = FakeTwilio::start().await;
    let error = client(fake.config())
        .send(TO, &"a".repeat(1601))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(21617));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_not_permanent() {
    let fake = FakeTwilio::start().await;
    let mut config = fake.config();
    config.auth_token = "wrong-token".into();
    let twilio = client(config);
    let error = twilio.send(TO, "hello").await.unwrap_err();
    assert!(
        matches!(
            error,
            SmsError::Unauthorized {
                status: 401,
                code: Some(20003),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), "unauthorized");
    // Listing is refused the same way, and the token never shows in the error.
    let error = twilio.list(&ListFilter::default()).await.unwrap_err();
    assert_eq!(error.kind(), "unauthorized");
    assert!(!format!("{error:?} {error}").contains("wrong-token"));
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn an_outage_is_ambiguous_when_answered_and_unavailable_when_refused() {
    let fake = FakeTwilio::start().await;
    let twilio = client(fake.config());

    fake.set_down(true);
    let error = twilio.send(TO, "R-down-1").await.unwrap_err();
    assert_eq!(error.kind(), "ambiguous", "{error:?}");
    // A read during the outage is simply unavailable.
    let error = twilio.find_sent(TO, "R-down-1", today()).await.unwrap_err();
    assert_eq!(error.kind(), "unavailable", "{error:?}");
    fake.set_down(false);

    // Warm a keep-alive connection, then take the host away: the pooled connection dies too.
    twilio.send(TO, "R-up-1").await.unwrap();
    fake.refuse_connections();
    let error = twilio.send(TO, "R-refused-1").await.unwrap_err();
    assert!(
        matches!(error, SmsError::Unavailable(_) | SmsError::Ambiguous(_)),
        "{error:?}"
    );
    let error = twilio.send(TO, "R-refused-2").await.unwrap_err();
    assert_eq!(error.kind(), "unavailable", "{error:?}");

    fake.accept_connections().await;
    twilio.send(TO, "R-back-1").await.unwrap();
    let bodies: Vec<String> = fake.messages_to(TO).into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["R-up-1", "R-back-1"]);
}

#[tokio::test]
async fn listing_follows_pages_and_filters_by_recipient_and_date() {
    let fake = FakeTwilio::start().await;
    let now = OffsetDateTime::now_utc();
    let old = now - time::Duration::days(3);
    for i in 0..7 {
        fake.seed(TO, &format!("recent {i}"), now);
    }
    fake.seed(TO, "old", old);
    fake.seed("+919811111111", "someone else", now);

    let twilio = client(fake.config());
    let filter = ListFilter {
        to: Some(TO.into()),
        sent_on_or_after: Some(today()),
        page_size: 3,
    };
    let listed = twilio.list(&filter).await.unwrap();
    let mut bodies: Vec<String> = listed.iter().map(|m| m.body.clone()).collect();
    bodies.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("recent {i}")).collect();
    assert_eq!(bodies, expected);
    assert_eq!(fake.requests_of("GET"), 3, "three pages of 3");
    let first = &fake.requests()[0].uri;
    assert!(
        first.contains("DateSent%3E=") && first.contains("PageSize=3"),
        "{first}"
    );

    // Without the date filter, the old one is there too; find_sent sees only its window.
    let all = ListFilter {
        sent_on_or_after: None,
        ..filter
    };
    assert_eq!(twilio.list(&all).await.unwrap().len(), 8);
    assert!(
        twilio
            .find_sent(TO, "old", today())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        twilio
            .find_sent(TO, "old", old.date())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        twilio
            .find_sent(TO, "someone else", today())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_sender_uses_the_outbox_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.jsonl");
    let sender = SmsSender::Outbox(Outbox::open(&path).unwrap());
    let sent = sender.send(TO, "Receipt Rout-0").await.unwrap();
    let found = sender
        .find_sent(TO, "Rout-0", today())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.sid, sent.sid);
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(line.contains("Receipt Rout-0") && line.ends_with('\n'));
}
