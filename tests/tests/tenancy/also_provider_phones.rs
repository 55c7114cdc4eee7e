//! A provider's error text that quotes a phone number (Twilio's "The 'To' number +1415... is not
//! a valid phone number") reaches neither the logs nor the dead letter in full: the number is
//! redacted to its country code and last four digits wherever the text goes.

use std::time::Duration;

use formstream_runtime::dlq::headers;
use formstream_tests::twilio_fake::FakeTwilio;
use formstream_tests::{ACME_KEY, read_topic, spawn_app, unique};
use reqwest::Method;

use crate::support::{CapturedLogs, call, flagged_answer, household, start_receipts};

/// A respondent's number that Twilio refuses, quoting it (400, code 21211).
const REFUSED: &str = "+14155550140";
/// How it may appear: country code and last four digits.
const REDACTED: &str = "+1******0140";

/// A current-thread runtime: the gateway's and the processor's tasks run on this thread, under
/// its log subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_number_twilio_quotes_in_its_error_is_redacted_in_logs_and_dead_letters() {
    let (captured, _guard) = CapturedLogs::start(
        "warn,formstream_runtime=debug,formstream_notify=debug,formstream_receipts=debug",
    );

    let gateway = spawn_app().await;
    let twilio = FakeTwilio::start().await;
    twilio.reject_as_invalid(REFUSED);
    let form = format!("household-{}", unique());
    call(
        &gateway,
        ACME_KEY,
        Method::POST,
        "/v1/forms",
        Some(&household(&form, "Acme households")),
        201,
    )
    .await;
    let answer = flagged_answer(
        &uuid::Uuid::new_v4().to_string(),
        "Asha",
        REFUSED,
        "+919820000017",
        "mast",
    );
    call(
        &gateway,
        ACME_KEY,
        Method::POST,
        &format!("/v1/forms/{form}/responses"),
        Some(&answer),
        202,
    )
    .await;

    let receipts = start_receipts(&gateway, &twilio).await;
    let letters = read_topic(
        &receipts.topics.bootstrap,
        &receipts.topics.dlq,
        1,
        Duration::from_secs(60),
    )
    .await
    .expect("reading the dead-letter topic");
    receipts.wait_done().await;
    receipts.finish().await;
    gateway.finish().await;

    assert_eq!(twilio.requests_of("POST"), 1, "Twilio was asked once");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let message = letters[0]
        .headers
        .get(headers::ERROR_MESSAGE)
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("21211") && message.contains(REDACTED),
        "{message}"
    );
    let logs = captured.text();
    assert!(
        logs.contains("is not a valid phone number") && logs.contains(REDACTED),
        "Twilio's error text is logged, redacted: {logs}"
    );
    let digits = &REFUSED[1..];
    let leaked = logs.lines().find(|line| line.contains(digits));
    assert!(
        leaked.is_none(),
        "a log line holds the number in full: {leaked:?}"
    );
}
