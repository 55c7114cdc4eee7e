//! Graceful shutdown commits what was done (docs/design.md, promises 2 and
//! 3).
//!
//! The periodic commit is set to a minute, so only the shutdown's own commit can make these
//! tests pass.
//!
//! Invariant proved here: when `run` returns, the group's committed offset of every partition is
//! exactly where the finished records end: at the partition's end when everything was done, and
//! at the first unfinished record when shutdown came mid-run. A new instance of the group then
//! processes only what was not done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 4;
/// Longer than any test: commits seen by these tests come from the shutdown.
const NO_PERIODIC_COMMIT: &[&str] = &["--commit-interval", "60s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_after_everything_was_done_commits_the_end_of_every_partition() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let produced = producer.responses(&fresh_responses(&forms, 400)).await;

    let first = TestProcessor::new();
    let runtime = spawn_runtime(first.clone(), topics.config(NO_PERIODIC_COMMIT)).await;
    let state = first.state.clone();
    eventually(Duration::from_secs(60), "every record effected", || {
        let state = state.clone();
        let total = produced.len();
        async move { state.effect_count() >= total }
    })
    .await;
    runtime.stop().await.expect("the runtime stops cleanly");

    // Read at once: the commit happened before `run` returned.
    let ends = end_offsets(&topics).await.expect("partition ends");
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    assert_eq!(
        committed, ends,
        "committed offsets at shutdown are the partition ends"
    );

    // A new instance of the group processes nothing again: after it has its partitions, one new
    // record per partition is all it sees.
    let second = TestProcessor::new();
    let runtime = spawn_runtime(second.clone(), topics.config(NO_PERIODIC_COMMIT)).await;
    eventually(
        Duration::from_secs(30),
        "the new instance has all partitions",
        || {
            let runtime = &runtime;
            async move {
                runtime
                    .metric(
                        "formstream_processor_rebalances_total",
                        &[("kind", "assigned")],
                    )
                    .await
                    >= f64::from(PARTITIONS)
            }
        },
    )
    .await;
    let sentinels = producer.responses(&fresh_responses(&forms, 4)).await;
    eventually(
        Duration::from_secs(30),
        "the sentinels are effected",
        || {
            let state = second.state.clone();
            async move { state.effect_count() >= 4 }
        },
    )
    .await;
    runtime
        .stop()
        .await
        .expect("the second runtime stops cleanly");
    let seen: BTreeSet<(i32, i64)> = second
        .state
        .effects()
        .iter()
        .map(|c| (c.partition, c.offset))
        .collect();
    let expected: BTreeSet<(i32, i64)> =
        sentinels.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(
        seen, expected,
        "the new instance redid records the first had committed"
    );
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_mid_run_commits_exactly_the_finished_records() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let produced = producer.responses(&fresh_responses(&forms, 2_000)).await;

    // Slow effects, few at a time: shutdown comes while records are in flight.
    let first = TestProcessor::new();
    first
        .state
        .behaviour
        .latency_ms
        .store(100, Ordering::SeqCst);
    let mut flags = NO_PERIODIC_COMMIT.to_vec();
    flags.extend(["--max-in-flight", "16"]);
    let runtime = spawn_runtime(first.clone(), topics.config(&flags)).await;
    let state = first.state.clone();
    eventually(Duration::from_secs(60), "some records effected", || {
        let state = state.clone();
        async move { state.effect_count() >= 100 }
    })
    .await;
    runtime.stop().await.expect("the runtime stops cleanly");

    let effected = state.effected_offsets();
    let done = state.effect_count();
    assert!(
        done < produced.len(),
        "shutdown came after the run was over"
    );
    // Everything in flight was allowed to finish (100 ms ≪ the drain timeout), so the committed
    // offset is exactly where the finished records end: not ahead, and not behind either.
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    assert_committed_not_ahead(&committed, &effected, &BTreeMap::new());
    for partition in 0..PARTITIONS {
        let finished = contiguous_end(effected.get(&partition));
        assert_eq!(
            committed[&partition].max(0),
            finished,
            "partition {partition}: committed {} but records 0..{finished} were done",
            committed[&partition]
        );
        // Records after it may have run (another response's lane), but only if the first
        // unfinished one never started: nothing that started was abandoned.
        let started = state.started_offsets();
        let abandoned: Vec<i64> = started
            .get(&partition)
            .map(|o| {
                o.iter()
                    .filter(|offset| !effected.get(&partition).is_some_and(|e| e.contains(offset)))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            abandoned.is_empty(),
            "partition {partition}: records that started but did not finish at shutdown: {abandoned:?} (finished up to {finished})"
        );
    }

    // A new instance does the rest, and nothing the first had committed.
    let second = TestProcessor::new();
    let runtime = spawn_runtime(second.clone(), topics.config(NO_PERIODIC_COMMIT)).await;
    let left = produced.len() - done;
    eventually(Duration::from_secs(60), "the rest effected", || {
        let state = second.state.clone();
        async move { state.effect_count() >= left }
    })
    .await;
    runtime
        .stop()
        .await
        .expect("the second runtime stops cleanly");
    let redone: Vec<(i32, i64)> = second
        .state
        .effects()
        .iter()
        .filter(|c| c.offset < committed[&c.partition])
        .map(|c| (c.partition, c.offset))
        .collect();
    assert!(
        redone.is_empty(),
        "committed records were redone: {redone:?}"
    );
    let mut all = effected;
    for call in second.state.effects() {
        all.entry(call.partition).or_default().insert(call.offset);
    }
    for record in &produced {
        assert!(
            all.get(&record.partition)
                .is_some_and(|o| o.contains(&record.offset)),
            "never effected: {record:?}"
        );
    }
    let ends = end_offsets(&topics).await.expect("partition ends");
    assert_eq!(committed_offsets(&topics).await.expect("committed"), ends);
    topics.delete().await;
}
