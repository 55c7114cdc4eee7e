//! The contract between a processor and the runtime: a processor says what its effect is for one
//! record (or a batch), and whether a failure is worth retrying; the runtime does everything else.
//!
//! Invariant: a record's effect is reported done (`Ok`) only when it has really happened; the
//! runtime commits an offset only after every record below it is done or dead-lettered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use formstream_core::forms::FormsView;
use formstream_schemas::{AvroRecord, Form, FormVersion, Response, ResponseFlag};

pub use crate::raw::{Headers, RawRecord};
pub use crate::targets::{Target, TargetRef, Targets};

/// What went wrong with one record, and what the runtime should do about it.
#[derive(Debug)]
pub enum Failure {
    /// Worth trying again later (a timeout, a 429, a 5xx, a dependency that is down). The runtime
    /// retries with exponential backoff and full jitter, waiting at least `retry_after` when the
    /// target said so, until the retry budget is spent; then the record is dead-lettered.
    /// Consecutive retriable failures open the circuit breaker of the target they name (see
    /// [`Failure::at`]), or the processor's one circuit, which pauses every partition.
    Retriable {
        error: anyhow::Error,
        retry_after: Option<Duration>,
        /// The kind of the record's target that failed ([`Processor::targets`]); `None`: the
        /// failure is the processor's own (its ledger, its disk), not one target's.
        target: Option<&'static str>,
    },
    /// The target refuses access (a spreadsheet not shared with the exporter: a 403). Retried
    /// like a retriable failure while an operator can fix it; once the target has refused for
    /// longer than `--forbidden-timeout`, the record is dead-lettered (kind `forbidden`) with the
    /// reason.
    Forbidden {
        error: anyhow::Error,
        /// As for [`Failure::Retriable`].
        target: Option<&'static str>,
    },
    /// Will never succeed (invalid input, a rejected request): dead-lettered at once.
    Permanent(anyhow::Error),
}

impl Failure {
    pub fn retriable(error: impl Into<anyhow::Error>) -> Self {
        Failure::Retriable {
            error: error.into(),
            retry_after: None,
            target: None,
        }
    }

    pub fn retry_after(error: impl Into<anyhow::Error>, after: Duration) -> Self {
        Failure::Retriable {
            error: error.into(),
            retry_after: Some(after),
            target: None,
        }
    }

    pub fn forbidden(error: impl Into<anyhow::Error>) -> Self {
        Failure::Forbidden {
            error: error.into(),
            target: None,
        }
    }

    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        Failure::Permanent(error.into())
    }

    /// Says which of the record's targets failed, by its kind (see [`TargetRef::kind`]): the
    /// failure then counts against that target's circuit only. A permanent failure says nothing
    /// about a target's health and is left as it is.
    pub fn at(mut self, kind: &'static str) -> Self {
        match &mut self {
            Failure::Retriable { target, .. } | Failure::Forbidden { target, .. } => {
                *target = Some(kind);
            }
            Failure::Permanent(_) => {}
        }
        self
    }

    /// The kind of target the failure names, if any (see [`Failure::at`]).
    pub fn target(&self) -> Option<&'static str> {
        match self {
            Failure::Retriable { target, .. } | Failure::Forbidden { target, .. } => *target,
            Failure::Permanent(_) => None,
        }
    }

    /// Whether the record will be tried again (a retriable failure, or a refusal of access
    /// within `--forbidden-timeout`).
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Failure::Permanent(_))
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Retriable { error, .. }
            | Failure::Forbidden { error, .. }
            | Failure::Permanent(error) => error,
        }
    }
}

/// The record header that carries a record's ordering key. The gateway sets it to the response
/// id on every record it publishes.
pub const ORDERING_HEADER: &str = "response_id";

pub use formstream_core::identity::ORGANISATION_HEADER;

/// A record value the runtime can decode and route.
///
/// Ordering: records with the same ordering key are handled one at a time, in offset order;
/// records with different keys run concurrently. The key is the `response_id` header
/// ([`ORDERING_HEADER`]) within the `organisation` header ([`ORGANISATION_HEADER`]), so that the
/// revisions of one response are handled in order without decoding first, and a response id
/// another organisation reuses never makes the two wait for each other. A record without the
/// `response_id` header is ordered by its Kafka key (the form id): still in order per response,
/// with less concurrency.
pub trait Payload: AvroRecord + Clone {
    /// The form version the record refers to, if any: the runtime hands the processor that form
    /// version, and holds the record back until its forms view has it.
    fn form_ref(&self) -> Option<FormRef<'_>> {
        None
    }
}

