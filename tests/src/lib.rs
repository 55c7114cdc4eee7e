//! Helpers for formstream's end-to-end tests: an in-process gateway on fresh topics of the real
//! broker (zero2prod's `spawn_app`), a reader that decodes everything that landed on a topic, and
//! condition polls with deadlines.
//!
//! Modules: this file (the gateway helpers), [`runtime`] (processor runtime helpers), the fakes of
//! the outside services ([`twilio_fake`], [`sheets_fake`], [`webhook_receiver`]), and [`deploy`]
//! (what the real binary accepts and which metrics the code exports).
//!
//! Invariant: every test gets its own topics (random names) and its own gateway on port 0, so tests
//! are independent, can run in parallel and can be rerun against the same broker. Nothing here
//! sleeps for a fixed time to wait for something: every wait polls a condition until a deadline.

pub mod deploy;
pub mod e2e;
pub mod k8s_schemas;
pub mod runtime;
pub mod sheets_fake;
pub mod slang;
pub mod standalone;
pub mod twilio_fake;
pub mod webhook_receiver;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use formstream_core::kafka::partition_count;
use formstream_ingest::config::GatewayConfig;
use formstream_schemas::{Codec, Response};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The API key of organisation `acme` in every test gateway.
pub const ACME_KEY: &str = "test-key-acme-0f3c";
/// The API key of organisation `globex` in every test gateway.
pub const GLOBEX_KEY: &str = "test-key-globex-9a71";

/// How long a gateway may take to start and report ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a topic read waits for the records a test expects.
pub const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The broker the tests use: `FORMSTREAM_TEST_BOOTSTRAP`, set by `deploy/local/test.sh`.
pub fn bootstrap() -> String {
    std::env::var("FORMSTREAM_TEST_BOOTSTRAP").unwrap_or_else(|_| "localhost:9092".to_owned())
}

/// A fresh, unique suffix for topic and form names.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The three topics of one test; fresh names unless a test reuses another gateway's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub forms: String,
    pub responses: String,
    pub flags: String,
}

impl Topics {
    pub fn fresh() -> Self {
        let id = unique();
        Topics {
            forms: format!("test-{id}-forms"),
            responses: format!("test-{id}-responses"),
            flags: format!("test-{id}-flags"),
        }
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.forms, &self.responses, &self.flags]
    }
}

/// How to start a test gateway. `Default` gives a gateway on the shared broker, on fresh topics.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub bootstrap: String,
    /// Reuse these topics (e.g. a second gateway over the first one's topics).
    pub topics: Option<Topics>,
    /// Partitions of the responses topic. Several, so that partitioning by key is observable.
    pub responses_partitions: i32,
    /// Extra `formstream gateway` flags, e.g. `["--max-body-bytes", "2048"]` or
    /// `["--create-topics", "false"]` (topics are created by default).
    pub extra_args: Vec<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            bootstrap: bootstrap(),
            topics: None,
            responses_partitions: 6,
            extra_args: Vec::new(),
        }
    }
}

impl GatewayOptions {
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.extra_args.push(flag.to_owned());
        self.extra_args.push(value.to_string());
        self
    }
}

/// clap wrapper, so that the gateway's defaults stay in one place: its `GatewayConfig`. Later
/// flags override earlier ones (a test's `extra_args` override the defaults here).
#[derive(Parser)]
#[command(args_override_self = true)]
struct ConfigArgs {
    #[command(flatten)]
    config: GatewayConfig,
}

/// A gateway running in-process on 127.0.0.1:0.
pub struct TestGateway {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    pub topics: Topics,
    pub bootstrap: String,
    pub config: GatewayConfig,
    /// Dropping the sender (or sending) completes the gateway's shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The API keys file; kept alive as long as the gateway.
    _keys_file: Arc<tempfile::TempPath>,
}

/// The form actions of the processors these tests run (the binary registers every processor's,
/// src/processors.rs): what the in-process gateway checks and stores forms with.
pub fn form_actions() -> formstream_core::forms::FormActions {
    formstream_core::forms::FormActions::new([
        formstream_validate::action::action(),
        formstream_notify_collectors::action::action(),
        formstream_receipts::action::action(),
        formstream_slang::action::action(),
        formstream_sheets::action::action(),
    ])
}

/// Starts a gateway on fresh topics of the shared broker and waits until it is ready.
pub async fn spawn_app() -> TestGateway {
    spawn_gateway(GatewayOptions::default()).await
}

