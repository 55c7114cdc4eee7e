//! The notify-collectors processor on the real broker, with the Twilio fake and a verifying
//! webhook receiver (docs/design.md, promises 2 to 4): a flagged
//! response gets one SMS and one signed webhook, a clean one nothing; redelivery to a fresh group
//! and a fresh instance (its ledger rebuilt from Kafka) adds nothing; an ambiguous Twilio failure is
//! reconciled into exactly one SMS; 429s and an outage are retried behind the circuit breaker and
//! lose nothing; a missing webhook secret dead-letters the record with a clear message. Plus the
//! ledger itself: what one instance records, another sees after `sync_key`.

use std::time::Duration;

use formstream_core::topics::{TopicSpec, ensure_topics};
use formstream_notify::{Destinations, SmsSender, TwilioClient, WebhookSender};
use formstream_notify_collectors::message::reference;
use formstream_notify_collectors::processor::NAME;
use formstream_notify_collectors::{NotifyCollectors, WebhookSecrets};
use formstream_runtime::dlq::headers;
use formstream_runtime::{Entry, Ledger, LedgerArgs};
use formstream_schemas::{FlagStatus, Form, Notify, ResponseFlag};
use formstream_tests::runtime::{
    RunningRuntime, RuntimeTopics, TestProducer, spawn_runtime, test_flag, test_form,
    wait_committed_to_nonempty_ends,
};
use formstream_tests::twilio_fake::{FakeTwilio, Fault};
use formstream_tests::webhook_receiver::WebhookReceiver;
use formstream_tests::{read_topic, unique};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BASE_URL: &str = "https://forms.example.org";
const DEADLINE: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

/// One test's broker topics, fakes and producer (of forms and flags).
struct Setup {
    topics: RuntimeTopics,
    /// The same topics, with the flags topic where the runtime helpers look for "responses":
    /// committed offsets and ends are those of the flags topic, which this processor consumes.
    flags_view: RuntimeTopics,
    ledger: LedgerArgs,
    forms: TestProducer,
    twilio: FakeTwilio,
    receiver: WebhookReceiver,
}

impl Setup {
    async fn new() -> Self {
        let topics = RuntimeTopics::create(PARTITIONS).await;
        let spec = TopicSpec {
            name: topics.flags.clone(),
            partitions: PARTITIONS,
            replication_factor: 1,
            config: vec![],
        };
        ensure_topics(&topics.kafka(), &[spec], Duration::from_secs(30))
            .await
            .expect("creating the flags topic");
        let flags_view = RuntimeTopics {
            responses: topics.flags.clone(),
            ..topics.clone()
        };
        Setup {
            ledger: LedgerArgs {
                ledger_topic: Some(format!("test-{}-ledger", unique())),
                ledger_partitions: PARTITIONS,
                ledger_replication_factor: 1,
            },
            forms: TestProducer::new(&topics),
            flags_view,
            topics,
            twilio: FakeTwilio::start().await,
            receiver: WebhookReceiver::start(&[SECRET]).await,
        }
    }

    /// Publishes a form of `organisation` whose version 1 texts the collector and posts to the
    /// receiver.
    async fn form(&self, organisation: &str) -> Form {
        let mut form = test_form(&format!("form-{}", unique()));
        form.organisation = organisation.to_owned();
        let version = &mut form.versions[0];
        version.title = "Household survey".to_owned();
        version.notify = Notify {
            sms_collector: true,
            webhook_url: Some(self.receiver.url()),
        };
        self.forms.form(&form).await;
        form
    }

    /// Publishes flags (key = form id, `response_id` header), as validate does.
    async fn flags(&self, flags: &[ResponseFlag]) {
        let items: Vec<_> = flags.iter().map(|flag| (None, flag.clone())).collect();
        self.forms.flags(&items).await;
    }

    async fn open_ledger(&self) -> Ledger {
        Ledger::open(
            &self.topics.kafka(),
            &self.ledger,
            NAME,
            std::future::pending(),
        )
        .await
        .expect("opening the ledger")
        .expect("not shut down")
    }

    /// A fresh processor instance (its ledger rebuilt from the topic), on Twilio's fake, with a
    /// secret for `acme` only.
    async fn processor(&self) -> NotifyCollectors {
        let twilio = TwilioClient::new(self.twilio.config()).expect("a Twilio client");
        NotifyCollectors::new(
            SmsSender::Twilio(twilio),
            // The receiver listens on 127.0.0.1: loopback is allowed, as in development.
            WebhookSender::new(Duration::from_secs(5), Destinations::PublicAndLoopback)
                .expect("a webhook sender"),
            WebhookSecrets::parse(&format!("acme = \"{SECRET}\""), "the test secrets")
                .expect("secrets"),
            self.open_ledger().await,
            BASE_URL.to_owned(),
        )
    }

    async fn run(&self, extra: &[&str]) -> RunningRuntime {
        spawn_runtime(self.processor().await, self.topics.config(extra)).await
    }

