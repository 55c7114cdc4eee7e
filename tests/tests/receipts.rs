//! The receipts processor on the real broker with the Twilio fake (docs/design.md, promises 2
//! to 4): every valid response gets exactly one receipt with the right text and number, a later
//! revision and a redelivery to a fresh instance add none; an ambiguous 5xx is reconciled, not
//! re-sent; Twilio down for longer than the consumer session timeout loses nothing; numbers that
//! cannot exist or that Twilio refuses are dead-lettered with their reason and code; and `kill -9`
//! of the `formstream` process while created messages' answers are pending sends no duplicate.
//!
//! The kill test runs the `formstream` binary: build it first (`cargo build --bin formstream`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use formstream_core::identity::ResponseKey;
use formstream_notify::{RateLimit, SmsSender, TwilioClient};
use formstream_receipts::Receipts;
use formstream_receipts::processor::NAME;
use formstream_receipts::receipt::reference;
use formstream_runtime::dlq::headers;
use formstream_runtime::{Ledger, LedgerArgs};
use formstream_schemas::fixtures;
use formstream_schemas::{Form, Question, QuestionType, ReceiptAction, Response};
use formstream_tests::runtime::{
    RunningRuntime, RuntimeTopics, TestProducer, eventually, formstream_binary, group_state,
    spawn_runtime, test_form, test_response, wait_committed_to_nonempty_ends,
};
use formstream_tests::twilio_fake::{FakeTwilio, Fault};
use formstream_tests::{read_topic, unique};

const DEADLINE: Duration = Duration::from_secs(90);
const PARTITIONS: i32 = 3;
const TEMPLATE: &str =
    "Thank you {{ answers.name }} for answering {{ form.title }}. Receipt {{ receipt_ref }}";

/// One test's topics, form, ledger and fake Twilio.
struct Setup {
    topics: RuntimeTopics,
    ledger: LedgerArgs,
    producer: TestProducer,
    twilio: FakeTwilio,
    form: Form,
}

impl Setup {
    async fn new() -> Self {
        let topics = RuntimeTopics::create(PARTITIONS).await;
        let producer = TestProducer::new(&topics);
        // A form with a name, a phone question and a receipt; numbers without a country code are
        // read as Indian.
        let mut form = test_form(&format!("form-{}", unique()));
        let version = &mut form.versions[0];
        version.title = "Household survey".to_owned();
        version.default_region = Some("IN".to_owned());
        version.questions.push(Question {
            text: "Your mobile number".to_owned(),
            ..fixtures::question("phone", QuestionType::Phone)
        });
        version.receipt = Some(ReceiptAction {
            phone_question: "phone".to_owned(),
            template: TEMPLATE.to_owned(),
        });
        producer.form(&form).await;
        Setup {
            ledger: LedgerArgs {
                ledger_topic: Some(format!("test-{}-ledger", unique())),
                ledger_partitions: PARTITIONS,
                ledger_replication_factor: 1,
            },
            topics,
            producer,
            twilio: FakeTwilio::start().await,
            form,
        }
    }

    /// Revision `revision` of response `id`, named `name`, answering `phone` (if any).
    fn response(&self, id: &str, revision: i32, name: &str, phone: Option<&str>) -> Response {
        let mut response = test_response(&self.form.id, id, revision);
        response.answers = vec![fixtures::text_answer("name", name)];
        if let Some(phone) = phone {
            response.answers.push(fixtures::text_answer("phone", phone));
        }
        response
    }

    /// Publishes responses, each response's revisions on one partition (in the order given).
    async fn publish(&self, responses: &[Response]) {
        let items: Vec<(i32, Response)> = responses
            .iter()
            .map(|r| {
                let partition = r.response_id.bytes().map(i32::from).sum::<i32>() % PARTITIONS;
                (partition, r.clone())
            })
            .collect();
        self.producer.responses(&items).await;
    }

    /// A fresh processor instance (its ledger rebuilt from the topic) on the fake.
    async fn processor(&self, rate: f64) -> Receipts {
        let ledger = Ledger::open(
            &self.topics.kafka(),
            &self.ledger,
            NAME,
            std::future::pending(),
        )
        .await
        .expect("opening the ledger")
        .expect("not shut down");
        let twilio = TwilioClient::new(self.twilio.config()).expect("a Twilio client");
        Receipts::new(
            SmsSender::Twilio(twilio),
            ledger,
            RateLimit::per_second(rate).expect("a rate"),
        )
    }

