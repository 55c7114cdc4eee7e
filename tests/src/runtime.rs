//! Helpers for the processor runtime's end-to-end tests (docs/design.md, promises 2 to 6):
//! fresh topics and groups, a producer of Avro responses (and of garbage), an in-process test
//! processor whose behaviour the test programs (transient failures, permanent failures, a target
//! that goes down, latency) and that records every call, the runtime spawned in-process with a
//! `/metrics` endpoint on port 0, and readers of committed offsets, partition ends and group state.
//!
//! Invariant: every test gets its own topics, group and dead-letter topic (random names), so tests
//! run in parallel and can be rerun on the same broker. Nothing here sleeps for a fixed time to
//! wait for something: waits poll a condition until a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use formstream_core::config::KafkaArgs;
use formstream_core::identity::{FormKey, ORGANISATION_HEADER};
use formstream_core::topics::{TopicSpec, ensure_topics};
use formstream_runtime::redrive::{DeadLetterAdmin, RedriveTopics};
use formstream_runtime::{Failure, Processor, Record, RuntimeConfig, Target, TargetRef, Targets};
use formstream_schemas::fixtures;
use formstream_schemas::{
    Codec, FlagStatus, Form, FormVersion, Question, QuestionType, Response, ResponseFlag, Violation,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{bootstrap, delete_topics, unique};

/// The test processor's name (and so the `processor` label of its metrics).
pub const PROCESSOR: &str = "runtime-test";

/// Timings small enough for tests; each can be overridden by a test's extra flags.
pub const FAST_FLAGS: &[&str] = &[
    "--retry-base",
    "10ms",
    "--retry-max-delay",
    "200ms",
    "--probe-base",
    "100ms",
    "--probe-max",
    "500ms",
    "--commit-interval",
    "200ms",
    // The broker's group.min.session.timeout.ms is 6 s.
    "--session-timeout",
    "6s",
    "--drain-timeout",
    "3s",
    "--form-wait",
    "30s",
    "--metrics-listen",
    "127.0.0.1:0",
];

/// The topics, group and dead-letter topic of one test.
#[derive(Debug, Clone)]
pub struct RuntimeTopics {
    pub bootstrap: String,
    pub forms: String,
    pub responses: String,
    pub flags: String,
    pub dlq: String,
    pub group: String,
    pub partitions: i32,
}

impl RuntimeTopics {
    /// Creates fresh forms (compacted) and responses topics (`partitions` partitions); the
    /// runtime creates the dead-letter topic itself.
    pub async fn create(partitions: i32) -> Self {
        Self::create_on(&bootstrap(), partitions).await
    }

    /// [`Self::create`] on the broker at `bootstrap` (a test's own instance).
    pub async fn create_on(bootstrap: &str, partitions: i32) -> Self {
        let id = unique();
        let topics = RuntimeTopics {
            bootstrap: bootstrap.to_owned(),
            forms: format!("test-{id}-forms"),
            responses: format!("test-{id}-responses"),
            flags: format!("test-{id}-flags"),
            dlq: format!("test-{id}-dlq"),
            group: format!("test-{id}-group"),
            partitions,
        };
        let specs = [
            TopicSpec {
                name: topics.forms.clone(),
                partitions: 1,
                replication_factor: 1,
                config: vec![("cleanup.policy", "compact".to_owned())],
            },
            TopicSpec {
                name: topics.responses.clone(),
                partitions,
                replication_factor: 1,
                config: vec![],
            },
        ];
        ensure_topics(&topics.kafka(), &specs, Duration::from_secs(30))
            .await
            .expect("creating the test topics");
        topics
    }

    pub fn kafka(&self) -> KafkaArgs {
        KafkaArgs {
            bootstrap: self.bootstrap.clone(),
            properties: Vec::new(),
        }
    }

    /// The runtime flags naming this test's broker, topics, group and dead-letter topic, followed
    /// by [`FAST_FLAGS`].
    pub fn runtime_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--kafka-bootstrap",
            &self.bootstrap,
            "--forms-topic",
            &self.forms,
            "--responses-topic",
            &self.responses,
            "--flags-topic",
            &self.flags,
            "--group-id",
            &self.group,
            "--dlq-topic",
            &self.dlq,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(FAST_FLAGS.iter().map(|s| (*s).to_owned()));
        args
    }

    /// The runtime's configuration for this test: [`Self::runtime_args`] then `extra` (later
    /// flags override earlier ones).
    pub fn config(&self, extra: &[&str]) -> RuntimeConfig {
        let mut args = vec!["runtime".to_owned()];
        args.extend(self.runtime_args());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        RuntimeArgs::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("runtime arguments {args:?} do not parse: {e}"))
            .config
    }

    /// The dead-letter admin of this test's dead-letter topic (as the processor `name`).
    pub fn dead_letters(&self, name: &str) -> DeadLetterAdmin {
        DeadLetterAdmin::new(self.kafka(), Codec::single_object(), name, &self.dlq)
    }

    /// Creates the flags topic (3 partitions), which validate writes to and notify-collectors reads.
    pub async fn create_flags_topic(&self) {
        self.create_topic(&self.flags).await;
    }

    /// Creates the topic `<responses>-<suffix>` (3 partitions) for a processor's outputs, and
    /// gives its name; the test deletes it.
    pub async fn create_output_topic(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.responses);
        self.create_topic(&name).await;
        name
    }

    /// Creates `name` with 3 partitions on this test's broker.
    async fn create_topic(&self, name: &str) {
        let spec = TopicSpec {
            name: name.to_owned(),
            partitions: 3,
            replication_factor: 1,
            config: vec![],
        };
        ensure_topics(&self.kafka(), &[spec], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
    }

    /// Deletes this test's topics (the runtime's re-drive topics too), best effort.
    pub async fn delete(&self) {
        let redrive = RedriveTopics::of(&self.dlq);
        delete_topics(
            &self.bootstrap,
            &[
                &self.forms,
                &self.responses,
                &self.flags,
                &self.dlq,
                &redrive.redrive,
                &redrive.state,
            ],
        )
        .await;
    }
}