    async fn wait_done(&self) {
        wait_finished(&self.flags_view).await;
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

/// Waits until the group of `topics` has committed the end of every partition of its "responses"
/// topic that has records (flags of one form all land in one partition).
async fn wait_finished(topics: &RuntimeTopics) {
    wait_committed_to_nonempty_ends(topics, DEADLINE).await;
}

fn flag(form: &Form, phone: &str, revision: i32, status: FlagStatus) -> ResponseFlag {
    ResponseFlag {
        revision,
        ..test_flag(form, status, Some(phone))
    }
}

#[tokio::test]
async fn a_flagged_response_is_told_once_a_clean_one_never_and_redelivery_adds_nothing() {
    let setup = Setup::new().await;
    let form = setup.form("acme").await;
    let flagged = flag(&form, "+919876543210", 0, FlagStatus::Flagged);
    let clean = flag(&form, "+919876500000", 0, FlagStatus::Clean);
    setup.flags(&[flagged.clone(), clean.clone()]).await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    // One SMS, to the collector, saying which response, which rules and how to correct it.
    let texts = setup.twilio.messages_to("+919876543210");
    assert_eq!(texts.len(), 1, "{texts:#?}");
    let body = &texts[0].body;
    for part in [
        flagged.response_id.as_str(),
        "\"Household survey\", rev 0",
        "Savings cannot exceed income.; Check the age.",
        &format!(
            "PUT {BASE_URL}/v1/forms/{}/responses/{} with \"revision\": 1",
            form.id, flagged.response_id
        ),
        &reference(&flagged),
    ] {
        assert!(body.contains(part), "{part:?} not in {body:?}");
    }
    assert!(body.chars().count() <= 320, "{body}");
    // The clean response: no SMS, no webhook.
    assert!(setup.twilio.messages_to("+919876500000").is_empty());

    // One webhook, verified by the receiver, with the stable id and the standard envelope.
    let deliveries = setup.receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    let delivery = &deliveries[0];
    assert!(delivery.verified, "{delivery:#?}");
    assert_eq!(
        delivery.id.as_deref(),
        Some(format!("flag_{}_0", flagged.response_id).as_str())
    );
    assert_eq!(delivery.body["type"], "response.flagged");
    let data = &delivery.body["data"];
    assert_eq!(data["response_id"], flagged.response_id.as_str());
    assert_eq!(data["form_title"], "Household survey");
    assert_eq!(data["violations"][0]["rule_id"], "savings_le_income");
    assert_eq!(data["correction"]["revision"], 1);

    // Redelivery: a fresh group (everything again) on a fresh instance whose ledger is rebuilt
    // from Kafka. Nothing new is sent.
    let fresh_group = format!("{}-again", setup.topics.group);
    let runtime = setup.run(&["--group-id", &fresh_group]).await;
    let again = RuntimeTopics {
        group: fresh_group.clone(),
        ..setup.flags_view.clone()
    };
    wait_finished(&again).await;
    runtime.stop().await.expect("a clean stop");
    assert_eq!(setup.twilio.messages().len(), 1);
    assert_eq!(setup.receiver.deliveries().len(), 1);
    setup.delete().await;
}

#[tokio::test]
async fn an_ambiguous_twilio_failure_is_reconciled_into_exactly_one_sms() {
    let setup = Setup::new().await;
    let form = setup.form("acme").await;
    let flagged = flag(&form, "+14155550101", 3, FlagStatus::Flagged);
    // The message is created, then Twilio answers 500: the outcome is unknown to the processor.
    setup.twilio.fail_next(1, Fault::FailAfterCreate(500));
    setup.flags(std::slice::from_ref(&flagged)).await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    let texts = setup.twilio.messages_to("+14155550101");
    assert_eq!(texts.len(), 1, "reconciled, not re-sent: {texts:#?}");
    assert!(texts[0].body.contains(&reference(&flagged)));
    // The retry looked for the message (a GET of the list) instead of creating another.
    assert_eq!(setup.twilio.requests_of("POST"), 1);
    assert!(setup.twilio.requests_of("GET") >= 1);
    // And the ledger knows the sid of the message that was found.
    let ledger = setup.open_ledger().await;
    let key = format!("acme/{}/{}:3:sms", flagged.form_id, flagged.response_id);
    assert!(
        matches!(ledger.get(&key), Some(Entry::Done { ref detail, .. }) if *detail == texts[0].sid),
        "{:?}",
        ledger.get(&key)
    );
    assert_eq!(setup.receiver.deliveries().len(), 1);
    setup.delete().await;
}

#[tokio::test]
async fn rate_limits_and_an_outage_pause_and_lose_nothing() {
    let setup = Setup::new().await;
    let form = setup.form("acme").await;
    let phones: Vec<String> = (0..6).map(|i| format!("+1415555020{i}")).collect();
    let flags: Vec<ResponseFlag> = phones
        .iter()
        .map(|phone| flag(&form, phone, 0, FlagStatus::Flagged))
        .collect();
    setup.twilio.set_down(true);
    setup.flags(&flags).await;

    let runtime = setup.run(&["--circuit-threshold", "3"]).await;
    // Twilio answers 503 to everything: the organisation's circuit of the Twilio account opens,
    // and its records wait (no partition pauses for them).
    runtime
        .wait_for_target_circuits("twilio", 1.0, DEADLINE, "the circuit opens")
        .await;
    // It comes back rate limiting for a moment: 429s are retried too.
    setup
        .twilio
        .fail_next(3, Fault::RateLimit { retry_after: None });
    setup.twilio.set_down(false);
    setup.wait_done().await;
    // Every record went through: the circuit closed, nothing waits.
    runtime
        .wait_for_target_circuits("twilio", 0.0, DEADLINE, "the circuit closes")
        .await;
    runtime.stop().await.expect("a clean stop");

    let counts = setup.twilio.counts_by_recipient();
    for phone in &phones {
        assert_eq!(counts.get(phone), Some(&1), "{phone}: {counts:?}");
    }
    assert_eq!(setup.receiver.deliveries().len(), flags.len());
    let dlq = read_topic(
        &setup.topics.bootstrap,
        &setup.topics.dlq,
        0,
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_default();
    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:#?}");
    setup.delete().await;
}

#[tokio::test]
async fn a_missing_webhook_secret_dead_letters_the_record_and_still_texts_once() {
    let setup = Setup::new().await;
    // globex has a webhook_url but no secret in the processor's secrets file.
    let form = setup.form("globex").await;
    let flagged = flag(&form, "+14155550300", 0, FlagStatus::Flagged);
    setup.flags(std::slice::from_ref(&flagged)).await;

    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    runtime.stop().await.expect("a clean stop");

    let letters = read_topic(&setup.topics.bootstrap, &setup.topics.dlq, 1, DEADLINE)
        .await
        .expect("reading the dead-letter topic");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(
        letter.headers.get(headers::ERROR_KIND).map(String::as_str),
        Some("permanent")
    );
    let message = &letter.headers[headers::ERROR_MESSAGE];
    assert!(
        message.contains("no webhook signing secret")
            && message.contains("\"globex\"")
            && message.contains("never sent unsigned"),
        "{message}"
    );
    assert!(!message.contains(SECRET));
    // Nothing unsigned went out; the SMS went, once.
    assert!(setup.receiver.deliveries().is_empty());
    assert_eq!(setup.twilio.messages_to("+14155550300").len(), 1);
    setup.delete().await;
}

#[tokio::test]
async fn what_one_ledger_records_another_sees_after_sync() {
    let setup = Setup::new().await;
    let writer = setup.open_ledger().await;
    let reader = setup.open_ledger().await;
    let key = format!("{}:0:sms", unique());
    assert_eq!(reader.get(&key), None);

    writer
        .record(&key, Entry::attempted("FSABCDEF0123R0"))
        .await
        .expect("recorded");
    assert!(matches!(writer.get(&key), Some(Entry::Attempted { .. })));
    writer
        .record(&key, Entry::done("SM123"))
        .await
        .expect("recorded");
    reader.sync_key(&key).await.expect("synced");
    assert!(
        matches!(reader.get(&key), Some(Entry::Done { ref detail, .. }) if detail == "SM123"),
        "{:?}",
        reader.get(&key)
    );
    reader.sync().await.expect("synced");

    // A third instance loads it at start-up, and a late Attempted never undoes Done.
    let late = setup.open_ledger().await;
    assert!(late.get(&key).is_some_and(|e| e.is_done()));
    late.record(&key, Entry::attempted("FSABCDEF0123R0"))
        .await
        .expect("recorded");
    assert!(late.get(&key).is_some_and(|e| e.is_done()));
    setup.delete().await;
}

#[tokio::test]
async fn a_redriven_flag_whose_collector_was_told_tells_nothing_more() {
    let setup = Setup::new().await;
    let form = setup.form("acme").await;
    let flagged = flag(&form, "+919876543210", 0, FlagStatus::Flagged);
    setup.flags(std::slice::from_ref(&flagged)).await;
    let runtime = setup.run(&[]).await;
    setup.wait_done().await;
    assert_eq!(setup.twilio.messages().len(), 1);
    assert_eq!(setup.receiver.deliveries().len(), 1);

    // Dead-lettered after all, then re-driven: the ledger says both were done.
    let on_topic = read_topic(&setup.topics.bootstrap, &setup.topics.flags, 1, DEADLINE)
        .await
        .expect("reading the flag");
    formstream_tests::runtime::dead_letter_and_redrive(
        &setup.topics,
        NAME,
        &setup.topics.flags,
        on_topic[0].partition,
        on_topic[0].offset,
    )
    .await;
    runtime.stop().await.expect("a clean stop");
    assert_eq!(setup.twilio.messages().len(), 1);
    assert_eq!(setup.twilio.requests_of("POST"), 1);
    assert_eq!(setup.receiver.deliveries().len(), 1);
    setup.delete().await;
}