/// Starts a gateway as `options` say and waits (with a deadline) until `/readyz` answers 200.
pub async fn spawn_gateway(options: GatewayOptions) -> TestGateway {
    let topics = options.topics.clone().unwrap_or_else(Topics::fresh);
    let keys_file = Arc::new(write_keys_file().expect("writing the test API keys file"));

    let mut args: Vec<String> = vec![
        "gateway".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--kafka-bootstrap".into(),
        options.bootstrap.clone(),
        "--forms-topic".into(),
        topics.forms.clone(),
        "--responses-topic".into(),
        topics.responses.clone(),
        "--flags-topic".into(),
        topics.flags.clone(),
        "--responses-partitions".into(),
        options.responses_partitions.to_string(),
        "--forms-partitions".into(),
        "2".into(),
        "--api-keys-file".into(),
        keys_file.to_string_lossy().into_owned(),
        // Keep shutdown quick in tests; nothing is in flight when they stop a gateway.
        "--shutdown-timeout".into(),
        "5s".into(),
    ];
    args.extend(options.extra_args.iter().cloned());
    let mut config = ConfigArgs::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("gateway arguments {args:?} do not parse: {e}"))
        .config;
    config.form_actions = form_actions();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a port for the test gateway");
    let port = listener
        .local_addr()
        .expect("local address of the test listener")
        .port();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(formstream_ingest::run(
        config.clone(),
        listener,
        async move {
            let _ = shutdown_rx.await;
        },
    ));

    let gateway = TestGateway {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building the HTTP client"),
        topics,
        bootstrap: options.bootstrap,
        config,
        shutdown: Some(shutdown_tx),
        handle: Some(handle),
        _keys_file: keys_file,
    };
    gateway.wait_ready(READY_DEADLINE).await;
    gateway
}

/// An API keys file with the test keys of acme ([`ACME_KEY`]) and globex ([`GLOBEX_KEY`]),
/// deleted when the returned path is dropped.
pub fn write_keys_file() -> anyhow::Result<tempfile::TempPath> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("formstream-test-keys-")
        .suffix(".toml")
        .tempfile()
        .context("creating a temp file")?;
    let entry = |org: &str, key: &str| {
        format!(
            "[[keys]]\norganisation = \"{org}\"\nname = \"test\"\nsha256 = \"{}\"\n\n",
            hex::encode(formstream_core::api::keys::hash_key(key))
        )
    };
    file.write_all(entry("acme", ACME_KEY).as_bytes())?;
    file.write_all(entry("globex", GLOBEX_KEY).as_bytes())?;
    file.flush()?;
    Ok(file.into_temp_path())
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Polls `/readyz` until 200; panics at the deadline or if the gateway stopped.
    pub async fn wait_ready(&self, deadline: Duration) {
        let started = Instant::now();
        loop {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                panic!("the gateway stopped before it became ready (see its logs)");
            }
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "gateway at {} not ready within {deadline:?}",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signals shutdown and waits for `run` to return, with a deadline.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown_and_wait().await
    }

    async fn shutdown_and_wait(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .context("the gateway did not stop within 30 s")?
            .context("the gateway task panicked")?;
        outcome.context("the gateway returned an error")
    }

    /// Stops the gateway, then deletes its topics (best effort), so that reruns do not pile up
    /// topics on the shared broker.
    pub async fn finish(mut self) {
        self.shutdown_and_wait()
            .await
            .expect("the gateway stops cleanly");
        delete_topics(&self.bootstrap, &self.topics.all()).await;
    }

    /// A request with acme's key.
    pub fn acme(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.as_key(ACME_KEY, method, path)
    }

    /// A request with globex's key.
    pub fn globex(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.as_key(GLOBEX_KEY, method, path)
    }

    pub fn as_key(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// Creates `body` as a form of the organisation of `key`; panics unless 201.
    pub async fn create_form_as(&self, key: &str, body: &Value) -> Value {
        let response = self
            .as_key(key, reqwest::Method::POST, "/v1/forms")
            .json(body)
            .send()
            .await
            .expect("POST /v1/forms");
        let status = response.status();
        let text = response.text().await.expect("form creation body");
        assert_eq!(status, 201, "creating a form: {text}");
        serde_json::from_str(&text).expect("form creation answers JSON")
    }

    /// Creates a typical form (see [`typical_form`]) for acme and returns its id.
    pub async fn create_typical_form(&self) -> String {
        let id = format!("f{}", unique());
        let created = self.create_form_as(ACME_KEY, &typical_form(&id)).await;
        assert_eq!(created["id"], id.as_str());
        assert_eq!(created["version"], 1);
        id
    }

    /// POSTs a response to `form_id` with acme's key; returns status and JSON body.
    pub async fn submit(&self, form_id: &str, body: &Value) -> (u16, Value) {
        send_json(
            self.acme(
                reqwest::Method::POST,
                &format!("/v1/forms/{form_id}/responses"),
            )
            .json(body),
        )
        .await
    }

    /// The sum of the gateway's samples of metric `name` (see [`runtime::metric_value`]), read
    /// from its `/metrics`, which counts itself among the requests in flight. `None` when the
    /// scrape fails.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let response = self.client.get(self.url("/metrics")).send().await.ok()?;
        let text = response.text().await.ok()?;
        Some(runtime::metric_value(&text, name, &[]))
    }

    /// Reads every record of this gateway's responses topic (see [`read_responses`]).
    pub async fn responses_on_topic(&self, expected: usize) -> Vec<Landed> {
        read_responses(
            &self.bootstrap,
            &self.topics.responses,
            expected,
            READ_DEADLINE,
        )
        .await
        .expect("reading the responses topic")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // A test that panicked still stops its gateway: the shutdown future completes when the
        // sender is dropped.
        self.shutdown.take();
    }
}

