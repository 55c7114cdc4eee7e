//! A second instance joins the group and later leaves it while records keep coming (docs/design.md,
//! promises 2, 3 and 6): cooperative-sticky rebalances move partitions both ways.
//!
//! Invariant proved here: no record is lost (every record is effected at least once, by one
//! instance or the other), both instances did work, the instance that left did so cleanly, and the
//! group's commits reach the end of every partition, never ahead of the effects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_joining_and_leaving_mid_run_loses_nothing() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;

    // A little latency, so that records are in flight when partitions move.
    let a = TestProcessor::new();
    let b = TestProcessor::new();
    for p in [&a, &b] {
        p.state.behaviour.latency_ms.store(5, Ordering::SeqCst);
    }

    // Records keep coming for the whole run: 30 every 50 ms, 5 per partition.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (producer, forms, stop) = (producer.clone(), forms.clone(), stop.clone());
        tokio::spawn(async move {
            let mut produced = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                produced.extend(producer.responses(&fresh_responses(&forms, 30)).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            produced
        })
    };

    let runtime_a = spawn_runtime(a.clone(), topics.config(&[])).await;
    eventually(Duration::from_secs(60), "A does some work", || {
        let state = a.state.clone();
        async move { state.effect_count() >= 200 }
    })
    .await;

    // B joins: it gets some partitions and works on them.
    let runtime_b = spawn_runtime(b.clone(), topics.config(&[])).await;
    eventually(Duration::from_secs(60), "B does some work", || {
        let state = b.state.clone();
        async move { state.effect_count() >= 200 }
    })
    .await;
    let a_before_leave = a.state.effect_count();
    let b_partitions: BTreeSet<i32> = b.state.effects().iter().map(|c| c.partition).collect();

    // B leaves gracefully; A takes its partitions back and goes on.
    runtime_b.stop().await.expect("B stops cleanly");
    let b_done = b.state.effect_count();
    eventually(
        Duration::from_secs(60),
        "A works on B's partitions again",
        || {
            let (state, b_partitions) = (a.state.clone(), &b_partitions);
            async move {
                let since: BTreeSet<i32> = state.effects()[a_before_leave..]
                    .iter()
                    .map(|c| c.partition)
                    .collect();
                b_partitions.is_subset(&since)
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let produced = feeder.await.expect("the feeder");

    // Every record effected at least once, by A or by B.
    let effected = || {
        let mut all: BTreeMap<i32, BTreeSet<i64>> = a.state.effected_offsets();
        for (partition, offsets) in b.state.effected_offsets() {
            all.entry(partition).or_default().extend(offsets);
        }
        all
    };
    eventually(Duration::from_secs(60), "every record effected", || {
        let all = effected();
        let produced = &produced;
        async move {
            produced
                .iter()
                .all(|r| all.get(&r.partition).is_some_and(|o| o.contains(&r.offset)))
        }
    })
    .await;
    let total_effects = a.state.effect_count() + b.state.effect_count();
    eprintln!(
        "rebalance: {} records, {} effects by A, {} by B ({} partitions), {} redone",
        produced.len(),
        a.state.effect_count(),
        b_done,
        b_partitions.len(),
        total_effects - produced.len()
    );
    assert!(
        !b_partitions.is_empty() && b_partitions.len() < PARTITIONS as usize,
        "B had some partitions, not all: {b_partitions:?}"
    );
    assert_eq!(
        b.state.effect_count(),
        b_done,
        "B did nothing after it stopped"
    );

    // The commits reach the end and are never ahead of the effects.
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    assert_committed_not_ahead(&committed, &effected(), &BTreeMap::new());

    let metrics = runtime_a.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "formstream_processor_rebalances_total",
            &[("kind", "revoked")]
        ) > 0.0,
        "A gave partitions to B: {metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "formstream_processor_rebalances_total",
            &[("kind", "lost")]
        ),
        0.0,
        "no partition was lost: {metrics}"
    );
    runtime_a.stop().await.expect("A stops cleanly");
    topics.delete().await;
}