/// clap wrapper, so that the runtime's defaults stay in one place: its `RuntimeConfig`.
#[derive(Parser)]
#[command(args_override_self = true)]
struct RuntimeArgs {
    #[command(flatten)]
    config: RuntimeConfig,
}

/// A form of acme with one version (1) and one text question, made now.
pub fn test_form(id: &str) -> Form {
    let now = now_ms();
    let version = FormVersion {
        title: "Runtime test form".to_owned(),
        created_at: now,
        ..fixtures::version(
            1,
            vec![Question {
                text: "Your name".to_owned(),
                ..fixtures::question("name", QuestionType::Text)
            }],
        )
    };
    Form {
        created_at: now,
        ..fixtures::form("acme", id, vec![version])
    }
}

/// Revision `revision` of response `response_id` of acme to version 1 of `form_id`, submitted now.
pub fn test_response(form_id: &str, response_id: &str, revision: i32) -> Response {
    let now = now_ms();
    Response {
        revision,
        submitted_at: now,
        received_at: now,
        ..fixtures::response(
            form_id,
            response_id,
            vec![fixtures::text_answer("name", &format!("answer {revision}"))],
        )
    }
}

/// A flag of a new response to version 1 of `form`, revision 0, as validate publishes it: two
/// violations when `status` is flagged; the collector's phone `phone`.
pub fn test_flag(form: &Form, status: FlagStatus, phone: Option<&str>) -> ResponseFlag {
    let violations = match status {
        FlagStatus::Clean => Vec::new(),
        FlagStatus::Flagged => vec![
            Violation {
                rule_id: "savings_le_income".to_owned(),
                message: "Savings cannot exceed income.".to_owned(),
                question_keys: vec!["monthly_savings".to_owned(), "monthly_income".to_owned()],
                error: None,
            },
            Violation {
                rule_id: "age".to_owned(),
                message: "Check the age.".to_owned(),
                question_keys: vec!["age".to_owned()],
                error: None,
            },
        ],
    };
    ResponseFlag {
        response_id: uuid::Uuid::new_v4().to_string(),
        form_id: form.id.clone(),
        form_version: 1,
        organisation: form.organisation.clone(),
        revision: 0,
        collector_id: "collector-17".to_owned(),
        collector_phone: phone.map(str::to_owned),
        status,
        violations,
        evaluated_at: now_ms(),
    }
}

pub use formstream_core::time::now_millis as now_ms;

/// Where a produced record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub response_id: String,
    pub revision: i32,
    pub partition: i32,
    pub offset: i64,
}

/// Writes forms and responses (Avro single-object encoding, as the gateway does) and raw bytes.
#[derive(Clone)]
pub struct TestProducer {
    producer: FutureProducer,
    topics: RuntimeTopics,
    codec: Codec,
}