impl Payload for Response {
    fn form_ref(&self) -> Option<FormRef<'_>> {
        Some(FormRef {
            organisation: &self.organisation,
            form_id: &self.form_id,
            version: self.form_version,
        })
    }
}

impl Payload for ResponseFlag {
    fn form_ref(&self) -> Option<FormRef<'_>> {
        Some(FormRef {
            organisation: &self.organisation,
            form_id: &self.form_id,
            version: self.form_version,
        })
    }
}

/// A form version a record refers to: the record's organisation's form of that id (another
/// organisation's form of the same id is never handed over), at that version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormRef<'a> {
    pub organisation: &'a str,
    pub form_id: &'a str,
    pub version: i32,
}

impl FormRef<'_> {
    /// The form, if `view` holds it at this version.
    pub fn find(&self, view: &FormsView) -> Option<Arc<Form>> {
        view.get(self.organisation, self.form_id)
            .filter(|form| form.version(self.version).is_some())
    }
}

/// `organisation <organisation>'s form <id> version <n>`, for messages.
impl std::fmt::Display for FormRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "organisation {}'s form {} version {}",
            self.organisation, self.form_id, self.version
        )
    }
}

/// Which topic a processor consumes. Names are resolved from the runtime's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The responses topic (`--responses-topic`).
    Responses,
    /// The response-flags topic (`--flags-topic`), which the validate processor writes.
    Flags,
}

/// One decoded record, as a processor sees it.
#[derive(Debug, Clone)]
pub struct Record<V> {
    pub topic: &'static str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (the record's Kafka timestamp).
    pub timestamp_ms: Option<i64>,
    /// The record as fetched: its Kafka key, its headers and its encoded value (see
    /// [`Record::key`] and [`Record::header`]).
    pub raw: RawRecord,
    pub value: V,
    /// The form the value refers to (see [`Payload::form_ref`]), as the forms view holds it.
    pub form: Option<Arc<Form>>,
    /// 1 on the first attempt, +1 on each retry.
    pub attempt: u32,
    /// Which assignment of its partition to this instance the record was fetched in: it grows
    /// with every (re)assignment. A processor that caches what its target holds (the sheets
    /// exporter's row index) reads the target back when it sees a newer one, since the partition
    /// may have been processed by another instance meanwhile.
    pub assignment: u64,
}

impl<V> Record<V> {
    /// The record's Kafka key (the form id, for a response).
    pub fn key(&self) -> Option<&[u8]> {
        self.raw.key()
    }

    /// The value of the record's first header named `name` (`response_id` and `revision`, for a
    /// response published by the gateway).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.raw.header(name)
    }

    /// The record's headers, in order: (name, value).
    pub fn headers(&self) -> Headers<'_> {
        self.raw.headers()
    }
}

impl<V: Payload> Record<V> {
    /// The form version the value answered, if it refers to one.
    pub fn form_version(&self) -> Option<&FormVersion> {
        let version = self.value.form_ref()?.version;
        self.form.as_ref()?.version(version)
    }
}