    async fn run(&self, extra: &[&str]) -> RunningRuntime {
        spawn_runtime(self.processor(200.0).await, self.topics.config(extra)).await
    }

    async fn wait_done(&self) {
        wait_committed_to_nonempty_ends(&self.topics, DEADLINE).await;
    }

    fn expected_body(&self, name: &str, response_id: &str) -> String {
        format!(
            "Thank you {name} for answering Household survey. Receipt {}",
            self.reference(response_id)
        )
    }

    /// The receipt reference of response `response_id` to this test's form.
    fn reference(&self, response_id: &str) -> String {
        reference(
            &ResponseKey {
                organisation: &self.form.organisation,
                form_id: &self.form.id,
                response_id,
            }
            .to_string(),
        )
    }

    /// Dead letters by the response id header.
    async fn dead_letters(&self, expected: usize) -> HashMap<String, HashMap<String, String>> {
        let letters = read_topic(
            &self.topics.bootstrap,
            &self.topics.dlq,
            expected,
            Duration::from_secs(if expected == 0 { 3 } else { 60 }),
        )
        .await
        .unwrap_or_default();
        letters
            .into_iter()
            .map(|l| {
                (
                    l.headers.get("response_id").cloned().unwrap_or_default(),
                    l.headers,
                )
            })
            .collect()
    }