impl TestProducer {
    pub fn new(topics: &RuntimeTopics) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &topics.bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("creating the test producer");
        TestProducer {
            producer,
            topics: topics.clone(),
            codec: Codec::single_object(),
        }
    }

    /// Publishes `form` to the forms topic (key `<organisation>/<form id>`, as the gateway does).
    pub async fn form(&self, form: &Form) {
        let payload = self
            .codec
            .encoder::<Form>(&self.topics.forms)
            .await
            .expect("a forms encoder")
            .encode(form)
            .expect("encoding a form");
        self.producer
            .send(
                FutureRecord::to(&self.topics.forms)
                    .key(&FormKey::of(form).to_string())
                    .payload(&payload),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("publishing a form");
    }

    /// Publishes each (partition, response) to the responses topic: key = form id, headers
    /// `response_id`, `revision` and `organisation`, as the gateway writes them. Records of one partition land in
    /// the order given. Returns where each landed, in the order given.
    pub async fn responses(&self, items: &[(i32, Response)]) -> Vec<Produced> {
        let encoder = self
            .codec
            .encoder::<Response>(&self.topics.responses)
            .await
            .expect("a responses encoder");
        let mut produced = Vec::with_capacity(items.len());
        for chunk in items.chunks(5_000) {
            let mut deliveries = Vec::with_capacity(chunk.len());
            for (partition, response) in chunk {
                let payload = encoder.encode(response).expect("encoding a response");
                let revision = response.revision.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "response_id",
                        value: Some(response.response_id.as_bytes()),
                    })
                    .insert(Header {
                        key: "revision",
                        value: Some(revision.as_bytes()),
                    })
                    .insert(Header {
                        key: ORGANISATION_HEADER,
                        value: Some(response.organisation.as_bytes()),
                    });
                let mut record = FutureRecord::to(&self.topics.responses)
                    .partition(*partition)
                    .key(&response.form_id)
                    .payload(&payload)
                    .headers(headers);
                // Enqueue in order (idempotence keeps the order per partition); await later.
                let delivery = loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err((error, _)) => panic!("publishing a response: {error}"),
                    }
                };
                deliveries.push(delivery);
            }
            let results = futures::future::join_all(deliveries).await;
            for ((_, response), result) in chunk.iter().zip(results) {
                let delivery = result
                    .expect("the producer is alive")
                    .map_err(|(e, _)| e)
                    .expect("publishing a response");
                produced.push(Produced {
                    response_id: response.response_id.clone(),
                    revision: response.revision,
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
            }
        }
        produced
    }

    /// Publishes each (partition, flag) to the flags topic (key = form id, headers
    /// `response_id` and `organisation`, as validate writes them), in order; a flag without a partition goes where
    /// its key does. Returns where each landed.
    pub async fn flags(&self, items: &[(Option<i32>, ResponseFlag)]) -> Vec<(i32, i64)> {
        let encoder = self
            .codec
            .encoder::<ResponseFlag>(&self.topics.flags)
            .await
            .expect("a flags encoder");
        let mut landed = Vec::with_capacity(items.len());
        for (partition, flag) in items {
            let payload = encoder.encode(flag).expect("encoding a flag");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "response_id",
                    value: Some(flag.response_id.as_bytes()),
                })
                .insert(Header {
                    key: ORGANISATION_HEADER,
                    value: Some(flag.organisation.as_bytes()),
                });
            let mut record = FutureRecord::to(&self.topics.flags)
                .key(&flag.form_id)
                .payload(&payload)
                .headers(headers);
            if let Some(partition) = partition {
                record = record.partition(*partition);
            }
            let delivery = self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
                .map_err(|(e, _)| e)
                .expect("publishing a flag");
            landed.push((delivery.partition, delivery.offset));
        }
        landed
    }

    /// Publishes raw bytes (or no value at all) to a partition of the responses topic.
    pub async fn raw(
        &self,
        partition: i32,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topics.responses)
            .partition(partition)
            .key(key)
            .headers(owned);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let delivery = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| e)
            .expect("publishing a raw record");
        (delivery.partition, delivery.offset)
    }
}

/// What one call of the test processor's effect ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Retriable,
    Forbidden,
    Permanent,
}

/// One call of the test processor's effect.
#[derive(Debug, Clone)]
pub struct Call {
    pub response_id: String,
    pub organisation: String,
    pub revision: i32,
    /// The topic the record was consumed from (the responses topic, or the re-drive topic).
    pub topic: String,
    /// Its `formstream.redrive.count` header (a re-driven copy's).
    pub redrive_count: Option<u32>,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// How the test processor behaves; tests change it while the runtime runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Every record fails retriably on its first `fail_attempts` attempts.
    pub fail_attempts: AtomicU32,
    /// Response ids whose effect fails permanently.
    pub permanent: Mutex<HashSet<String>>,
    /// Response ids whose effect always fails retriably.
    pub always_retriable: Mutex<HashSet<String>>,
    /// Response ids whose effect panics (a bug in a processor).
    pub panics: Mutex<HashSet<String>>,
    /// While set, every effect fails retriably and the probe fails: the target is down.
    pub target_down: AtomicBool,
    /// Latency of each effect, in milliseconds.
    pub latency_ms: AtomicU64,
    /// While set, the probe answers even when the target is down: a flapping target, which
    /// closes the circuit half-way again and again while every effect still fails.
    pub probe_answers_while_down: AtomicBool,
    /// While set, each record writes to a target of its own organisation ([`TARGET_KIND`], one
    /// per organisation): failures open that organisation's circuit only.
    pub targets_per_organisation: AtomicBool,
    /// Organisations whose target is down: their effects fail retriably, naming the target,
    /// and its probe fails.
    pub down_organisations: Mutex<HashSet<String>>,
    /// Organisations whose target refuses access (a 403): their effects fail as forbidden,
    /// naming the target, and its probe fails.
    pub refusing_organisations: Mutex<HashSet<String>>,
}

/// The kind of the test processor's targets (see [`Behaviour::targets_per_organisation`]).
pub const TARGET_KIND: &str = "endpoint";

