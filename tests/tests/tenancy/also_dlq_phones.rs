//! A dead letter's error message never carries a phone number in full: a processor's error that
//! quotes one (a provider refusing a recipient, say) is written to the dead-letter topic with the
//! number redacted to its country code and last four digits, as logs show it. The record itself
//! (answers, headers) is copied as it was: re-driving needs it.

use std::time::Duration;

use formstream_runtime::dlq::headers;
use formstream_tests::runtime::*;
use formstream_tests::{read_topic, unique};

#[tokio::test]
async fn phone_numbers_in_a_dead_letters_error_message_are_redacted() {
    init_logs();
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let form = format!("f{}", unique());
    producer.form(&test_form(&form)).await;
    // The test processor's permanent failure quotes the response id: here, one holding a number.
    let response = test_response(&form, &format!("to:+919876543210:{}", unique()), 0);
    let processor = TestProcessor::new();
    processor
        .state
        .behaviour
        .permanent
        .lock()
        .unwrap()
        .insert(response.response_id.clone());
    producer.responses(&[(0, response)]).await;
    let runtime = spawn_runtime(processor, topics.config(&[])).await;

    let letters = read_topic(&topics.bootstrap, &topics.dlq, 1, Duration::from_secs(60))
        .await
        .expect("reading the dead-letter topic");
    runtime.stop().await.expect("stops");
    topics.delete().await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let message = letters[0]
        .headers
        .get(headers::ERROR_MESSAGE)
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("+91******3210"), "{message}");
    assert!(!message.contains("9876543210"), "{message}");
}
