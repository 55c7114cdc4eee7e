//! Start-up of the processor runtime: when its forms view cannot start, and what a processor
//! that opens something first (a ledger catching up) overlaps with.
//!
//! `-X` properties go to every client of the runtime, the forms view's consumer included. With
//! `-X max.poll.interval.ms=10000` and `--session-timeout 6s` the processor's own consumer is
//! valid (the runtime sets its session timeout), but the forms view's consumer keeps librdkafka's
//! 45 s session timeout, which librdkafka refuses above max.poll.interval.ms.
//!
//! Invariant proved here: a runtime whose forms view fails either becomes ready anyway or `run`
//! returns the error, within a bounded time; it never waits forever for a view that will never
//! load (unready, and with nothing in its logs saying why). And a processor's opening runs while
//! the runtime gets ready (its dead-letter topic, its forms view), not before it: a restart's first
//! effect waits for the slowest step, not for their sum (issue 15).

use std::time::{Duration, Instant};

use formstream_runtime::redrive::snapshot::topic_shape;
use formstream_tests::runtime::*;
use formstream_tests::wait_until;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forms_view_that_cannot_start_fails_the_runtime_instead_of_hanging() {
    init_logs();
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    forms_per_partition(&producer, 1).await;
    let config = topics.config(&["-X", "max.poll.interval.ms=10000"]);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let readyz = format!(
        "http://{}/readyz",
        listener.local_addr().expect("local address")
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(formstream_runtime::run(
        TestProcessor::new(),
        config,
        Some(listener),
        async move {
            let _ = stopped.await;
        },
    ));

    let client = reqwest::Client::new();
    let started = Instant::now();
    let outcome = loop {
        if handle.is_finished() {
            let result = handle.await.expect("the runtime task");
            break format!("run returned {result:?}");
        }
        if let Ok(response) = client.get(&readyz).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            break "ready".to_owned();
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = stop.send(());
            topics.delete().await;
            panic!(
                "after 20 s the runtime is neither ready nor stopped: it waits forever for a \
                 forms view whose consumer could not be created"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("startup with a failing forms view: {outcome}");
    let _ = stop.send(());
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_opens_while_the_runtime_sets_up_its_dead_letter_topic_not_before() {
    init_logs();
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, 2).await;
    let config = topics.config(&[]);
    let processor = TestProcessor::new();
    let state = processor.state.clone();

    // The opening step finishes only once the runtime has created its dead-letter topic: run one
    // after the other, the opening would wait for a topic that is created only after it.
    let (kafka, dlq) = (topics.kafka(), topics.dlq.clone());
    let open = async move {
        let created = wait_until(Duration::from_secs(30), || {
            let (kafka, dlq) = (kafka.clone(), dlq.clone());
            async move { matches!(topic_shape(&kafka, &dlq).await, Ok(Some(_))) }
        })
        .await;
        anyhow::ensure!(
            created,
            "the runtime did not create its dead-letter topic while the processor was opening"
        );
        Ok(Some(processor))
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(formstream_runtime::run_opening(
        PROCESSOR.to_owned(),
        open,
        config,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    producer.responses(&fresh_responses(&forms, 4)).await;
    let handled = wait_until(Duration::from_secs(60), || {
        let done = state.effect_count() >= 4 || handle.is_finished();
        async move { done }
    })
    .await;
    let _ = stop.send(());
    let outcome = handle.await.expect("the runtime task");
    topics.delete().await;
    outcome.expect("the runtime ran the processor it opened");
    assert!(
        handled,
        "the opened processor handled the records within 60 s"
    );
    assert_eq!(state.effect_count(), 4, "each record once");
}