/// What the test processor saw. Shared between the processor (inside the runtime) and the test.
#[derive(Debug, Default)]
pub struct ProcessorState {
    pub behaviour: Behaviour,
    /// Every call, in the order the calls ended.
    calls: Mutex<Vec<Call>>,
    /// Offsets whose call started, per partition (ended or not).
    started: Mutex<BTreeMap<i32, BTreeSet<i64>>>,
    /// Responses (`<organisation>/<response id>`) whose effect is running now.
    running: Mutex<HashSet<String>>,
    /// The most effects that ever ran at once.
    peak_running: AtomicUsize,
    /// Calls that started while another call of the same response (organisation and response id)
    /// was running: each one is a per-key ordering violation.
    overlaps: Mutex<Vec<Call>>,
    pub probes: AtomicU64,
    /// Probes of a target (one per organisation, see [`Behaviour::targets_per_organisation`]),
    /// by organisation.
    target_probes: Mutex<BTreeMap<String, u64>>,
}

impl ProcessorState {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// The successful calls, in the order they ended.
    pub fn effects(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.outcome == Outcome::Ok)
            .collect()
    }

    pub fn effect_count(&self) -> usize {
        self.calls
            .lock()
            .expect("calls lock")
            .iter()
            .filter(|c| c.outcome == Outcome::Ok)
            .count()
    }

    /// Offsets whose call started (whether it ended or not), per partition.
    pub fn started_offsets(&self) -> BTreeMap<i32, BTreeSet<i64>> {
        self.started.lock().expect("started lock").clone()
    }

    /// Offsets whose effect succeeded, per partition.
    pub fn effected_offsets(&self) -> BTreeMap<i32, BTreeSet<i64>> {
        let mut offsets: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for call in self.effects() {
            offsets
                .entry(call.partition)
                .or_default()
                .insert(call.offset);
        }
        offsets
    }

    /// The most effects that ever ran at once (`--max-in-flight` bounds it).
    pub fn peak_running(&self) -> usize {
        self.peak_running.load(Ordering::SeqCst)
    }

    pub fn overlaps(&self) -> Vec<Call> {
        self.overlaps.lock().expect("overlaps lock").clone()
    }

    pub fn set_target_down(&self, down: bool) {
        self.behaviour.target_down.store(down, Ordering::SeqCst);
    }

    /// Takes `organisation`'s target down (or back up).
    pub fn set_organisation_down(&self, organisation: &str, down: bool) {
        set_member(&self.behaviour.down_organisations, organisation, down);
    }

    /// Makes `organisation`'s target refuse access (or stop refusing).
    pub fn set_organisation_refusing(&self, organisation: &str, refusing: bool) {
        set_member(
            &self.behaviour.refusing_organisations,
            organisation,
            refusing,
        );
    }

    /// Probes of `organisation`'s target so far.
    pub fn target_probes(&self, organisation: &str) -> u64 {
        self.target_probes
            .lock()
            .expect("probes lock")
            .get(organisation)
            .copied()
            .unwrap_or(0)
    }
}

fn set_member(set: &Mutex<HashSet<String>>, member: &str, present: bool) {
    let mut set = set.lock().expect("lock");
    if present {
        set.insert(member.to_owned());
    } else {
        set.remove(member);
    }
}

/// The in-process test processor; clones share their state.
#[derive(Clone, Default)]
pub struct TestProcessor {
    pub state: Arc<ProcessorState>,
}

impl TestProcessor {
    pub fn new() -> Self {
        TestProcessor::default()
    }
}

impl Processor for TestProcessor {
    type Value = Response;