/// Sends a request and returns its status and its body as JSON (`Null` when not JSON).
pub async fn send_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .send()
        .await
        .expect("sending a request to the gateway");
    let status = response.status().as_u16();
    let text = response.text().await.expect("reading the gateway's answer");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A form with one question of every type. `name` is required and at most 20 characters,
/// `income` is required; the default region is India, so phones may omit +91.
pub fn typical_form(id: &str) -> Value {
    json!({
        "id": id,
        "title": "Household survey",
        "description": "Monthly income and languages",
        "default_region": "IN",
        "questions": [
            {"key": "name", "text": "Your name", "type": "text", "required": true, "max_length": 20},
            {"key": "income", "text": "Monthly income", "type": "number", "required": true},
            {"key": "phone", "text": "Phone", "type": "phone"},
            {"key": "city", "text": "City", "type": "single_choice",
             "choices": [{"key": "pune", "text": "Pune"}, {"key": "delhi", "text": "Delhi"}]},
            {"key": "langs", "text": "Languages", "type": "multiple_choice",
             "choices": [{"key": "hi", "text": "Hindi"}, {"key": "mr", "text": "Marathi"}, {"key": "en", "text": "English"}]},
            {"key": "notes", "text": "Notes", "type": "text"}
        ],
        "metadata": {"team": "field"}
    })
}

/// A valid response to [`typical_form`].
pub fn valid_response(name: &str) -> Value {
    json!({
        "collector": {"id": "collector-7", "phone": "098765 43210"},
        "answers": {"name": name, "income": "12000.50", "phone": "+91 98765 43210", "city": "pune", "langs": ["mr", "hi"]}
    })
}

/// One record read from a topic.
#[derive(Debug, Clone)]
pub struct Landed {
    pub key: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
    pub response: Response,
}

/// Reads the responses topic from the beginning of every partition (assign, no group commits)
/// and decodes every record. Returns once at least `expected` records were read AND every
/// partition is at its end, so that records beyond the expected ones are seen too; or at the
/// deadline, with whatever was read (callers assert the count).
pub async fn read_responses(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Landed>> {
    let raw = read_topic(bootstrap, topic, expected, deadline).await?;
    let codec = Codec::single_object();
    let mut landed = Vec::with_capacity(raw.len());
    for record in raw {
        let response = codec
            .decode::<Response>(&record.payload)
            .await
            .with_context(|| {
                format!(
                    "decoding the record at {topic}/{}@{}",
                    record.partition, record.offset
                )
            })?;
        landed.push(Landed {
            key: record.key,
            partition: record.partition,
            offset: record.offset,
            headers: record.headers,
            response,
        });
    }
    Ok(landed)
}

/// One raw record.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl RawRecord {
    /// The header `name` as a number, if it is one.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        self.headers.get(name)?.parse().ok()
    }
}

