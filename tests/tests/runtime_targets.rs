//! A circuit per target (docs/design.md, promise 8: a failing target pauses only its own work),
//! with the in-process test processor: each record writes to a target of its organisation, and a
//! target that fails holds back only its own records.
//!
//! Invariant proved here: while organisation b's target is down (or refuses access), a's records
//! all flow, exactly once, through the very partition where b's records wait; b's records wait
//! without holding the partitions (none is paused) and without a busy loop; the committed offset
//! never passes one of b's unfinished records; once b's target is back, its records are effected
//! exactly once; a target refusing access past `--forbidden-timeout` has its records
//! dead-lettered with the reason; and records waiting past half the buffers pause only the
//! partitions that hold them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use formstream_runtime::dlq::headers;
use formstream_schemas::{Form, Response};
use formstream_tests::runtime::*;
use formstream_tests::{read_topic, unique};

const DEADLINE: Duration = Duration::from_secs(60);

/// A form of `organisation`, published.
async fn form_of(producer: &TestProducer, organisation: &str) -> Form {
    let mut form = test_form(&format!("f{}", unique()));
    form.organisation = organisation.to_owned();
    producer.form(&form).await;
    form
}

fn response_of(form: &Form) -> Response {
    let mut response = test_response(&form.id, &uuid::Uuid::new_v4().to_string(), 0);
    response.organisation = form.organisation.clone();
    response
}

/// `count` responses of each (partition, form), interleaved in that order.
fn interleaved(plan: &[(i32, &Form)], count: usize) -> Vec<(i32, Response)> {
    (0..count)
        .flat_map(|_| plan.iter().map(|(p, form)| (*p, response_of(form))))
        .collect()
}

/// How many successful effects each response id had.
fn effects_per_response(state: &ProcessorState) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for call in state.effects() {
        *counts.entry(call.response_id).or_default() += 1;
    }
    counts
}

/// One test's topics (2 partitions) and producer, a form of organisation a and one of b, and
/// the test processor with a target per organisation.
struct Setup {
    topics: RuntimeTopics,
    producer: TestProducer,
    a: Form,
    b: Form,
    processor: TestProcessor,
    state: Arc<ProcessorState>,
}