/// A record a processor publishes as (part of) the outcome of a consumed record; see
/// [`Processor::outputs`]. The value is already encoded (the processor owns its schema).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// A processor: a name and an effect. Register it in the binary's processor list; the runtime
/// does the rest (consuming, decoding, ordering, retries, dead letters, commits, metrics).
pub trait Processor: Send + Sync + 'static {
    /// The value type of the consumed topic.
    type Value: Payload;

    /// Names the consumer group (`formstream-<name>`) and the dead-letter topic (`<name>.dlq`).
    fn name(&self) -> &str;

    /// The topic to consume.
    fn source(&self) -> Source {
        Source::Responses
    }

    /// The effect for one record. It must be idempotent per (response id, revision): the runtime
    /// delivers at least once.
    fn handle(
        &self,
        record: &Record<Self::Value>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Whether the revisions of one response are handled one at a time, in offset order (the
    /// default: each waits until the one before it succeeded). A processor whose effect keeps the
    /// highest revision whatever order they come in (the sheets exporter: a row is replaced only
    /// by a higher revision) can say no: a correction then reaches it while the revision before
    /// it still waits on its target, and both can go in one call. Records are still committed in
    /// offset order.
    fn orders_revisions(&self) -> bool {
        true
    }

    /// Most records per call to [`Processor::handle_batch`]; 1 (the default) means one at a time.
    fn batch_size(&self) -> usize {
        1
    }

    /// Longest a partial batch waits for more records.
    fn batch_linger(&self) -> Duration {
        Duration::from_millis(50)
    }

    /// The effect for several records of different keys; one result per record, in order. The
    /// default handles them one after another.
    fn handle_batch(
        &self,
        records: &[Record<Self::Value>],
    ) -> impl Future<Output = Vec<Result<(), Failure>>> + Send {
        async move {
            let mut results = Vec::with_capacity(records.len());
            for record in records {
                results.push(self.handle(record).await);
            }
            results
        }
    }

    /// Whether this processor publishes records ([`Processor::outputs`]). Then the runtime
    /// publishes every record's outputs and commits its offset in one Kafka transaction, so that
    /// each output appears exactly once (to `read_committed` readers) even across crashes and
    /// rebalances; offsets are then never committed outside a transaction.
    fn transactional(&self) -> bool {
        false
    }

    /// The records to publish for one record, asked after [`Processor::handle`] succeeded (a
    /// transactional processor whose only effect is its outputs keeps `handle` trivial). Must be a
    /// pure function of the record: a record redone after a crash or a rebalance must produce the
    /// same outputs. Used only when [`Processor::transactional`] is true.
    fn outputs(&self, _record: &Record<Self::Value>) -> Result<Vec<Output>, Failure> {
        Ok(Vec::new())
    }

    /// The processor's own metrics, served on its /metrics beside the runtime's (registered once,
    /// when [`crate::run`] starts). Their labels take values from bounded sets only, as the
    /// runtime's do: never an organisation, a form or a response.
    fn metrics(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        Vec::new()
    }

    /// Where to start reading `partitions` of `topic` when they are assigned to this instance,
    /// instead of the consumer group's committed offsets: the next offset to read, per partition.
    ///
    /// For a processor that stores its consumed offsets atomically with its effect (the slang
    /// processor keeps them in its index's commits), so that it resumes exactly where its effect
    /// stopped, whatever the group committed; and so that deleting its state rebuilds it. `None`
    /// (the default), or a partition missing from the map, starts at the group's committed
    /// offset. An offset below the partition's first retained one starts at the earliest
    /// (`auto.offset.reset=earliest`), so `0` means "from the beginning".
    ///
    /// Called inside the consumer's rebalance callback, on the thread that polls the consumer:
    /// answer from memory, quickly.
    fn start_offsets(&self, _topic: &str, _partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        None
    }

    /// Told when every record of a partition below `offset` has finished (its effect returned
    /// `Ok` or it was dead-lettered), each time that watermark moves: what a processor that
    /// keeps its own offsets (see [`Processor::start_offsets`]) may record as consumed once the
    /// effects below it are durable. Called on the engine's task: keep it cheap.
    fn finished_below(&self, _topic: &str, _partition: i32, _offset: i64) {}

    /// Asked while the processor's one circuit is open (failures that name no target): `Ok`
    /// when the target answers again.
    fn probe(&self) -> impl Future<Output = Result<(), anyhow::Error>> + Send {
        async { Ok(()) }
    }

    /// The targets `record`'s effect writes to (a webhook receiver, a spreadsheet, a Twilio
    /// account), each with the record's organisation. The runtime keeps a circuit per target: a
    /// failure that names its target ([`Failure::at`]) counts against that target's circuit,
    /// and while it is open only the records that go to that target wait; the others flow.
    /// Called for every record: borrow, do not allocate. None (the default): every failure
    /// counts against the processor's one circuit.
    fn targets<'a>(&'a self, _record: &'a Record<Self::Value>) -> Targets<'a> {
        Targets::none()
    }

    /// Asked while the circuit of `target` is open, on the breaker's schedule: `Ok` when the
    /// target answers again (its waiting records are then tried one at a time until one
    /// succeeds). The default answers at once: the first waiting record is the probe.
    fn probe_target(
        &self,
        _target: &Target,
    ) -> impl Future<Output = Result<(), anyhow::Error>> + Send {
        async { Ok(()) }
    }

    /// How logs name `target` (metrics never do: they count open circuits by kind). The default
    /// names its kind only, since an address may carry a secret; say more when it is safe (a
    /// spreadsheet id, a URL's origin).
    fn target_name(&self, target: &Target) -> String {
        target.kind().to_owned()
    }
}