    fn name(&self) -> &str {
        PROCESSOR
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        let state = &self.state;
        state
            .started
            .lock()
            .expect("started lock")
            .entry(record.partition)
            .or_default()
            .insert(record.offset);
        let id = record.value.response_id.clone();
        if state.behaviour.panics.lock().expect("lock").contains(&id) {
            panic!("the test processor panics on response {id}, as the test asked");
        }
        let mut call = Call {
            response_id: id.clone(),
            organisation: record.value.organisation.clone(),
            revision: record.value.revision,
            topic: record.topic.to_owned(),
            redrive_count: record
                .header(formstream_runtime::dlq::headers::REDRIVE_COUNT)
                .and_then(|count| std::str::from_utf8(count).ok()?.parse().ok()),
            partition: record.partition,
            offset: record.offset,
            attempt: record.attempt,
            outcome: Outcome::Ok,
        };
        // One response is (organisation, response id): another organisation's reuse of the id
        // may run beside it.
        let running_key = format!("{}/{id}", record.value.organisation);
        {
            let mut running = state.running.lock().expect("running lock");
            if !running.insert(running_key.clone()) {
                state
                    .overlaps
                    .lock()
                    .expect("overlaps lock")
                    .push(call.clone());
            }
            state
                .peak_running
                .fetch_max(running.len(), Ordering::SeqCst);
        }
        let latency = state.behaviour.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let behaviour = &state.behaviour;
        let organisation = &record.value.organisation;
        let result = if behaviour.targets_per_organisation.load(Ordering::SeqCst)
            && behaviour
                .down_organisations
                .lock()
                .expect("lock")
                .contains(organisation)
        {
            Err(
                Failure::retriable(anyhow::anyhow!("{organisation}'s target is down"))
                    .at(TARGET_KIND),
            )
        } else if behaviour.targets_per_organisation.load(Ordering::SeqCst)
            && behaviour
                .refusing_organisations
                .lock()
                .expect("lock")
                .contains(organisation)
        {
            Err(Failure::forbidden(anyhow::anyhow!(
                "{organisation}'s target answered 403 Forbidden"
            ))
            .at(TARGET_KIND))
        } else if behaviour.target_down.load(Ordering::SeqCst) {
            Err(Failure::retriable(anyhow::anyhow!("target is down")))
        } else if behaviour.permanent.lock().expect("lock").contains(&id) {
            Err(Failure::permanent(anyhow::anyhow!(
                "response {id} is rejected for good"
            )))
        } else if behaviour
            .always_retriable
            .lock()
            .expect("lock")
            .contains(&id)
        {
            Err(Failure::retriable(anyhow::anyhow!(
                "response {id} keeps failing"
            )))
        } else if record.attempt <= behaviour.fail_attempts.load(Ordering::SeqCst) {
            Err(Failure::retriable(anyhow::anyhow!(
                "transient failure on attempt {}",
                record.attempt
            )))
        } else {
            Ok(())
        };
        call.outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err(Failure::Retriable { .. }) => Outcome::Retriable,
            Err(Failure::Forbidden { .. }) => Outcome::Forbidden,
            Err(Failure::Permanent(_)) => Outcome::Permanent,
        };
        // Record the call before the runtime can learn of its end (and commit past it).
        state
            .running
            .lock()
            .expect("running lock")
            .remove(&running_key);
        state.calls.lock().expect("calls lock").push(call);
        result
    }

    async fn probe(&self) -> Result<(), anyhow::Error> {
        self.state.probes.fetch_add(1, Ordering::SeqCst);
        let behaviour = &self.state.behaviour;
        if behaviour.target_down.load(Ordering::SeqCst)
            && !behaviour.probe_answers_while_down.load(Ordering::SeqCst)
        {
            anyhow::bail!("target is still down");
        }
        // Were the targets of all organisations one (a processor without targets), it would be
        // down while any organisation's is.
        if !behaviour
            .down_organisations
            .lock()
            .expect("lock")
            .is_empty()
            || !behaviour
                .refusing_organisations
                .lock()
                .expect("lock")
                .is_empty()
        {
            anyhow::bail!("an organisation's target is down");
        }
        Ok(())
    }

    fn targets<'a>(&'a self, record: &'a Record<Response>) -> Targets<'a> {
        if !self
            .state
            .behaviour
            .targets_per_organisation
            .load(Ordering::SeqCst)
        {
            return Targets::none();
        }
        Targets::one(TargetRef {
            organisation: &record.value.organisation,
            kind: TARGET_KIND,
            address: "https://endpoint.example/in",
        })
    }

    async fn probe_target(&self, target: &Target) -> Result<(), anyhow::Error> {
        let organisation = target.organisation();
        *self
            .state
            .target_probes
            .lock()
            .expect("probes lock")
            .entry(organisation.to_owned())
            .or_default() += 1;
        let behaviour = &self.state.behaviour;
        if behaviour
            .down_organisations
            .lock()
            .expect("lock")
            .contains(organisation)
            || behaviour
                .refusing_organisations
                .lock()
                .expect("lock")
                .contains(organisation)
        {
            anyhow::bail!("{organisation}'s target still fails");
        }
        Ok(())
    }
}

