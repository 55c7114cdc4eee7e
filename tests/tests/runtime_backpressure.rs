//! Back-pressure: when the effect is slower than the topic, the runtime holds at most
//! `--max-buffered-records` fetched and unfinished records (memory is bounded by the limits, not
//! by the backlog), and still works through the whole backlog without skipping anything.

use std::time::Duration;

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 3;
const RECORDS: usize = 1_200;
const MAX_BUFFERED: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_stay_within_their_bound_and_the_backlog_drains() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let produced = producer.responses(&fresh_responses(&forms, RECORDS)).await;

    // A slow target: 8 at a time, 20 ms each (~400 records/s, so the run outlasts several
    // refreshes of the 1 s gauges), and the backlog waits in Kafka, not in memory.
    let processor = TestProcessor::new();
    processor
        .state
        .behaviour
        .latency_ms
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let max_buffered = MAX_BUFFERED.to_string();
    let runtime = spawn_runtime(
        processor.clone(),
        topics.config(&[
            "--max-in-flight",
            "8",
            "--max-buffered-records",
            &max_buffered,
        ]),
    )
    .await;

    // Sample the buffer gauge until every record is done; it must never pass the bound (one
    // record over is allowed: the loop takes a record before it learns the buffers are full).
    let mut highest = 0.0f64;
    let state = processor.state.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while state.effect_count() < produced.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} records done",
            state.effect_count(),
            produced.len()
        );
        let buffered = runtime
            .metric("formstream_processor_records_buffered", &[])
            .await;
        highest = highest.max(buffered);
        assert!(
            buffered <= (MAX_BUFFERED + 1) as f64,
            "{buffered} records buffered; the bound is {MAX_BUFFERED}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        highest >= (MAX_BUFFERED / 2) as f64,
        "the buffers never filled ({highest}): the test did not exercise back-pressure"
    );
    // Units wait in the lanes beyond the in-flight bound, but never run beyond it: the bound is
    // what protects a rate-limited target.
    let peak = state.peak_running();
    assert!(
        (2..=8).contains(&peak),
        "{peak} effects ran at once; --max-in-flight is 8"
    );

    // Nothing skipped: every offset effected, and the commits reach the ends.
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    assert_committed_not_ahead(&committed, &state.effected_offsets(), &Default::default());
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
