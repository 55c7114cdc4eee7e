//! Permanent failures, spent retry budgets and poison records go to the dead-letter topic, and
//! their partition carries on (docs/design.md, promises 3 and 7).
//!
//! Invariant proved here: each such record lands on the DLQ once, with its original value bytes
//! (or none), its original headers, and the `formstream.dlq.*` headers naming its topic,
//! partition, offset, processor, error kind and message, attempts and attempt times; every later
//! record of the same partition is still effected; the committed offset ends past them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use formstream_runtime::dlq::headers;
use formstream_schemas::{Codec, Response};
use formstream_tests::runtime::*;
use formstream_tests::{read_topic, unique};

const PARTITIONS: i32 = 3;
/// The partition that carries the bad records.
const BAD: i32 = 1;
const RETRY_ATTEMPTS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_are_dead_lettered_with_their_headers_and_the_partition_continues() {
    init_logs();
    let started_ms = now_ms();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let form = &forms[BAD as usize];

    let processor = TestProcessor::new();
    let behaviour = &processor.state.behaviour;
    let rejected = test_response(form, &unique(), 0);
    let flaky = test_response(form, &unique(), 0);
    behaviour
        .permanent
        .lock()
        .unwrap()
        .insert(rejected.response_id.clone());
    behaviour
        .always_retriable
        .lock()
        .unwrap()
        .insert(flaky.response_id.clone());

    // Partition BAD: a good record, garbage bytes, a permanent failure, a record with no value, a
    // record that fails retriably until its budget is spent, then good records.
    let garbage: &[u8] = b"\x00\x01 definitely not Avro \xff\xfe";
    let mut good = producer
        .responses(&[(BAD, test_response(form, &unique(), 0))])
        .await;
    let (_, garbage_offset) = producer.raw(BAD, form, Some(garbage), &[]).await;
    let rejected_offset = producer.responses(&[(BAD, rejected.clone())]).await[0].offset;
    let (_, empty_offset) = producer
        .raw(BAD, form, None, &[("response_id", "tombstone")])
        .await;
    let flaky_offset = producer.responses(&[(BAD, flaky.clone())]).await[0].offset;
    let later: Vec<(i32, Response)> = (0..5)
        .map(|_| (BAD, test_response(form, &unique(), 0)))
        .collect();
    good.extend(producer.responses(&later).await);
    // Good records on the other partitions too.
    let others: Vec<(i32, Response)> = (0..20)
        .map(|i| {
            let partition = [0, 2][i % 2];
            (
                partition,
                test_response(&forms[partition as usize], &unique(), 0),
            )
        })
        .collect();
    good.extend(producer.responses(&others).await);

    let runtime = spawn_runtime(
        processor.clone(),
        topics.config(&["--retry-max-attempts", &RETRY_ATTEMPTS.to_string()]),
    )
    .await;

    // Every good record is effected, including those after the bad ones on their partition.
    let state = processor.state.clone();
    eventually(
        Duration::from_secs(60),
        "every good record effected",
        || {
            let (state, good) = (&state, &good);
            async move {
                let done = state.effected_offsets();
                good.iter().all(|g| {
                    done.get(&g.partition)
                        .is_some_and(|o| o.contains(&g.offset))
                })
            }
        },
    )
    .await;

    // The committed offset of every partition ends past everything, the bad records included.
    let ends = end_offsets(&topics).await.expect("partition ends");
    assert_eq!(ends[&BAD], 10, "the bad partition holds 10 records");
    wait_committed_to_ends(&topics, Duration::from_secs(30)).await;

    // Four dead letters, one per bad record.
    let letters = read_topic(&topics.bootstrap, &topics.dlq, 4, Duration::from_secs(30))
        .await
        .expect("reading the dead-letter topic");
    let by_offset: HashMap<i64, _> = letters
        .iter()
        .map(|l| {
            let offset = l.headers.get(headers::OFFSET).map_or(-1, |o| {
                o.parse::<i64>()
                    .unwrap_or_else(|_| panic!("offset header {o:?}"))
            });
            (offset, l)
        })
        .collect();
    assert_eq!(
        letters.len(),
        4,
        "exactly the four bad records are dead-lettered: {letters:#?}"
    );
    let expected = [
        (garbage_offset, "undecodable", None),
        (rejected_offset, "permanent", Some(1)),
        (empty_offset, "undecodable", None),
        (flaky_offset, "retries_exhausted", Some(RETRY_ATTEMPTS)),
    ];
    let finished_ms = now_ms();
    for (offset, kind, attempts) in expected {
        let letter = by_offset
            .get(&offset)
            .unwrap_or_else(|| panic!("no dead letter for offset {offset}: {letters:#?}"));
        let h = &letter.headers;
        let header = |name: &str| {
            h.get(name)
                .unwrap_or_else(|| panic!("dead letter of offset {offset} lacks {name}: {h:?}"))
                .as_str()
        };
        assert_eq!(header(headers::TOPIC), topics.responses);
        assert_eq!(header(headers::PARTITION), BAD.to_string());
        assert_eq!(header(headers::PROCESSOR), PROCESSOR);
        assert_eq!(header(headers::ERROR_KIND), kind, "offset {offset}");
        assert!(
            !header(headers::ERROR_MESSAGE).trim().is_empty(),
            "offset {offset}: empty error message"
        );
        let recorded_attempts: u32 = header(headers::ATTEMPTS)
            .parse()
            .expect("attempts is a number");
        if let Some(attempts) = attempts {
            assert_eq!(recorded_attempts, attempts, "attempts of offset {offset}");
        }
        let first: i64 = header(headers::FIRST_ATTEMPT_MS).parse().expect("ms");
        let last: i64 = header(headers::LAST_ATTEMPT_MS).parse().expect("ms");
        assert!(
            started_ms <= first && first <= last && last <= finished_ms,
            "offset {offset}: attempt times {first}..{last} outside the test's {started_ms}..{finished_ms}"
        );
        assert_eq!(
            letter.key.as_deref(),
            Some(form.as_str()),
            "the original key"
        );
    }

    // The original value bytes (or none), and the original headers.
    assert_eq!(by_offset[&garbage_offset].payload, garbage);
    assert!(
        by_offset[&empty_offset].payload.is_empty(),
        "a record without a value is dead-lettered without one"
    );
    assert_eq!(
        by_offset[&empty_offset]
            .headers
            .get("response_id")
            .map(String::as_str),
        Some("tombstone")
    );
    let codec = Codec::single_object();
    for (offset, response) in [(rejected_offset, &rejected), (flaky_offset, &flaky)] {
        let letter = by_offset[&offset];
        let decoded: Response = codec
            .decode(&letter.payload)
            .await
            .expect("the dead letter carries the original Avro value");
        assert_eq!(&decoded, response);
        assert_eq!(
            letter.headers.get("response_id"),
            Some(&response.response_id)
        );
        assert_eq!(
            letter.headers.get("revision").map(String::as_str),
            Some("0")
        );
        assert!(
            letter
                .headers
                .get(headers::ERROR_MESSAGE)
                .is_some_and(|m| m.contains(&response.response_id) || m.contains("keeps failing")),
            "the processor's error message is kept: {:?}",
            letter.headers
        );
    }

    // A permanent failure is not retried; a retriable one is tried exactly the budget.
    let calls = state.calls();
    let attempts_of = |id: &str| calls.iter().filter(|c| c.response_id == id).count();
    assert_eq!(attempts_of(&rejected.response_id), 1);
    assert_eq!(attempts_of(&flaky.response_id), RETRY_ATTEMPTS as usize);

    // Nothing is committed ahead: below each committed offset, effected or dead-lettered.
    let committed = committed_offsets(&topics).await.expect("committed offsets");
    let dead: BTreeMap<i32, BTreeSet<i64>> = [(
        BAD,
        [garbage_offset, rejected_offset, empty_offset, flaky_offset].into(),
    )]
    .into();
    assert_committed_not_ahead(&committed, &state.effected_offsets(), &dead);

    let metrics = runtime.metrics().await;
    for (kind, count) in [
        ("undecodable", 2.0),
        ("permanent", 1.0),
        ("retries_exhausted", 1.0),
    ] {
        assert_eq!(
            metric_value(
                &metrics,
                "formstream_processor_dead_letters_total",
                &[("kind", kind)]
            ),
            count,
            "dead letters of kind {kind}: {metrics}"
        );
    }

    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}