async fn setup() -> Setup {
    init_logs();
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let (a, b) = (form_of(&producer, "a").await, form_of(&producer, "b").await);
    let processor = TestProcessor::new();
    processor
        .state
        .behaviour
        .targets_per_organisation
        .store(true, Ordering::SeqCst);
    Setup {
        state: processor.state.clone(),
        topics,
        producer,
        a,
        b,
        processor,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_organisations_target_down_holds_only_its_own_records() {
    let Setup {
        topics,
        producer,
        a,
        b,
        processor,
        state,
    } = setup().await;
    state.set_organisation_down("b", true);
    // Partition 0 mixes a's and b's records; partition 1 holds a's only.
    let mut records = interleaved(&[(0, &b), (0, &a), (1, &a)], 20);
    let mut produced = producer.responses(&records).await;
    let runtime = spawn_runtime(processor, topics.config(&["--circuit-threshold", "3"])).await;
    eventually(
        DEADLINE,
        "b's circuit is open, its records waiting",
        || async {
            let metrics = runtime.metrics().await;
            metric_value(
                &metrics,
                "formstream_processor_open_circuits",
                &[("kind", TARGET_KIND)],
            ) == 1.0
                && metric_value(&metrics, "formstream_processor_records_waiting", &[]) > 0.0
        },
    )
    .await;
    // More records come while b's circuit is open: a's flow through both partitions.
    let more = interleaved(&[(0, &a), (0, &b), (1, &a)], 20);
    produced.extend(producer.responses(&more).await);
    records.extend(more);

    let of = |organisation: &str| -> Vec<&Produced> {
        produced
            .iter()
            .zip(&records)
            .filter(|(_, (_, r))| r.organisation == organisation)
            .map(|(p, _)| p)
            .collect()
    };
    let (of_a, of_b) = (of("a"), of("b"));
    eventually(
        DEADLINE,
        "every record of a is effected while b is down",
        || {
            let state = state.clone();
            let of_a = &of_a;
            async move {
                let done = effects_per_response(&state);
                of_a.iter().all(|p| done.contains_key(&p.response_id))
            }
        },
    )
    .await;

    // Some time into b's outage: no partition is paused, the processor's one circuit stayed
    // closed, b is probed rather than retried in a loop, and a is never probed.
    let calls_before = state.calls().len();
    let probes_before = state.target_probes("b");
    let since = Instant::now();
    eventually(DEADLINE, "b's target is probed a few times", || {
        let state = state.clone();
        async move { state.target_probes("b") >= probes_before + 3 }
    })
    .await;
    let metrics = runtime.metrics().await;
    assert_eq!(
        metric_value(&metrics, "formstream_processor_paused_partitions", &[]),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "formstream_processor_circuit_state", &[]),
        0.0
    );
    let calls_during = state.calls().len() - calls_before;
    let probes_during = state.target_probes("b") - probes_before;
    assert!(
        calls_during as u64 <= probes_during + 1,
        "{calls_during} effects in {:?} of b's outage ({probes_during} probes): a busy loop",
        since.elapsed()
    );
    assert_eq!(state.target_probes("a"), 0, "a's target never failed");
    assert!(
        of_b.iter()
            .all(|p| !effects_per_response(&state).contains_key(&p.response_id)),
        "nothing of b is effected while its target is down"
    );
    // Partition 0's commit stays at or below b's first record there: its offsets are contiguous.
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    let first_b = of_b.iter().map(|p| p.offset).min().expect("b's records");
    assert!(
        committed.get(&0).copied().unwrap_or(-1) <= first_b,
        "partition 0 committed {committed:?}, past b's first waiting record at {first_b}"
    );
    assert_committed_not_ahead(&committed, &state.effected_offsets(), &BTreeMap::new());

    // b's target is back: its records are effected, each once; everything is committed.
    state.set_organisation_down("b", false);
    let ends = wait_committed_to_ends(&topics, DEADLINE).await;
    let done = effects_per_response(&state);
    for record in &produced {
        assert_eq!(
            done.get(&record.response_id),
            Some(&1),
            "response {} effected once",
            record.response_id
        );
    }
    assert_committed_not_ahead(&ends, &state.effected_offsets(), &BTreeMap::new());
    eventually(DEADLINE, "b's circuit closes", || async {
        runtime
            .metric(
                "formstream_processor_open_circuits",
                &[("kind", TARGET_KIND)],
            )
            .await
            == 0.0
    })
    .await;
    assert_eq!(
        runtime
            .metric("formstream_processor_dead_letters_total", &[])
            .await,
        0.0
    );
    assert!(state.overlaps().is_empty(), "{:?}", state.overlaps());
    runtime.stop().await.expect("a clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_refusing_access_past_the_timeout_has_its_records_dead_lettered() {
    let Setup {
        topics,
        producer,
        a,
        b,
        processor,
        state,
    } = setup().await;
    state.set_organisation_refusing("b", true);
    let records = interleaved(&[(0, &b), (0, &a), (1, &a)], 10);
    let produced = producer.responses(&records).await;
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let runtime = spawn_runtime(
        processor,
        topics.config(&[
            "--circuit-threshold",
            "2",
            "--forbidden-timeout",
            &format!("{}s", timeout.as_secs()),
        ]),
    )
    .await;
    let ends = wait_committed_to_ends(&topics, DEADLINE).await;

    let of_b: BTreeSet<&str> = records
        .iter()
        .filter(|(_, r)| r.organisation == "b")
        .map(|(_, r)| r.response_id.as_str())
        .collect();
    let letters = read_topic(&topics.bootstrap, &topics.dlq, of_b.len(), DEADLINE)
        .await
        .expect("reading the dead letters");
    let lettered: BTreeSet<&str> = letters
        .iter()
        .filter_map(|letter| letter.headers.get("response_id").map(String::as_str))
        .collect();
    assert_eq!(lettered, of_b, "exactly b's records are dead-lettered");
    let first_attempt = letters
        .iter()
        .filter_map(|l| l.header_i64(headers::FIRST_ATTEMPT_MS))
        .min()
        .expect("first attempts");
    for letter in &letters {
        assert_eq!(letter.headers[headers::ERROR_KIND], "forbidden");
        let message = &letter.headers[headers::ERROR_MESSAGE];
        assert!(
            message.contains("refused access") && message.contains("403 Forbidden"),
            "{message}"
        );
        let last = letter.header_i64(headers::LAST_ATTEMPT_MS).expect("a time");
        // Not before the target had refused for the whole timeout (the first refusal came no
        // sooner than the first attempt).
        assert!(
            last - first_attempt >= timeout.as_millis() as i64,
            "dead-lettered {} ms after the first attempt, before --forbidden-timeout",
            last - first_attempt
        );
    }
    assert!(started.elapsed() >= timeout);
    // a's records are all effected, once; b's never.
    let done = effects_per_response(&state);
    for (record, (_, response)) in produced.iter().zip(&records) {
        let expected = if response.organisation == "a" {
            Some(&1)
        } else {
            None
        };
        assert_eq!(done.get(&record.response_id), expected, "{response:?}");
    }
    let dead: BTreeMap<i32, BTreeSet<i64>> =
        letters.iter().fold(BTreeMap::new(), |mut dead, letter| {
            let partition = letter.headers[headers::PARTITION]
                .parse()
                .expect("a number");
            let offset = letter.headers[headers::OFFSET].parse().expect("a number");
            dead.entry(partition)
                .or_insert_with(BTreeSet::new)
                .insert(offset);
            dead
        });
    assert_committed_not_ahead(&ends, &state.effected_offsets(), &dead);
    runtime.stop().await.expect("a clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_waiting_past_half_the_buffers_pause_only_their_partition() {
    let Setup {
        topics,
        producer,
        a,
        b,
        processor,
        state,
    } = setup().await;
    state.set_organisation_down("b", true);
    // b's records fill partition 0; a's, partition 1. The buffers hold 40 records: b's waiting
    // records count for 20 of them at most, and partition 0 pauses at 20; whatever burst came
    // before the pause, 80 records (twice the bound) is the ceiling.
    let mut records = interleaved(&[(0, &b)], 200);
    records.extend(interleaved(&[(1, &a)], 200));
    let produced = producer.responses(&records).await;
    let runtime = spawn_runtime(
        processor,
        topics.config(&["--circuit-threshold", "3", "--max-buffered-records", "40"]),
    )
    .await;

    eventually(
        DEADLINE,
        "partition 0 alone pauses with b's records waiting, a's records all done",
        || {
            let state = state.clone();
            let runtime = &runtime;
            async move {
                let metrics = runtime.metrics().await;
                let done = state.effected_offsets();
                metric_value(&metrics, "formstream_processor_paused_partitions", &[]) == 1.0
                    && metric_value(&metrics, "formstream_processor_records_waiting", &[]) >= 20.0
                    && done.get(&1).map_or(0, BTreeSet::len) == 200
            }
        },
    )
    .await;
    let metrics = runtime.metrics().await;
    for gauge in [
        "formstream_processor_records_waiting",
        "formstream_processor_records_buffered",
    ] {
        let value = metric_value(&metrics, gauge, &[]);
        assert!(value <= 80.0, "{gauge} {value}: past twice the bound");
    }
    assert!(
        state
            .effected_offsets()
            .get(&0)
            .is_none_or(BTreeSet::is_empty)
    );

    state.set_organisation_down("b", false);
    wait_committed_to_ends(&topics, DEADLINE).await;
    let done = effects_per_response(&state);
    for record in &produced {
        assert_eq!(done.get(&record.response_id), Some(&1));
    }
    eventually(DEADLINE, "partition 0 resumes", || async {
        runtime
            .metric("formstream_processor_paused_partitions", &[])
            .await
            == 0.0
    })
    .await;
    runtime.stop().await.expect("a clean stop");
    topics.delete().await;
}