/// The runtime running in-process, with its /metrics on 127.0.0.1:<port>.
pub struct RunningRuntime {
    pub metrics_url: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts `formstream_runtime::run` with `processor` and `config`, and waits (with a deadline)
/// until its `/readyz` answers 200 (the forms view caught up and the consumer subscribed).
pub async fn spawn_runtime<P: Processor>(processor: P, config: RuntimeConfig) -> RunningRuntime {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the metrics port");
    let port = listener.local_addr().expect("metrics address").port();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(formstream_runtime::run(
        processor,
        config,
        Some(listener),
        async move {
            let _ = shutdown_rx.await;
        },
    ));
    let runtime = RunningRuntime {
        metrics_url: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client"),
        shutdown: Some(shutdown_tx),
        handle: Some(handle),
    };
    let started = Instant::now();
    loop {
        if runtime.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            panic!("the runtime stopped before it became ready (see its logs)");
        }
        if let Ok(response) = runtime
            .client
            .get(format!("{}/readyz", runtime.metrics_url))
            .send()
            .await
            && response.status() == reqwest::StatusCode::OK
        {
            return runtime;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the runtime was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl RunningRuntime {
    /// Waits until the circuit breaker is in `circuit` (0 closed, 1 half-open, 2 open) with
    /// `paused` partitions paused, as /metrics reports them.
    pub async fn wait_for_circuit(
        &self,
        circuit: f64,
        paused: f64,
        deadline: Duration,
        what: &str,
    ) {
        eventually(deadline, what, || async move {
            let metrics = self.metrics().await;
            metric_value(&metrics, "formstream_processor_circuit_state", &[]) == circuit
                && metric_value(&metrics, "formstream_processor_paused_partitions", &[]) == paused
        })
        .await;
    }

    /// Waits until `open` circuits of targets of `kind` are open (or half-open) with records
    /// waiting for them (none when `open` is 0), and no partition paused, as /metrics reports.
    pub async fn wait_for_target_circuits(
        &self,
        kind: &str,
        open: f64,
        deadline: Duration,
        what: &str,
    ) {
        eventually(deadline, what, || async move {
            let metrics = self.metrics().await;
            metric_value(
                &metrics,
                "formstream_processor_open_circuits",
                &[("kind", kind)],
            ) == open
                && (metric_value(&metrics, "formstream_processor_records_waiting", &[]) > 0.0)
                    == (open > 0.0)
                && metric_value(&metrics, "formstream_processor_paused_partitions", &[]) == 0.0
        })
        .await;
    }

    /// The /metrics text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body")
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when there are none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Signals shutdown and waits (at most 30 s) for `run` to return; returns its outcome.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .context("the runtime did not stop within 30 s")?
            .context("the runtime task panicked")?
    }
}

impl Drop for RunningRuntime {
    fn drop(&mut self) {
        // A failed test still stops its runtime: dropping the sender completes the shutdown.
        self.shutdown.take();
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include every
/// pair of `labels` (0 when none matches).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let pairs: HashMap<&str, &str> = series_labels
            .split("\",")
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| pairs.get(k) == Some(v))
            && let Ok(value) = value.parse::<f64>()
        {
            sum += value;
        }
    }
    sum
}

/// A consumer of the test's group that never joins it: used to read the group's commits.
fn group_client(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating a group client")
}

/// The group's committed offset of each partition of the responses topic (-1 when none was
/// committed).
pub async fn committed_offsets(topics: &RuntimeTopics) -> anyhow::Result<BTreeMap<i32, i64>> {
    committed_offsets_of(topics, &topics.responses).await
}

/// The group's committed offset of each partition of `topic` (as many partitions as the
/// responses topic: the re-drive topic is co-partitioned with it); -1 when none was committed.
pub async fn committed_offsets_of(
    topics: &RuntimeTopics,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let (bootstrap, group, topic, partitions) = (
        topics.bootstrap.clone(),
        topics.group.clone(),
        topic.to_owned(),
        topics.partitions,
    );
    tokio::task::spawn_blocking(move || {
        let consumer = group_client(&bootstrap, &group);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
            .context("reading committed offsets")?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), offset)
            })
            .collect())
    })
    .await?
}

/// Waits until the group has committed the end of every partition, and returns the commits.
pub async fn wait_committed_to_ends(
    topics: &RuntimeTopics,
    deadline: Duration,
) -> BTreeMap<i32, i64> {
    let ends = end_offsets(topics).await.expect("partition ends");
    eventually(deadline, "committed offsets reach the ends", || {
        let ends = &ends;
        async move { committed_offsets(topics).await.ok().as_ref() == Some(ends) }
    })
    .await;
    committed_offsets(topics).await.expect("committed offsets")
}

/// Waits until the group has committed the end of every partition that has records (nothing is
/// ever committed for a partition that stayed empty).
pub async fn wait_committed_to_nonempty_ends(topics: &RuntimeTopics, deadline: Duration) {
    let ends = end_offsets(topics).await.expect("partition ends");
    eventually(deadline, "committed offsets reach the ends", || {
        let ends = &ends;
        async move {
            let Ok(committed) = committed_offsets(topics).await else {
                return false;
            };
            ends.iter()
                .all(|(partition, end)| *end == 0 || committed.get(partition) == Some(end))
        }
    })
    .await;
}

/// The end (high watermark) of each partition of the responses topic.
pub async fn end_offsets(topics: &RuntimeTopics) -> anyhow::Result<BTreeMap<i32, i64>> {
    end_offsets_of(topics, &topics.responses).await
}

/// The end (high watermark) of each partition of `topic` (as many as the responses topic has).
pub async fn end_offsets_of(
    topics: &RuntimeTopics,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let (bootstrap, topic, partitions) = (
        topics.bootstrap.clone(),
        topic.to_owned(),
        topics.partitions,
    );
    tokio::task::spawn_blocking(move || {
        let consumer = group_client(&bootstrap, &format!("test-ends-{}", unique()));
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, Timeout::After(Duration::from_secs(10)))
                .context("fetching watermarks")?;
            ends.insert(partition, high);
        }
        Ok(ends)
    })
    .await?
}

/// The group's state (e.g. "Stable", "Empty") and member count, as the broker describes it.
pub async fn group_state(topics: &RuntimeTopics) -> anyhow::Result<(String, usize)> {
    let (bootstrap, group) = (topics.bootstrap.clone(), topics.group.clone());
    tokio::task::spawn_blocking(move || {
        let consumer = group_client(&bootstrap, &format!("test-describe-{}", unique()));
        let list = consumer
            .fetch_group_list(Some(&group), Timeout::After(Duration::from_secs(10)))
            .context("describing the group")?;
        let info = list
            .groups()
            .iter()
            .find(|g| g.name() == group)
            .context("the group is not listed")?;
        Ok((info.state().to_owned(), info.members().len()))
    })
    .await?
}

