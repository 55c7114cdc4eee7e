//! Dead-letter re-drive on the real broker (docs/design.md, promises 2, 3, 8 and 9), through
//! the library the CLI and the gateway call, with the runtime running a test processor in-process.
//!
//! Invariants proved here: a record dead-lettered by an outage, re-driven after the fix, takes
//! effect exactly once, from the processor's re-drive topic, with a re-drive count; re-driving
//! it again does nothing; a re-drive commits its re-drive partitions contiguously to their end and
//! leaves no lag; discarded dead letters leave the list and are never re-driven; two operators at
//! once copy each dead letter once; a dead letter written twice (a crash between the dead letter
//! and the commit) is listed and re-driven once; a re-driven record never runs beside the same
//! response's source record; an organisation cannot list, show, re-drive or discard another's dead letters;
//! the filters select what they say.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use formstream_core::time::now_millis;
use formstream_runtime::dlq::Kind;
use formstream_runtime::dlq::headers;
use formstream_runtime::redrive::{
    AdminError, DeadLetter, DeadLetterAdmin, Filter, LetterId, RedriveTopics, Scope, Selection,
    Status,
};
use formstream_schemas::Response;
use formstream_tests::runtime::*;
use formstream_tests::{read_topic, unique};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 3;
const ATTEMPTS: &str = "3";

/// An operator (every organisation).
const OPERATOR: Scope = Scope::Everything;

fn everything() -> Selection {
    Selection::Matching(Filter::default())
}

/// Waits until `admin` lists `count` pending dead letters matching `filter`; returns them.
async fn wait_pending(admin: &DeadLetterAdmin, filter: &Filter, count: usize) -> Vec<DeadLetter> {
    eventually(
        Duration::from_secs(60),
        &format!("{count} pending dead letters"),
        || async { admin.list(&OPERATOR, filter).await.map(|l| l.len()).ok() == Some(count) },
    )
    .await;
    admin.list(&OPERATOR, filter).await.expect("listing")
}

/// Every pending dead letter, of every organisation.
async fn pending(admin: &DeadLetterAdmin) -> Vec<DeadLetter> {
    admin
        .list(&OPERATOR, &Filter::default())
        .await
        .expect("listing")
}

/// Successful effects per response id.
fn effects_by_response(processor: &TestProcessor) -> HashMap<String, Vec<Call>> {
    let mut by: HashMap<String, Vec<Call>> = HashMap::new();
    for call in processor.state.effects() {
        by.entry(call.response_id.clone()).or_default().push(call);
    }
    by
}

/// Waits until the group has committed every partition of the re-drive topic to its end.
async fn wait_redrive_committed(topics: &RuntimeTopics) {
    let redrive = RedriveTopics::of(&topics.dlq).redrive;
    let ends = end_offsets_of(topics, &redrive).await.expect("ends");
    let reached = formstream_tests::wait_until(Duration::from_secs(30), || {
        let (ends, redrive) = (&ends, &redrive);
        async move {
            committed_offsets_of(topics, redrive)
                .await
                .ok()
                .is_some_and(|committed| {
                    ends.iter()
                        .all(|(p, end)| *end == 0 || committed.get(p) == Some(end))
                })
        }
    })
    .await;
    assert!(
        reached,
        "re-drive partitions not committed to their ends {ends:?} within 30 s: {:?}",
        committed_offsets_of(topics, &redrive).await
    );
}

fn ids(letters: &[DeadLetter]) -> BTreeSet<LetterId> {
    letters.iter().map(|l| l.id).collect()
}

/// Fresh topics (one form per partition), a test processor that rejects `responses` for good,
/// the runtime running it with `extra` flags, and their dead letters once listed.
struct Rejected {
    topics: RuntimeTopics,
    producer: TestProducer,
    processor: TestProcessor,
    runtime: RunningRuntime,
    admin: DeadLetterAdmin,
    produced: Vec<Produced>,
    letters: Vec<DeadLetter>,
}