    async fn delete(&self) {
        self.topics.delete().await;
        formstream_tests::delete_topics(
            &self.topics.bootstrap,
            &[self.ledger.ledger_topic.as_deref().unwrap_or_default()],
        )
        .await;
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn every_valid_response_gets_exactly_one_receipt_and_revisions_and_redelivery_add_none() {
    let setup = Setup::new().await;
    let people: Vec<(String, String, String)> = (0..8)
        .map(|i| {
            // Written as collectors type them: local format, read with the form's region (IN).
            (new_id(), format!("Person {i}"), format!("98765 432{i:02}"))
        })
        .collect();
    let mut responses: Vec<Response> = people
        .iter()
        .map(|(id, name, phone)| setup.response(id, 0, name, Some(phone)))
        .collect();
    // A correction of the first response (a new name): still one receipt, the first one.
    let (first_id, _, first_phone) = &people[0];
    responses.push(setup.response(first_id, 1, "Corrected", Some(first_phone)));
    // No phone answered: no receipt, not an error.
    let silent = new_id();
    responses.push(setup.response(&silent, 0, "Nobody", None));
    setup.publish(&responses).await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    for (i, (id, name, _)) in people.iter().enumerate() {
        let to = format!("+9198765432{i:02}");
        let texts = setup.twilio.messages_to(&to);
        assert_eq!(texts.len(), 1, "{to}: {texts:#?}");
        assert_eq!(texts[0].body, setup.expected_body(name, id));
    }
    assert_eq!(setup.twilio.messages().len(), people.len());
    assert!(setup.dead_letters(0).await.is_empty());

    // Redelivery of everything to a fresh group, on a fresh instance whose ledger is rebuilt from
    // Kafka, plus a later revision arriving now: nothing new is sent.
    setup
        .publish(&[setup.response(first_id, 2, "Again", Some(first_phone))])
        .await;
    let again = RuntimeTopics {
        group: format!("{}-again", setup.topics.group),
        ..setup.topics.clone()
    };
    let runtime = setup.run(&["--group-id", &again.group]).await;
    wait_committed_to_nonempty_ends(&again, DEADLINE).await;
    runtime.stop().await.expect("a clean stop");
    assert_eq!(setup.twilio.messages().len(), people.len());
    assert_eq!(setup.twilio.requests_of("POST"), people.len());
    setup.delete().await;
}

#[tokio::test]
async fn an_ambiguous_twilio_answer_is_reconciled_into_exactly_one_receipt() {
    let setup = Setup::new().await;
    let id = new_id();
    // Created, then a 500: the processor cannot know whether the message exists.
    setup.twilio.fail_next(1, Fault::FailAfterCreate(500));
    setup
        .publish(&[setup.response(&id, 0, "Asha", Some("+14155550123"))])
        .await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    let texts = setup.twilio.messages_to("+14155550123");
    assert_eq!(texts.len(), 1, "reconciled, not re-sent: {texts:#?}");
    assert_eq!(texts[0].body, setup.expected_body("Asha", &id));
    assert_eq!(setup.twilio.requests_of("POST"), 1);
    assert!(
        setup.twilio.requests_of("GET") >= 1,
        "the retry searched the list"
    );
    setup.delete().await;
}

#[tokio::test]
async fn twilio_down_longer_than_the_session_timeout_loses_nothing_and_the_backlog_drains() {
    let setup = Setup::new().await;
    setup.twilio.set_down(true);
    let phones: Vec<String> = (0..6).map(|i| format!("+1415555030{i}")).collect();
    let responses: Vec<Response> = phones
        .iter()
        .map(|phone| setup.response(&new_id(), 0, "Down", Some(phone)))
        .collect();
    setup.publish(&responses).await;

    let runtime = setup.run(&["--circuit-threshold", "3"]).await;
    let down_since = Instant::now();
    // The organisation's circuit of the Twilio account opens; its records wait.
    runtime
        .wait_for_target_circuits("twilio", 1.0, DEADLINE, "the circuit opens")
        .await;
    // Keep Twilio down past the 6 s session timeout (FAST_FLAGS): the consumer keeps polling,
    // so it stays the group's one member throughout.
    eventually(
        DEADLINE,
        "the outage outlasts the session timeout, the group keeping its member",
        || async {
            let stable = group_state(&setup.topics)
                .await
                .is_ok_and(|(state, members)| state == "Stable" && members == 1);
            stable && down_since.elapsed() > Duration::from_secs(9)
        },
    )
    .await;
    assert!(setup.twilio.messages().is_empty());
    assert!(setup.twilio.requests_of("GET") >= 1, "the breaker probed");

    setup.twilio.set_down(false);
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");
    let counts = setup.twilio.counts_by_recipient();
    for phone in &phones {
        assert_eq!(counts.get(phone), Some(&1), "{phone}: {counts:?}");
    }
    assert!(
        setup.dead_letters(0).await.is_empty(),
        "nothing dead-lettered"
    );
    setup.delete().await;
}

#[tokio::test]
async fn invalid_numbers_land_on_the_dead_letter_topic_with_their_code() {
    let setup = Setup::new().await;
    // Well-formed, but Twilio's lookup refuses it (21211); one that replied STOP (21610); one
    // that cannot exist at all, refused before any request; and one that works.
    setup.twilio.reject_as_invalid("+14155550140");
    setup.twilio.unsubscribe("+14155550141");
    let (refused, stopped, impossible, fine) = (new_id(), new_id(), new_id(), new_id());
    setup
        .publish(&[
            setup.response(&refused, 0, "A", Some("+1 415 555 0140")),
            setup.response(&stopped, 0, "B", Some("+14155550141")),
            setup.response(&impossible, 0, "C", Some("12345")),
            setup.response(&fine, 0, "D", Some("+14155550142")),
        ])
        .await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    let letters = setup.dead_letters(3).await;
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for (id, needle) in [
        (&refused, "code Some(21211)"),
        (&stopped, "code Some(21610)"),
        (&impossible, "not a phone number that can exist"),
    ] {
        let letter = &letters[id];
        assert_eq!(
            letter.get(headers::ERROR_KIND).map(String::as_str),
            Some("permanent")
        );
        let message = &letter[headers::ERROR_MESSAGE];
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
        assert_eq!(letter[headers::ATTEMPTS], "1", "never retried: {letter:?}");
    }
    // The impossible number never reached Twilio, and is not spelled out in the dead letter.
    assert_eq!(setup.twilio.requests_of("POST"), 3);
    assert!(!letters[&impossible][headers::ERROR_MESSAGE].contains("12345"));
    assert_eq!(setup.twilio.messages().len(), 1);
    assert_eq!(
        setup.twilio.messages_to("+14155550142")[0].body,
        setup.expected_body("D", &fine)
    );
    setup.delete().await;
}

/// A `formstream process receipts` process; killed (SIGKILL) when dropped.
struct ReceiptsProcess {
    child: Child,
    log: PathBuf,
}

impl ReceiptsProcess {
    fn start(setup: &Setup, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("creating the process log");
        let child = Command::new(formstream_binary())
            .args(["process", "receipts"])
            .args(setup.topics.runtime_args())
            .args(["--twilio-account-sid", setup.twilio.account_sid()])
            .args(["--twilio-from", formstream_tests::twilio_fake::FAKE_FROM])
            .args(["--twilio-base-url", &setup.twilio.base_url()])
            // Long enough that the pending answers are still pending at the kill.
            .args(["--twilio-timeout", "60s"])
            .args([
                "--ledger-topic",
                setup.ledger.ledger_topic.as_deref().unwrap_or_default(),
            ])
            .args(["--ledger-partitions", &PARTITIONS.to_string()])
            .args(["--receipts-rate", "40", "--max-in-flight", "8"])
            .env("FORMSTREAM_TWILIO_AUTH_TOKEN", setup.twilio.auth_token())
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting formstream process receipts");
        ReceiptsProcess { child, log }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("formstream process receipts exited ({status}); its log:\n{text}");
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ReceiptsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn kill_9_while_created_messages_await_their_answer_sends_no_duplicate() {
    let setup = Setup::new().await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let count = 60;
    let people: Vec<(String, String)> = (0..count)
        .map(|i| (new_id(), format!("+1415555{:04}", 1000 + i)))
        .collect();
    let responses: Vec<Response> = people
        .iter()
        .map(|(id, phone)| setup.response(id, 0, "Kill", Some(phone)))
        .collect();
    setup.publish(&responses).await;

    let mut process = ReceiptsProcess::start(&setup, dir.path().join("first.log"));
    // Let some receipts go through, then make the next creates hang after creating the message:
    // Twilio has the message, the process does not have its sid, the ledger says `attempted`.
    eventually(DEADLINE, "some receipts are sent", || {
        process.assert_running();
        let sent = setup.twilio.messages().len();
        async move { sent >= 10 }
    })
    .await;
    setup
        .twilio
        .fail_next(4, Fault::SlowAfterCreate(Duration::from_secs(120)));
    eventually(DEADLINE, "four created messages await their answer", || {
        let pending = setup.twilio.pending_faults();
        async move { pending == 0 }
    })
    .await;
    let before_kill = setup.twilio.messages().len();
    process.kill();
    assert!(before_kill < count, "the run was over before the kill");

    let mut process = ReceiptsProcess::start(&setup, dir.path().join("second.log"));
    eventually(DEADLINE, "every response has its receipt", || {
        process.assert_running();
        let sent = setup.twilio.messages().len();
        async move { sent >= count }
    })
    .await;
    setup.wait_done().await;
    process.kill();

    let counts = setup.twilio.counts_by_recipient();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "duplicates: {doubled:?}");
    for (id, phone) in &people {
        let texts = setup.twilio.messages_to(phone);
        assert_eq!(texts.len(), 1, "{phone}");
        assert!(texts[0].body.ends_with(&setup.reference(id)));
    }
    // The hung ones were found in the list after the restart, not re-sent.
    assert!(setup.twilio.requests_of("GET") >= 4);
    setup.delete().await;
}

#[tokio::test]
async fn a_redriven_record_whose_receipt_was_sent_sends_nothing() {
    let setup = Setup::new().await;
    let id = new_id();
    setup
        .publish(&[setup.response(&id, 0, "Asha", Some("+14155550199"))])
        .await;
    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    assert_eq!(setup.twilio.messages_to("+14155550199").len(), 1);

    // Dead-lettered after all (say its retries ran out after a timeout), then re-driven: the
    // ledger says the receipt was sent.
    let partition = id.bytes().map(i32::from).sum::<i32>() % PARTITIONS;
    formstream_tests::runtime::dead_letter_and_redrive(
        &setup.topics,
        NAME,
        &setup.topics.responses,
        partition,
        0,
    )
    .await;
    runtime.stop().await.expect("a clean stop");
    assert_eq!(setup.twilio.messages_to("+14155550199").len(), 1);
    assert_eq!(setup.twilio.requests_of("POST"), 1);
    setup.delete().await;
}
