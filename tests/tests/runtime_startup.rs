//! Start-up of the processor runtime when its forms view cannot start.
//!
//! `-X` properties go to every client of the runtime, the forms view's consumer included. With
//! `-X max.poll.interval.ms=10000` and `--session-timeout 6s` the processor's own consumer is
//! valid (the runtime sets its session timeout), but the forms view's consumer keeps librdkafka's
//! 45 s session timeout, which librdkafka refuses above max.poll.interval.ms.
//!
//! Invariant proved here: a runtime whose forms view fails either becomes ready anyway or `run`
//! returns the error, within a bounded time; it never waits forever for a view that will never
//! load (unready, and with nothing in its logs saying why).

use std::time::{Duration, Instant};

use formstream_tests::runtime::*;
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
