//! The processor's target is down for longer than the consumer session timeout (docs/design.md,
//! promise 4).
//!
//! `max.poll.interval.ms` is lowered to 7 s (librdkafka wants it at least the 6 s session
//! timeout), so that a runtime that stopped polling while its partitions are paused would leave
//! the group within this test's 10 s outage rather than after librdkafka's default 5 minutes.
//!
//! Invariant proved here: while the target is down the circuit opens, the partitions are paused,
//! the effect is not called in a loop (only probes go out), the instance stays the group's one
//! stable member and nothing is dead-lettered; once the target is back the backlog drains, every
//! record is effected and the commits reach the end of every partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 4;
const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_session_timeout_pauses_and_then_drains() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let processor = TestProcessor::new();
    let state = processor.state.clone();
    let runtime = spawn_runtime(
        processor.clone(),
        // Every client of the runtime gets these: the forms view's consumer too, which would
        // refuse a max.poll.interval.ms below its own (default 45 s) session timeout.
        topics.config(&["-X", "max.poll.interval.ms=7000,session.timeout.ms=6000"]),
    )
    .await;

    // Before the outage: records flow.
    let mut produced = producer.responses(&fresh_responses(&forms, 100)).await;
    eventually(
        Duration::from_secs(60),
        "the first records effected",
        || {
            let state = state.clone();
            async move { state.effect_count() >= 100 }
        },
    )
    .await;

    // The target goes down, and records keep coming.
    state.set_target_down(true);
    produced.extend(producer.responses(&fresh_responses(&forms, 300)).await);
    runtime
        .wait_for_circuit(
            2.0,
            // Every source partition, and its companion on the re-drive topic (engine/companion.rs).
            f64::from(2 * PARTITIONS),
            Duration::from_secs(30),
            "the circuit opens and the partitions are paused",
        )
        .await;

    // Hold the outage well past the session timeout, checking all along.
    let opened = Instant::now();
    let mut calls_at = None;
    let mut probes_at = 0;
    let mut checks = 0;
    let mut last_check = Duration::ZERO;
    while opened.elapsed() < OUTAGE {
        last_check = opened.elapsed();
        let metrics = runtime.metrics().await;
        assert_eq!(
            metric_value(&metrics, "formstream_processor_circuit_state", &[]),
            2.0,
            "the circuit stays open while the target is down"
        );
        assert_eq!(
            metric_value(&metrics, "formstream_processor_paused_partitions", &[]),
            f64::from(2 * PARTITIONS),
            "every partition (and its re-drive companion) stays paused"
        );
        assert_eq!(
            metric_value(
                &metrics,
                "formstream_processor_records_total",
                &[("outcome", "dead_lettered")]
            ),
            0.0,
            "nothing is dead-lettered during an outage"
        );
        let (group_state, members) = group_state(&topics).await.expect("describing the group");
        assert_eq!(
            (group_state.as_str(), members),
            ("Stable", 1),
            "the instance keeps its group membership {:?} into the outage",
            opened.elapsed()
        );
        // After a settling second, the effect is not hammered: at most one call per probe.
        if opened.elapsed() > Duration::from_secs(1) && calls_at.is_none() {
            calls_at = Some(state.calls().len());
            probes_at = state.probes.load(std::sync::atomic::Ordering::SeqCst);
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Checked past the session timeout (6 s) and max.poll.interval.ms (7 s).
    assert!(
        checks >= 4 && last_check > Duration::from_secs(8),
        "the outage was checked {checks} times, last {last_check:?} into it"
    );
    let calls_during = state.calls().len() - calls_at.expect("calls counted");
    let probes_during = state.probes.load(std::sync::atomic::Ordering::SeqCst) - probes_at;
    assert!(probes_during > 0, "the target is probed during the outage");
    assert!(
        calls_during as u64 <= probes_during,
        "the effect was called {calls_during} times in {OUTAGE:?} of outage ({probes_during} probes): a busy loop"
    );

    // The target is back: the backlog drains, nothing skipped, nothing dead-lettered.
    state.set_target_down(false);
    eventually(Duration::from_secs(60), "the backlog drains", || {
        let state = state.clone();
        let total = produced.len();
        async move {
            let done = state.effected_offsets();
            done.values().map(|o| o.len()).sum::<usize>() >= total
        }
    })
    .await;
    let done = state.effected_offsets();
    for record in &produced {
        assert!(
            done.get(&record.partition)
                .is_some_and(|o| o.contains(&record.offset)),
            "skipped: {record:?}"
        );
    }
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    assert_committed_not_ahead(&committed, &done, &BTreeMap::new());

    runtime
        .wait_for_circuit(
            0.0,
            0.0,
            Duration::from_secs(10),
            "the circuit closes and the partitions resume",
        )
        .await;
    let metrics = runtime.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "formstream_processor_records_total",
            &[("outcome", "dead_lettered")]
        ),
        0.0,
        "{metrics}"
    );
    // One assignment, never revoked or lost: the group never moved the partitions.
    assert_eq!(
        metric_value(
            &metrics,
            "formstream_processor_rebalances_total",
            &[("kind", "assigned")]
        ),
        // Each partition comes with its companion on the re-drive topic (engine/companion.rs).
        f64::from(2 * PARTITIONS),
        "{metrics}"
    );
    for kind in ["revoked", "lost"] {
        assert_eq!(
            metric_value(
                &metrics,
                "formstream_processor_rebalances_total",
                &[("kind", kind)]
            ),
            0.0,
            "{metrics}"
        );
    }
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
