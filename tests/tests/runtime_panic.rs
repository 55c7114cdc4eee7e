//! A processor that panics stops its runtime, and nothing from the panicked record on is
//! committed (docs/design.md, promise 2: nothing is
//! skipped).
//!
//! Invariant proved here: after a panic, `run` returns an error that says so; the group's
//! committed offset is at or below the panicked record (what finished before it may be
//! committed); a new instance with a fixed processor does the panicked record and the rest.

use std::collections::BTreeSet;
use std::time::Duration;

use formstream_tests::runtime::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_processor_stops_the_runtime_and_commits_nothing_past_the_panic() {
    init_logs();
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, 1).await;
    let produced = producer.responses(&fresh_responses(&forms, 50)).await;
    let poison = &produced[20];

    let first = TestProcessor::new();
    first
        .state
        .behaviour
        .panics
        .lock()
        .expect("lock")
        .insert(poison.response_id.clone());
    let runtime = spawn_runtime(first.clone(), topics.config(&[])).await;
    eventually(
        Duration::from_secs(60),
        "the runtime stops after the panic",
        || {
            let runtime = &runtime;
            async move { runtime.is_finished() }
        },
    )
    .await;
    let error = runtime
        .stop()
        .await
        .expect_err("a panic is an error of the run");
    assert!(
        format!("{error:#}").contains("panicked"),
        "the error says what happened: {error:#}"
    );
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    assert!(
        committed[&0] <= poison.offset,
        "committed {} past the panicked record at {}",
        committed[&0],
        poison.offset
    );

    // Fixed: a new instance does the panicked record and everything not committed.
    let second = TestProcessor::new();
    let runtime = spawn_runtime(second.clone(), topics.config(&[])).await;
    let start = committed[&0].max(0);
    let expected: BTreeSet<i64> = produced
        .iter()
        .map(|p| p.offset)
        .filter(|&o| o >= start)
        .collect();
    eventually(Duration::from_secs(60), "the rest is effected", || {
        let state = second.state.clone();
        let expected = expected.clone();
        async move {
            let done: BTreeSet<i64> = state.effects().iter().map(|c| c.offset).collect();
            expected.is_subset(&done)
        }
    })
    .await;
    runtime
        .stop()
        .await
        .expect("the second runtime stops cleanly");
    assert!(
        second
            .state
            .effects()
            .iter()
            .any(|c| c.response_id == poison.response_id),
        "the panicked record was never done"
    );
    topics.delete().await;
}