/// The group's members as the broker describes them: each member's client id and the partitions
/// of `topics.responses` assigned to it (empty while the group rebalances).
pub async fn group_assignment(
    topics: &RuntimeTopics,
) -> anyhow::Result<Vec<(String, BTreeSet<i32>)>> {
    let (bootstrap, group, topic) = (
        topics.bootstrap.clone(),
        topics.group.clone(),
        topics.responses.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let consumer = group_client(&bootstrap, &format!("test-describe-{}", unique()));
        let list = consumer
            .fetch_group_list(Some(&group), Timeout::After(Duration::from_secs(10)))
            .context("describing the group")?;
        let info = list
            .groups()
            .iter()
            .find(|g| g.name() == group)
            .context("the group is not listed")?;
        info.members()
            .iter()
            .map(|member| {
                let partitions = match member.assignment() {
                    Some(bytes) if !bytes.is_empty() => assigned_partitions(bytes, &topic)
                        .with_context(|| format!("member {}'s assignment", member.id()))?,
                    _ => BTreeSet::new(),
                };
                Ok((member.client_id().to_owned(), partitions))
            })
            .collect()
    })
    .await?
}

/// The partitions of `topic` in a consumer protocol assignment (Kafka's ConsumerProtocol:
/// version, then [topic, [partition]], big-endian).
fn assigned_partitions(bytes: &[u8], topic: &str) -> anyhow::Result<BTreeSet<i32>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
            anyhow::ensure!(self.0.len() >= n, "truncated assignment");
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn i16(&mut self) -> anyhow::Result<i16> {
            Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
        }
        fn i32(&mut self) -> anyhow::Result<i32> {
            Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
        }
    }
    let mut reader = Reader(bytes);
    reader.i16()?;
    let mut partitions = BTreeSet::new();
    for _ in 0..reader.i32()?.max(0) {
        let length = reader.i16()?.max(0) as usize;
        let name = String::from_utf8_lossy(reader.take(length)?).into_owned();
        for _ in 0..reader.i32()?.max(0) {
            let partition = reader.i32()?;
            if name == topic {
                partitions.insert(partition);
            }
        }
    }
    Ok(partitions)
}

/// Asserts the commit invariant: every offset below each partition's committed offset has been
/// effected (or is in `dead_lettered`). Returns the committed offsets.
pub fn assert_committed_not_ahead(
    committed: &BTreeMap<i32, i64>,
    effected: &BTreeMap<i32, BTreeSet<i64>>,
    dead_lettered: &BTreeMap<i32, BTreeSet<i64>>,
) {
    let empty = BTreeSet::new();
    for (partition, &committed) in committed {
        let done = effected.get(partition).unwrap_or(&empty);
        let dead = dead_lettered.get(partition).unwrap_or(&empty);
        let missing: Vec<i64> = (0..committed.max(0))
            .filter(|o| !done.contains(o) && !dead.contains(o))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "partition {partition}: committed offset {committed} is ahead of the effects; \
             offsets below it never effected (first 10): {missing:?}"
        );
    }
}

/// Polls `condition` until it holds, panicking with `what` at the deadline.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        crate::wait_until(deadline, condition).await,
        "not within {deadline:?}: {what}"
    );
}

/// `formstream process journal` on the test's topics, with the outage file given (present: the
/// journal fails, past its retry budget: dead letters); killed when dropped.
pub struct JournalProcess(std::process::Child);

impl JournalProcess {
    pub fn start(
        topics: &RuntimeTopics,
        journal: &std::path::Path,
        outage: &std::path::Path,
        log: &std::path::Path,
    ) -> Self {
        let log = std::fs::File::create(log).expect("creating the process log");
        let child = std::process::Command::new(formstream_binary())
            .args(["process", "journal"])
            .args(topics.runtime_args())
            .arg("--journal-path")
            .arg(journal)
            .arg("--outage-file")
            .arg(outage)
            // The outage outlasts the retry budget, and the circuit never opens: dead letters.
            .args([
                "--retry-max-attempts",
                "3",
                "--circuit-threshold",
                "1000000",
            ])
            .env("FORMSTREAM_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting formstream process journal");
        JournalProcess(child)
    }
}

impl Drop for JournalProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One line of the `journal` test processor's journal.
#[derive(Debug, Clone, Deserialize)]
pub struct JournalEntry {
    pub response_id: String,
    pub revision: i32,
    pub form_id: String,
    pub form_version: i32,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub journaled_at_ms: i64,
}

/// Reads the journal; a torn last line (the process was killed while writing it) is skipped.
pub fn read_journal(path: &std::path::Path) -> Vec<JournalEntry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Journal lines per response id.
pub fn journaled(path: &std::path::Path) -> std::collections::HashMap<String, Vec<JournalEntry>> {
    let mut by = std::collections::HashMap::<String, Vec<JournalEntry>>::new();
    for entry in read_journal(path) {
        by.entry(entry.response_id.clone()).or_default().push(entry);
    }
    by
}

