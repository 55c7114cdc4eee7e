//! The processor runtime retries transient failures until the effect happens, one revision of a
//! response at a time (docs/design.md, promises 2 and 3).
//!
//! Invariant proved here: every record's effect is observed; the revisions of one response are
//! handled strictly in offset order (never two at once, never a later one before an earlier one
//! succeeded); each retry is counted in /metrics; nothing is dead-lettered; the group's commits
//! reach the end of every partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use formstream_tests::runtime::*;
use formstream_tests::unique;

const PARTITIONS: i32 = 4;
const RESPONSES: usize = 40;
const REVISIONS: i32 = 3;
const FAILURES_PER_RECORD: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_and_revisions_run_in_offset_order() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;

    // Revision 0 of every response, then revision 1 of every response, ...: the revisions of one
    // response share a partition with other responses' records in between.
    let ids: Vec<String> = (0..RESPONSES).map(|_| unique()).collect();
    let mut records = Vec::new();
    for revision in 0..REVISIONS {
        for (i, id) in ids.iter().enumerate() {
            let partition = (i % PARTITIONS as usize) as i32;
            records.push((
                partition,
                test_response(&forms[partition as usize], id, revision),
            ));
        }
    }
    let produced = producer.responses(&records).await;

    let processor = TestProcessor::new();
    processor
        .state
        .behaviour
        .fail_attempts
        .store(FAILURES_PER_RECORD, Ordering::SeqCst);
    // Every record fails twice: keep the circuit out of the way, this test is about retries.
    let runtime = spawn_runtime(
        processor.clone(),
        topics.config(&["--circuit-threshold", "1000000"]),
    )
    .await;

    let state = processor.state.clone();
    eventually(Duration::from_secs(60), "every record effected", || {
        let state = state.clone();
        let total = produced.len();
        async move { state.effect_count() >= total }
    })
    .await;

    // Every produced record was effected exactly once, on its third attempt.
    let effects = state.effects();
    let mut by_offset: HashMap<(i32, i64), Vec<&Call>> = HashMap::new();
    for call in &effects {
        by_offset
            .entry((call.partition, call.offset))
            .or_default()
            .push(call);
    }
    for record in &produced {
        let calls = by_offset
            .get(&(record.partition, record.offset))
            .unwrap_or_else(|| panic!("no effect for {record:?}"));
        assert_eq!(calls.len(), 1, "effected more than once: {record:?}");
        let call = calls[0];
        assert_eq!(
            (call.response_id.as_str(), call.revision),
            (record.response_id.as_str(), record.revision)
        );
        assert_eq!(
            call.attempt,
            FAILURES_PER_RECORD + 1,
            "succeeded on attempt {} (expected {}): {record:?}",
            call.attempt,
            FAILURES_PER_RECORD + 1
        );
    }
    assert_eq!(effects.len(), produced.len());

    // Per key: never two calls at once, and every call (attempts included) in offset order.
    assert!(
        state.overlaps().is_empty(),
        "calls of one response ran concurrently: {:?}",
        state.overlaps()
    );
    let mut per_response: HashMap<&str, Vec<&Call>> = HashMap::new();
    let calls = state.calls();
    for call in &calls {
        per_response
            .entry(call.response_id.as_str())
            .or_default()
            .push(call);
    }
    for (id, calls) in &per_response {
        let offsets: Vec<i64> = calls.iter().map(|c| c.offset).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "response {id}: calls out of offset order: {offsets:?}"
        );
        let revisions: Vec<i32> = calls
            .iter()
            .filter(|c| c.outcome == Outcome::Ok)
            .map(|c| c.revision)
            .collect();
        assert_eq!(
            revisions,
            (0..REVISIONS).collect::<Vec<_>>(),
            "response {id}"
        );
    }
    // Different responses did run concurrently (otherwise the order above proves nothing).
    let distinct: HashSet<&str> = calls.iter().map(|c| c.response_id.as_str()).collect();
    assert_eq!(distinct.len(), RESPONSES);

    // Every retry is counted; nothing was dead-lettered.
    let failures = produced.len() as f64 * f64::from(FAILURES_PER_RECORD);
    eventually(
        Duration::from_secs(10),
        "retries counted in /metrics",
        || {
            let runtime = &runtime;
            async move {
                runtime
                    .metric(
                        "formstream_processor_records_total",
                        &[("processor", PROCESSOR), ("outcome", "retried")],
                    )
                    .await
                    == failures
            }
        },
    )
    .await;
    let metrics = runtime.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "formstream_processor_records_total",
            &[("outcome", "ok")]
        ),
        produced.len() as f64,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "formstream_processor_records_total",
            &[("outcome", "dead_lettered")]
        ),
        0.0,
        "{metrics}"
    );

    // The commits reach the end of every partition.
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(20)).await;
    assert_committed_not_ahead(&committed, &state.effected_offsets(), &BTreeMap::new());

    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