/// Reads raw records of `topic`; see [`read_responses`] for when it returns.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<RawRecord>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Required by librdkafka; nothing is committed (assign, auto-commit off).
        .set("group.id", format!("test-reader-{}", unique()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating a test consumer")?;
    let started = Instant::now();
    let partitions = loop {
        let count = partition_count(consumer.client(), topic, Duration::from_secs(5))
            .context("fetching topic metadata")?;
        if count > 0 {
            break count as i32;
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "topic {topic} not found within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let mut records = Vec::new();
    let mut at_end: HashSet<i32> = HashSet::new();
    loop {
        if records.len() >= expected && at_end.len() == partitions as usize {
            return Ok(records);
        }
        let Some(left) = deadline.checked_sub(started.elapsed()) else {
            return Ok(records);
        };
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => return Ok(records),
            Ok(message) => message,
        };
        match message {
            Ok(message) => {
                at_end.remove(&message.partition());
                let headers = message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(RawRecord {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    partition: message.partition(),
                    offset: message.offset(),
                    headers,
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                at_end.insert(partition);
            }
            Err(error) => {
                // Transient (e.g. the broker restarting): keep reading until the deadline.
                eprintln!("test reader of {topic}: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Deletes topics, best effort (used when a test finishes; a failure only leaves them behind).
pub async fn delete_topics(bootstrap: &str, topics: &[&str]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    let Ok(admin) = admin else { return };
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        admin.delete_topics(topics, &options),
    )
    .await;
}

/// Polls `condition` every 50 ms until it holds (true) or `deadline` passes (false).
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let attempt = || {
        let holds = condition();
        async move { anyhow::Ok(holds.await) }
    };
    poll_until(deadline, Duration::from_millis(50), attempt, |holds| *holds)
        .await
        .unwrap_or(false)
}

/// Calls `attempt` every `interval` until what it answers is `done`, or until `deadline` has
/// passed since the first call; returns that last answer either way, so that a caller can say
/// what was still missing. An error from `attempt` ends the wait at once. (The asserting forms:
/// [`wait_until`] and `runtime::eventually`.)
pub async fn poll_until<T, F, Fut>(
    deadline: Duration,
    interval: Duration,
    mut attempt: F,
    done: impl Fn(&T) -> bool,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        let answer = attempt().await?;
        if done(&answer) || started.elapsed() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Asserts that a response is an RFC 9457 problem with `status`, and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("reading a problem body");
    assert_eq!(got, status, "expected {status}, got {got}: {text}");
    assert_eq!(
        content_type, "application/problem+json",
        "content type of a {status}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {text}"));
    assert!(body["type"].is_string(), "problem has a type: {body}");
    assert!(body["title"].is_string(), "problem has a title: {body}");
    assert_eq!(body["status"], status, "problem states its status: {body}");
    body
}

/// The (pointer, code) pairs of a 422's `errors`, sorted.
pub fn field_problems(problem: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("problem lists errors: {problem}"))
        .iter()
        .map(|e| {
            assert!(
                e["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "each field problem has a detail: {e}"
            );
            (
                e["pointer"].as_str().unwrap_or_default().to_owned(),
                e["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Sorted (pointer, code) pairs, for comparing with [`field_problems`].
pub fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// The path of the project's broker script.
pub fn kafka_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh")
}

/// A broker instance of one test, on ports of its own: what `kafka.sh` needs to address it. The
/// test decides what dropping it means (`stop`, or `destroy`).
pub struct BrokerInstance {
    pub instance: String,
    pub port: u16,
    pub controller_port: u16,
}

impl BrokerInstance {
    /// A fresh instance named `<prefix>-<unique>`, on two free ports.
    pub fn new(prefix: &str) -> Self {
        BrokerInstance {
            instance: format!("{prefix}-{}", &unique()[..12]),
            port: deploy::free_port(),
            controller_port: deploy::free_port(),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// `kafka.sh <command>` for this instance: its name and ports, a small heap, its own data
    /// directory whatever the caller's shell says, no stdin.
    pub fn script(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(kafka_script())
            .arg(command)
            .env("FORMSTREAM_KAFKA_INSTANCE", &self.instance)
            .env("FORMSTREAM_KAFKA_PORT", self.port.to_string())
            .env(
                "FORMSTREAM_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("FORMSTREAM_KAFKA_HEAP", "-Xms128m -Xmx512m")
            .env("FORMSTREAM_KAFKA_STOP_TIMEOUT", "30")
            .env_remove("FORMSTREAM_KAFKA_DATA_DIR")
            .stdin(std::process::Stdio::null());
        cmd
    }
}
