//! A flapping outage: the target answers the circuit breaker's probes but still fails every
//! effect, so the circuit goes half-open and opens again many times. Records must be paused,
//! not dead-lettered: failures that are part of an outage do not spend the retry budget
//! (docs/design.md, promise 4: outages pause the pipeline; they lose nothing).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use formstream_tests::runtime::*;

const PARTITIONS: i32 = 2;
const RECORDS: usize = 20;
const MAX_ATTEMPTS: &str = "3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_outage_spends_no_retry_budget() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let processor = TestProcessor::new();
    let state = processor.state.clone();
    state
        .behaviour
        .probe_answers_while_down
        .store(true, Ordering::SeqCst);
    state.set_target_down(true);
    // A budget of 3 attempts: without the rule, the first half-open rounds would dead-letter.
    let runtime = spawn_runtime(
        processor.clone(),
        topics.config(&[
            "--retry-max-attempts",
            MAX_ATTEMPTS,
            "--circuit-threshold",
            "2",
            "--probe-base",
            "50ms",
            "--probe-max",
            "50ms",
        ]),
    )
    .await;
    let produced = producer.responses(&fresh_responses(&forms, RECORDS)).await;

    // Wait until every record has failed well past the budget with the circuit flapping, or
    // until something is dead-lettered (which the assertion below then reports).
    let calls_needed = RECORDS * 10;
    eventually(
        Duration::from_secs(60),
        "every record fails many times over",
        || {
            let (state, runtime) = (state.clone(), &runtime);
            async move {
                state.calls().len() >= calls_needed
                    || runtime
                        .metric("formstream_processor_dead_letters_total", &[])
                        .await
                        > 0.0
            }
        },
    )
    .await;
    let metrics = runtime.metrics().await;
    assert!(
        state.probes.load(Ordering::SeqCst) >= 5,
        "the circuit did not flap (probes: {})",
        state.probes.load(Ordering::SeqCst)
    );
    assert_eq!(
        metric_value(&metrics, "formstream_processor_dead_letters_total", &[]),
        0.0,
        "an outage dead-lettered records: {metrics}"
    );

    // The target recovers: everything drains, nothing skipped, nothing dead-lettered.
    state.set_target_down(false);
    let recovered = Instant::now();
    eventually(Duration::from_secs(60), "every record effected", || {
        let state = state.clone();
        let total = produced.len();
        async move { state.effect_count() >= total }
    })
    .await;
    eprintln!(
        "drained {:?} after the target recovered",
        recovered.elapsed()
    );
    let committed = wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    assert_committed_not_ahead(&committed, &state.effected_offsets(), &Default::default());
    let metrics = runtime.metrics().await;
    assert_eq!(
        metric_value(&metrics, "formstream_processor_dead_letters_total", &[]),
        0.0,
        "{metrics}"
    );
    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