/// The `formstream` binary next to the test executable (…/target/debug/formstream).
pub fn formstream_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // …/target/debug/deps/<test> → …/target/debug/formstream
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the target directory");
    let binary = dir.join(format!("formstream{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --bin formstream` first (deploy/local/test.sh does)",
        binary.display()
    );
    binary
}

/// The offset below which every offset (from 0) is in `offsets`: where a partition's contiguous
/// run of finished records ends.
pub fn contiguous_end(offsets: Option<&BTreeSet<i64>>) -> i64 {
    let mut end = 0;
    if let Some(offsets) = offsets {
        while offsets.contains(&end) {
            end += 1;
        }
    }
    end
}

/// Logs of the runtime under test, when `FORMSTREAM_TEST_LOG` is set (an EnvFilter, e.g.
/// `info,formstream_runtime=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("FORMSTREAM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// One form per partition (form `i` lives on partition `i`), published to the forms topic.
pub async fn forms_per_partition(producer: &TestProducer, partitions: i32) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..partitions {
        let id = format!("f{}", unique());
        producer.form(&test_form(&id)).await;
        ids.push(id);
    }
    ids
}

/// `count` new responses (revision 0), spread round-robin over the partitions, each with the
/// form of its partition (see [`forms_per_partition`]).
pub fn fresh_responses(forms: &[String], count: usize) -> Vec<(i32, Response)> {
    (0..count)
        .map(|i| {
            let partition = i % forms.len();
            (
                partition as i32,
                test_response(&forms[partition], &uuid::Uuid::new_v4().to_string(), 0),
            )
        })
        .collect()
}

/// Dead-letters the record at (`source`, `partition`, `offset`) as the runtime does when a
/// record's retries run out after ambiguous failures (its effect may well have happened), then
/// re-drives it as an operator would, and waits until `processor`'s group has finished the copy
/// (committed its re-drive partition to the end). For tests of "a re-driven record whose effect
/// was already done does nothing".
pub async fn dead_letter_and_redrive(
    topics: &RuntimeTopics,
    processor: &str,
    source: &str,
    partition: i32,
    offset: i64,
) {
    let (bootstrap, topic) = (topics.bootstrap.clone(), source.to_owned());
    let record = tokio::task::spawn_blocking(move || {
        let consumer = group_client(&bootstrap, &format!("test-read-{}", unique()));
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .expect("an offset");
        consumer.assign(&list).expect("assigning");
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{topic}[{partition}]@{offset} not read within 30 s"
            );
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            use rdkafka::message::{Headers, Message};
            let headers: Vec<(String, Vec<u8>)> = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            break formstream_runtime::RawRecord::new(message.key(), message.payload(), || {
                headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
            });
        }
    })
    .await
    .expect("reading the record");
    let response_id = record
        .header("response_id")
        .and_then(|id| std::str::from_utf8(id).ok())
        .expect("a response_id header")
        .to_owned();
    let letters = formstream_runtime::dlq::DeadLetters::new(
        &topics.kafka(),
        topics.dlq.clone(),
        processor.to_owned(),
    )
    .expect("a dead-letter producer");
    let now = now_ms();
    letters
        .send(
            &formstream_runtime::dlq::Letter {
                source_topic: source.to_owned(),
                partition,
                offset,
                record,
                kind: formstream_runtime::dlq::Kind::RetriesExhausted,
                message: "timed out (the test's ambiguous failure)".to_owned(),
                attempts: 3,
                first_attempt_ms: now,
                last_attempt_ms: now,
            },
            Duration::from_secs(30),
        )
        .await
        .expect("dead-lettering");

    let admin = topics.dead_letters(processor);
    let filter = formstream_runtime::redrive::Filter {
        response_id: Some(response_id),
        ..Default::default()
    };
    let outcome = admin
        .redrive(
            &formstream_runtime::redrive::Scope::Everything,
            &formstream_runtime::redrive::Selection::Matching(filter),
            "test",
        )
        .await
        .expect("re-driving");
    assert_eq!(outcome.done.len(), 1, "{outcome:?}");

    let redrive = RedriveTopics::of(&topics.dlq).redrive;
    let ends = end_offsets_of(topics, &redrive).await.expect("ends");
    assert!(ends.get(&partition).is_some_and(|end| *end > 0), "{ends:?}");
    eventually(Duration::from_secs(60), "the copy finished", || {
        let (ends, redrive) = (&ends, &redrive);
        async move {
            committed_offsets_of(topics, redrive)
                .await
                .is_ok_and(|c| c.get(&partition) == ends.get(&partition))
        }
    })
    .await;
}

/// The runtime topics of a processor over `gateway`'s topics: a fresh group and dead-letter topic.
pub fn processor_topics(gateway: &crate::TestGateway) -> RuntimeTopics {
    let id = unique();
    RuntimeTopics {
        bootstrap: gateway.bootstrap.clone(),
        forms: gateway.topics.forms.clone(),
        responses: gateway.topics.responses.clone(),
        flags: gateway.topics.flags.clone(),
        dlq: format!("test-{id}-dlq"),
        group: format!("test-{id}-group"),
        partitions: gateway.config.topic_settings.responses_partitions,
    }
}