impl Rejected {
    /// `make` builds the responses from the forms (form `i` on partition `i`).
    async fn start(
        partitions: i32,
        extra: &[&str],
        make: impl FnOnce(&[String]) -> Vec<(i32, Response)>,
    ) -> Self {
        let topics = RuntimeTopics::create(partitions).await;
        let producer = TestProducer::new(&topics);
        let forms = forms_per_partition(&producer, partitions).await;
        let processor = TestProcessor::new();
        let responses = make(&forms);
        for (_, response) in &responses {
            reject(&processor, &response.response_id);
        }
        let runtime = spawn_runtime(processor.clone(), topics.config(extra)).await;
        let produced = producer.responses(&responses).await;
        let admin = topics.dead_letters(PROCESSOR);
        let letters = wait_pending(&admin, &Filter::default(), responses.len()).await;
        Rejected {
            topics,
            producer,
            processor,
            runtime,
            admin,
            produced,
            letters,
        }
    }

    /// The fix: nothing is rejected any more.
    fn fix(&self) {
        fix(&self.processor);
    }

    async fn finish(self) {
        self.runtime
            .stop()
            .await
            .expect("the runtime stops cleanly");
        self.topics.delete().await;
    }
}

/// Re-drives every pending dead letter, which must be `expected`, and waits until the (fixed)
/// processor has effected that many records and committed its re-drive partitions.
async fn redrive_all(setup: &Rejected, expected: &[DeadLetter]) {
    let outcome = setup
        .admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving");
    assert_eq!(
        outcome.done.iter().copied().collect::<BTreeSet<_>>(),
        ids(expected)
    );
    eventually(
        Duration::from_secs(60),
        &format!("the {} re-driven records effected", expected.len()),
        || async { setup.processor.state.effect_count() == expected.len() },
    )
    .await;
    wait_redrive_committed(&setup.topics).await;
}

/// `processor` rejects nothing any more.
fn fix(processor: &TestProcessor) {
    processor.state.behaviour.permanent.lock().unwrap().clear();
}

/// `processor` rejects response `id` for good.
fn reject(processor: &TestProcessor, id: &str) {
    processor
        .state
        .behaviour
        .permanent
        .lock()
        .unwrap()
        .insert(id.to_owned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_past_the_retry_budget_is_redriven_after_the_fix_exactly_once() {
    init_logs();
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let processor = TestProcessor::new();
    // The target is down, and the circuit never opens: each record spends its retry budget.
    processor.state.set_target_down(true);
    let config = topics.config(&[
        "--retry-max-attempts",
        ATTEMPTS,
        "--circuit-threshold",
        "1000000",
    ]);
    let runtime = spawn_runtime(processor.clone(), config.clone()).await;
    let produced = producer.responses(&fresh_responses(&forms, 6)).await;

    let admin = topics.dead_letters(PROCESSOR);
    let letters = wait_pending(&admin, &Filter::default(), 6).await;
    wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    for letter in &letters {
        assert_eq!(letter.kind(), Some(Kind::RetriesExhausted));
        assert_eq!(letter.state.status, Status::Pending);
        assert_eq!(letter.redrive_count(), 0);
        assert_eq!(letter.header(headers::ATTEMPTS), Some(ATTEMPTS));
    }
    assert_eq!(processor.state.effect_count(), 0);

    // The fix, then the re-drive.
    processor.state.set_target_down(false);
    let outcome = admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving");
    assert_eq!(
        outcome.done.iter().copied().collect::<BTreeSet<_>>(),
        ids(&letters)
    );
    assert!(outcome.skipped.is_empty());

    eventually(
        Duration::from_secs(60),
        "every re-driven record effected",
        || async { effects_by_response(&processor).len() == produced.len() },
    )
    .await;
    assert!(pending(&admin).await.is_empty());

    // Re-driving again does nothing: by filter, nothing is pending; by id, each is skipped.
    let again = admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving again");
    assert!(
        again.done.is_empty() && again.skipped.is_empty(),
        "{again:?}"
    );
    let by_id = admin
        .redrive(
            &OPERATOR,
            &Selection::Ids(ids(&letters).into_iter().collect()),
            "test",
        )
        .await
        .expect("re-driving by id again");
    assert!(by_id.done.is_empty());
    assert_eq!(by_id.skipped.len(), letters.len());
    assert!(by_id.skipped.iter().all(|s| s.status == Status::Redriven));

    // One copy per dead letter on the re-drive topic, on its source partition, with the
    // re-drive headers; everything consumed and committed contiguously to the end.
    let redrive = RedriveTopics::of(&topics.dlq);
    let copies = read_topic(
        &topics.bootstrap,
        &redrive.redrive,
        6,
        Duration::from_secs(30),
    )
    .await
    .expect("reading the re-drive topic");
    assert_eq!(copies.len(), 6, "{copies:#?}");
    let sources: HashMap<&str, i32> = produced
        .iter()
        .map(|p| (p.response_id.as_str(), p.partition))
        .collect();
    for copy in &copies {
        let response = &copy.headers["response_id"];
        assert_eq!(Some(&copy.partition), sources.get(response.as_str()));
        assert_eq!(copy.headers[headers::REDRIVE_COUNT], "1");
        assert!(copy.headers[headers::REDRIVE_FROM].starts_with(&format!("{}:", topics.dlq)));
        assert!(
            copy.headers[headers::REDRIVE_ORIGIN].starts_with(&format!("{}:", topics.responses)),
            "{:?}",
            copy.headers
        );
        assert!(
            !copy.headers.keys().any(|h| h.starts_with(headers::PREFIX)),
            "no dead-letter header is handed back: {:?}",
            copy.headers
        );
    }
    wait_redrive_committed(&topics).await;
    for (response, calls) in effects_by_response(&processor) {
        assert_eq!(calls.len(), 1, "{response}: {calls:#?}");
        assert_eq!(calls[0].topic, redrive.redrive);
        assert_eq!(calls[0].redrive_count, Some(1));
        assert_eq!(Some(&calls[0].partition), sources.get(response.as_str()));
    }
    // No lag left on the re-drive topic (its transaction markers count as read).
    eventually(
        Duration::from_secs(30),
        "no lag on the re-drive topic",
        || async {
            let metrics = runtime.metrics().await;
            let lag = |name| metric_value(&metrics, name, &[("topic", redrive.redrive.as_str())]);
            metrics.contains(&redrive.redrive)
                && lag("formstream_processor_consumer_lag_records") == 0.0
                && lag("formstream_processor_consumer_lag_seconds") == 0.0
        },
    )
    .await;

    // A restart resumes past the re-driven records: nothing is done twice.
    runtime.stop().await.expect("the runtime stops cleanly");
    let runtime = spawn_runtime(processor.clone(), config).await;
    let more = producer.responses(&fresh_responses(&forms, 3)).await;
    eventually(
        Duration::from_secs(60),
        "the new records effected",
        || async { effects_by_response(&processor).len() == produced.len() + more.len() },
    )
    .await;
    wait_committed_to_ends(&topics, Duration::from_secs(30)).await;
    wait_redrive_committed(&topics).await;
    assert!(
        effects_by_response(&processor)
            .values()
            .all(|calls| calls.len() == 1)
    );

    runtime.stop().await.expect("the runtime stops cleanly");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discarded_dead_letters_leave_the_list_and_are_never_redriven() {
    init_logs();
    let setup = Rejected::start(PARTITIONS, &[], |forms| fresh_responses(forms, 3)).await;
    let (admin, processor, letters) = (&setup.admin, &setup.processor, &setup.letters);
    setup.fix();

    let discarded = letters[0].id;
    let outcome = admin
        .discard(&OPERATOR, &Selection::Ids(vec![discarded]), "test")
        .await
        .expect("discarding");
    assert_eq!(outcome.done, vec![discarded]);
    let left = pending(admin).await;
    assert_eq!(ids(&left), ids(&letters[1..]));
    let shown = admin.show(&OPERATOR, discarded).await.expect("showing");
    assert_eq!(shown.state.status, Status::Discarded);
    assert_eq!(shown.state.by.as_deref(), Some("test"));

    // Re-driving it by id skips it; re-driving everything re-drives the other two only.
    let by_id = admin
        .redrive(&OPERATOR, &Selection::Ids(vec![discarded]), "test")
        .await
        .expect("re-driving a discarded one");
    assert!(by_id.done.is_empty());
    assert_eq!(by_id.skipped[0].status, Status::Discarded);
    redrive_all(&setup, &letters[1..]).await;
    let effected: BTreeSet<String> = effects_by_response(processor).into_keys().collect();
    let discarded_response = letters[0].response_id().expect("a response id");
    assert!(!effected.contains(&discarded_response));
    assert_eq!(processor.state.effect_count(), 2);

    setup.finish().await;
}

/// Writes `letter` to the dead-letter topic again, as the processor does when it is killed after
/// writing a dead letter and before committing its source offset, and redoes the record.
async fn write_again(topics: &RuntimeTopics, letter: &DeadLetter) {
    let producer: FutureProducer = formstream_core::kafka::client_config(&topics.kafka())
        .create()
        .expect("a producer");
    let mut headers = OwnedHeaders::new();
    for (name, value) in &letter.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topics.dlq)
        .partition(letter.id.partition)
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key);
    }
    if let Some(payload) = &letter.payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(error, _)| error)
        .expect("writing the dead letter again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_written_twice_is_listed_and_redriven_once() {
    init_logs();
    let setup = Rejected::start(PARTITIONS, &[], |forms| fresh_responses(forms, 3)).await;
    let (admin, processor, letters) = (&setup.admin, &setup.processor, &setup.letters);
    write_again(&setup.topics, &letters[0]).await;
    let on_topic = read_topic(
        &setup.topics.bootstrap,
        &setup.topics.dlq,
        4,
        Duration::from_secs(30),
    )
    .await
    .expect("reading the dead-letter topic");
    assert_eq!(on_topic.len(), 4, "the topic holds the copy");

    // Listed once, with the first copy's id.
    assert_eq!(ids(&pending(admin).await), ids(letters));

    setup.fix();
    redrive_all(&setup, letters).await;
    assert!(
        effects_by_response(processor)
            .values()
            .all(|effects| effects.len() == 1),
        "each response effected once: {:?}",
        effects_by_response(processor)
    );
    assert!(
        pending(admin).await.is_empty(),
        "nothing pending after the re-drive"
    );

    // A copy written after the operator acted (the record replayed and failed again) is a new one.
    write_again(&setup.topics, &letters[1]).await;
    let again = pending(admin).await;
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, letters[1].id);
    assert_eq!(again[0].response_id(), letters[1].response_id());

    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operators_at_once_copy_each_dead_letter_once() {
    init_logs();
    let Rejected {
        topics,
        runtime,
        letters,
        ..
    } = Rejected::start(PARTITIONS, &[], |forms| fresh_responses(forms, 30)).await;
    // Stopped: the copies stay on the re-drive topic to be counted.
    runtime.stop().await.expect("the runtime stops cleanly");

    // Two operators (two admins: two processes, as far as Kafka can tell), each re-driving
    // everything, several times over.
    let (first, second) = (
        topics.dead_letters(PROCESSOR),
        topics.dead_letters(PROCESSOR),
    );
    let selection = everything();
    let run = |admin: DeadLetterAdmin| {
        let selection = selection.clone();
        async move {
            let mut done = Vec::new();
            for _ in 0..3 {
                match admin.redrive(&OPERATOR, &selection, "operator").await {
                    Ok(outcome) => done.extend(outcome.done),
                    Err(AdminError::Busy(_)) => {}
                    Err(error) => panic!("re-driving: {error}"),
                }
            }
            done
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(run(first)), tokio::spawn(run(second)));
    let (a, b) = (a.expect("operator a"), b.expect("operator b"));
    let mut all: Vec<LetterId> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(
        all,
        ids(&letters).into_iter().collect::<Vec<_>>(),
        "each once: a {a:?}, b {b:?}"
    );

    let redrive = RedriveTopics::of(&topics.dlq);
    let copies = read_topic(
        &topics.bootstrap,
        &redrive.redrive,
        30,
        Duration::from_secs(30),
    )
    .await
    .expect("reading the re-drive topic");
    let mut copied: Vec<&str> = copies
        .iter()
        .map(|c| c.headers[headers::REDRIVE_FROM].as_str())
        .collect();
    copied.sort();
    let before = copied.len();
    copied.dedup();
    assert_eq!(
        (before, copied.len()),
        (30, 30),
        "one committed copy per dead letter"
    );
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redriven_record_never_runs_beside_its_responses_source_record() {
    init_logs();
    let id = unique();
    // Revision 1 below keeps failing for a while: no circuit, no dead letter meanwhile.
    let setup = Rejected::start(
        1,
        &[
            "--circuit-threshold",
            "1000000",
            "--retry-max-attempts",
            "1000000",
        ],
        |forms| vec![(0, test_response(&forms[0], &id, 0))],
    )
    .await;
    let (topics, producer, processor, runtime, admin) = (
        &setup.topics,
        &setup.producer,
        &setup.processor,
        &setup.runtime,
        &setup.admin,
    );
    let form = &setup.letters[0]
        .record
        .summary()
        .expect("a response")
        .form_id
        .to_owned();

    // Revision 1 arrives on the source and keeps failing (retriably: it holds its response's
    // key); revision 0 is re-driven meanwhile. The copy must wait for revision 1 to finish.
    setup.fix();
    processor
        .state
        .behaviour
        .always_retriable
        .lock()
        .unwrap()
        .insert(id.clone());
    producer
        .responses(&[(0, test_response(form, &id, 1))])
        .await;
    admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving");
    // Both fetched; then a few more attempts of revision 1, time enough for the copy to be
    // tried too if its key were free.
    eventually(Duration::from_secs(30), "the copy fetched", || async {
        runtime
            .metric("formstream_processor_records_buffered", &[])
            .await
            >= 2.0
    })
    .await;
    let attempts = processor.state.calls().len();
    eventually(Duration::from_secs(30), "revision 1 retried", || async {
        processor.state.calls().len() >= attempts + 3
    })
    .await;
    processor
        .state
        .behaviour
        .always_retriable
        .lock()
        .unwrap()
        .clear();
    eventually(
        Duration::from_secs(60),
        "both revisions effected",
        || async { processor.state.effect_count() == 2 },
    )
    .await;

    // Every call of the copy came after revision 1 succeeded.
    let redrive = RedriveTopics::of(&topics.dlq).redrive;
    let calls = processor.state.calls();
    let revision_1_done = calls
        .iter()
        .position(|c| c.revision == 1 && c.outcome == Outcome::Ok)
        .expect("revision 1 effected");
    let first_copy_call = calls
        .iter()
        .position(|c| c.topic == redrive)
        .expect("the copy was called");
    assert!(
        revision_1_done < first_copy_call,
        "the copy ran while revision 1 was unfinished: {calls:#?}"
    );
    assert!(processor.state.overlaps().is_empty());
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redriven_record_that_fails_again_is_dead_lettered_again_with_its_count() {
    init_logs();
    let setup = Rejected::start(PARTITIONS, &[], |forms| {
        vec![(1, test_response(&forms[1], &unique(), 0))]
    })
    .await;
    let (topics, processor, admin, produced) = (
        &setup.topics,
        &setup.processor,
        &setup.admin,
        &setup.produced,
    );
    let first = &setup.letters;

    // Not fixed yet: the copy fails again and comes back as a new dead letter.
    admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving");
    let second = wait_pending(admin, &Filter::default(), 1).await;
    assert_ne!(second[0].id, first[0].id);
    let redrive = RedriveTopics::of(&topics.dlq).redrive;
    assert_eq!(second[0].source().0, Some(redrive.as_str()));
    assert_eq!(second[0].source().1, Some(1));
    assert_eq!(second[0].redrive_count(), 1);
    assert_eq!(
        second[0].header(headers::REDRIVE_ORIGIN),
        Some(format!("{}:1:{}", topics.responses, produced[0].offset).as_str())
    );
    assert_eq!(
        admin
            .show(&OPERATOR, first[0].id)
            .await
            .expect("show")
            .state
            .status,
        Status::Redriven
    );

    // Fixed: the second re-drive takes effect, with count 2.
    setup.fix();
    admin
        .redrive(&OPERATOR, &everything(), "test")
        .await
        .expect("re-driving again");
    eventually(Duration::from_secs(60), "effected", || async {
        processor.state.effect_count() == 1
    })
    .await;
    let effect = &processor.state.effects()[0];
    assert_eq!((effect.redrive_count, effect.partition), (Some(2), 1));
    assert!(pending(admin).await.is_empty());
    setup.finish().await;
}

/// acme's and globex's dead letters, and a poison record (no organisation): one permanent
/// failure each, plus one garbage record.
struct TwoOrganisations {
    topics: RuntimeTopics,
    runtime: RunningRuntime,
    processor: TestProcessor,
    acme: Response,
    globex: Response,
}

async fn two_organisations() -> TwoOrganisations {
    let topics = RuntimeTopics::create(PARTITIONS).await;
    let producer = TestProducer::new(&topics);
    let forms = forms_per_partition(&producer, PARTITIONS).await;
    let processor = TestProcessor::new();
    let acme = test_response(&forms[0], &unique(), 0);
    // A form is (organisation, form id): globex's response is to a form of globex's.
    let mut globex_form = test_form(&format!("f{}", unique()));
    globex_form.organisation = "globex".to_owned();
    producer.form(&globex_form).await;
    let mut globex = test_response(&globex_form.id, &unique(), 0);
    globex.organisation = "globex".to_owned();
    reject(&processor, &acme.response_id);
    reject(&processor, &globex.response_id);
    let runtime = spawn_runtime(processor.clone(), topics.config(&[])).await;
    producer
        .responses(&[(0, acme.clone()), (2, globex.clone())])
        .await;
    producer
        .raw(
            1,
            &forms[1],
            Some(b"\x00 not Avro"),
            &[("response_id", "poison")],
        )
        .await;
    wait_pending(&topics.dead_letters(PROCESSOR), &Filter::default(), 3).await;
    TwoOrganisations {
        topics,
        runtime,
        processor,
        acme,
        globex,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_organisation_cannot_list_show_redrive_or_discard_anothers_dead_letters() {
    init_logs();
    let setup = two_organisations().await;
    let admin = setup.topics.dead_letters(PROCESSOR);
    let globex = Scope::Organisation("globex".to_owned());
    let all = pending(&admin).await;
    let of = |response: &Response| {
        all.iter()
            .find(|l| l.response_id().as_deref() == Some(response.response_id.as_str()))
            .expect("listed")
            .id
    };
    let (acme_id, globex_id) = (of(&setup.acme), of(&setup.globex));

    // globex sees its own only: not acme's, not the poison record.
    let seen = admin.list(&globex, &Filter::default()).await.expect("list");
    assert_eq!(ids(&seen), BTreeSet::from([globex_id]));
    assert!(admin.show(&globex, globex_id).await.is_ok());
    // acme's and one that does not exist look the same.
    let missing = LetterId {
        partition: 0,
        offset: 999_999,
    };
    for id in [acme_id, missing] {
        assert!(
            matches!(admin.show(&globex, id).await, Err(AdminError::NotFound(ref ids)) if ids == &vec![id]),
            "show {id}"
        );
        for outcome in [
            admin
                .redrive(&globex, &Selection::Ids(vec![id]), "globex")
                .await,
            admin
                .discard(&globex, &Selection::Ids(vec![id]), "globex")
                .await,
            // One of its own beside it changes nothing: the whole request is refused.
            admin
                .redrive(&globex, &Selection::Ids(vec![globex_id, id]), "globex")
                .await,
        ] {
            assert!(
                matches!(outcome, Err(AdminError::NotFound(ref ids)) if ids == &vec![id]),
                "{id}: {outcome:?}"
            );
        }
    }
    // A filter naming acme finds nothing for globex.
    let acme_filter = Filter {
        organisation: Some("acme".to_owned()),
        ..Filter::default()
    };
    assert!(
        admin
            .list(&globex, &acme_filter)
            .await
            .expect("list")
            .is_empty()
    );

    // Re-driving "everything" as globex re-drives globex's only.
    fix(&setup.processor);
    let outcome = admin
        .redrive(&globex, &everything(), "globex")
        .await
        .expect("re-drive");
    assert_eq!(outcome.done, vec![globex_id]);
    let left = pending(&admin).await;
    assert_eq!(
        left.len(),
        2,
        "acme's and the poison record stay pending: {left:#?}"
    );
    assert!(left.iter().any(|l| l.id == acme_id));
    eventually(
        Duration::from_secs(60),
        "globex's record effected",
        || async { setup.processor.state.effect_count() == 1 },
    )
    .await;
    assert_eq!(
        setup.processor.state.effects()[0].response_id,
        setup.globex.response_id
    );
    let discard = admin
        .discard(&globex, &everything(), "globex")
        .await
        .expect("discard");
    assert!(
        discard.done.is_empty(),
        "nothing of globex's is left: {discard:?}"
    );
    assert_eq!(pending(&admin).await.len(), 2);

    setup
        .runtime
        .stop()
        .await
        .expect("the runtime stops cleanly");
    setup.topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_select_by_kind_organisation_form_response_and_time() {
    init_logs();
    let setup = two_organisations().await;
    let admin = setup.topics.dead_letters(PROCESSOR);
    let listed = |filter: Filter| {
        let admin = &admin;
        async move {
            let letters = admin.list(&OPERATOR, &filter).await.expect("list");
            letters
                .iter()
                .map(|l| l.response_id().unwrap_or_default())
                .collect::<BTreeSet<String>>()
        }
    };
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let (acme, globex) = (
        setup.acme.response_id.as_str(),
        setup.globex.response_id.as_str(),
    );

    assert_eq!(
        listed(Filter::default()).await,
        set(&[acme, globex, "poison"])
    );
    let kind = |kind| Filter {
        kind: Some(kind),
        ..Filter::default()
    };
    assert_eq!(listed(kind(Kind::Undecodable)).await, set(&["poison"]));
    assert_eq!(listed(kind(Kind::Permanent)).await, set(&[acme, globex]));
    assert!(listed(kind(Kind::UnknownForm)).await.is_empty());
    let organisation = Filter {
        organisation: Some("globex".to_owned()),
        ..Filter::default()
    };
    assert_eq!(listed(organisation).await, set(&[globex]));
    let form = Filter {
        form_id: Some(setup.acme.form_id.clone()),
        ..Filter::default()
    };
    assert_eq!(listed(form).await, set(&[acme]));
    let response = Filter {
        response_id: Some(globex.to_owned()),
        ..Filter::default()
    };
    assert_eq!(listed(response).await, set(&[globex]));

    // Time: a dead letter made after `middle` is the only one since it, and not before it.
    let middle = now_millis() + 1;
    let late = test_response(&setup.acme.form_id, &unique(), 0);
    reject(&setup.processor, &late.response_id);
    eventually(
        Duration::from_secs(10),
        "the clock passes the middle",
        || async { now_millis() > middle },
    )
    .await;
    TestProducer::new(&setup.topics)
        .responses(&[(0, late.clone())])
        .await;
    wait_pending(&admin, &Filter::default(), 4).await;
    let since = Filter {
        since_ms: Some(middle),
        ..Filter::default()
    };
    assert_eq!(listed(since).await, set(&[&late.response_id]));
    let until = Filter {
        until_ms: Some(middle),
        ..Filter::default()
    };
    assert_eq!(listed(until).await, set(&[acme, globex, "poison"]));
    let both = Filter {
        kind: Some(Kind::Permanent),
        since_ms: Some(middle),
        form_id: Some(setup.acme.form_id.clone()),
        ..Filter::default()
    };
    assert_eq!(listed(both).await, set(&[&late.response_id]));

    // A re-drive by filter takes exactly what the filter lists.
    fix(&setup.processor);
    let only_globex = Filter {
        kind: Some(Kind::Permanent),
        organisation: Some("globex".to_owned()),
        ..Filter::default()
    };
    let outcome = admin
        .redrive(&OPERATOR, &Selection::Matching(only_globex), "test")
        .await
        .expect("re-drive");
    assert_eq!(outcome.done.len(), 1);
    eventually(
        Duration::from_secs(60),
        "globex's record effected",
        || async { setup.processor.state.effect_count() == 1 },
    )
    .await;
    assert_eq!(
        listed(Filter::default()).await,
        set(&[acme, "poison", &late.response_id])
    );

    setup
        .runtime
        .stop()
        .await
        .expect("the runtime stops cleanly");
    setup.topics.delete().await;
}
