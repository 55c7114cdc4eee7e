//! What the tenancy tests share: a form with every action, answers to it, and the real processors
//! started over a test gateway's topics (each with its own group and dead-letter topic), waited on
//! until they have committed everything there is.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use formstream_notify::{Destinations, RateLimit, SmsSender, TwilioClient, WebhookSender};
use formstream_notify_collectors::{NotifyCollectors, WebhookSecrets};
use formstream_receipts::Receipts;
use formstream_runtime::{Ledger, LedgerArgs};
use formstream_sheets::batcher::BatchSettings;
use formstream_sheets::local::LocalFiles;
use formstream_sheets::sink::Sink;
use formstream_sheets::{Sheets, SheetsArgs};
use formstream_slang::{Slang, SlangIndex};
pub use formstream_tests::runtime::processor_topics;
use formstream_tests::runtime::{
    RunningRuntime, RuntimeTopics, committed_offsets, eventually, spawn_runtime,
};
use formstream_tests::sheets_fake::FakeSheets;
use formstream_tests::twilio_fake::FakeTwilio;
use formstream_tests::{TestGateway, delete_topics, read_topic, unique};
use formstream_validate::Validate;
use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// How long a processor may take to finish what the gateway published.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A form with every action: a rule (savings <= income) whose flags text the collector, a receipt
/// to the respondent, slang indexing of `slang` by `city`, and a spreadsheet the exporter creates.
/// `title` shows in the receipt text and in the created spreadsheet's title, so that each
/// organisation's can be told apart.
pub fn household(id: &str, title: &str) -> Value {
    json!({
        "id": id,
        "title": title,
        "default_region": "IN",
        "questions": [
            {"key": "name", "text": "Your name", "type": "text"},
            {"key": "phone", "text": "Your mobile", "type": "phone"},
            {"key": "income", "text": "Monthly income", "type": "number"},
            {"key": "savings", "text": "Monthly savings", "type": "number"},
            {"key": "city", "text": "City", "type": "single_choice",
             "choices": [{"key": "pune", "text": "Pune"}, {"key": "delhi", "text": "Delhi"}]},
            {"key": "slang", "text": "Words people use here", "type": "text"}
        ],
        "rules": [
            {"id": "savings-le-income", "expression": "savings <= income",
             "message": "Savings cannot exceed income.", "question_keys": ["savings", "income"]}
        ],
        "notify": {"sms_collector": true},
        "receipt": {"phone_question": "phone",
                    "template": "{{ form.title }}: thank you {{ answers.name }}."},
        "slang": {"city_question": "city", "text_questions": ["slang"]},
        "sheets": {"create": true}
    })
}

/// One answer to [`household`], flagged (savings above income), from `collector_phone`.
pub fn flagged_answer(
    response_id: &str,
    name: &str,
    phone: &str,
    collector_phone: &str,
    slang: &str,
) -> Value {
    json!({
        "response_id": response_id,
        "collector": {"id": format!("collector-of-{name}"), "phone": collector_phone},
        "answers": {"name": name, "phone": phone, "income": 1000, "savings": 5000,
                    "city": "pune", "slang": slang}
    })
}

/// `method` of `path` with `key`'s organisation; panics unless the gateway answers `expected`.
pub async fn call(
    gateway: &TestGateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    expected: u16,
) -> Value {
    let mut request = gateway.as_key(key, method.clone(), path);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    assert_eq!(status, expected, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// One processor running over a gateway's topics.
pub struct Running {
    /// Which processor, for failure messages.
    pub name: String,
    pub runtime: RunningRuntime,
    /// What to wait on: its group, and as "responses" the topic it consumes.
    pub topics: RuntimeTopics,
    /// Topics of its own (the dead-letter topic, a ledger) to delete at the end.
    own: Vec<String>,
}

impl Running {
    /// Waits until its group has committed every record of its topic (as far as the topic has
    /// records now): past the last record of each partition. (Not to the partition's end: after
    /// records written in transactions, the end is a commit marker, which the consumer passes
    /// without committing.)
    pub async fn wait_done(&self) {
        let topics = &self.topics;
        let records = read_topic(&topics.bootstrap, &topics.responses, 0, DEADLINE)
            .await
            .expect("reading the topic");
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        for record in records {
            let end = ends.entry(record.partition).or_default();
            *end = (*end).max(record.offset + 1);
        }
        let what = format!("{} committed every record", self.name);
        eventually(DEADLINE, &what, || {
            let ends = &ends;
            async move {
                let Ok(committed) = committed_offsets(topics).await else {
                    return false;
                };
                ends.iter()
                    .all(|(partition, end)| committed.get(partition).is_some_and(|c| c >= end))
            }
        })
        .await;
    }

    /// Stops it and deletes its own topics.
    pub async fn finish(self) {
        self.runtime
            .stop()
            .await
            .expect("the processor stops cleanly");
        let own: Vec<&str> = self.own.iter().map(String::as_str).collect();
        delete_topics(&self.topics.bootstrap, &own).await;
    }
}

/// A fresh ledger topic.
pub fn ledger_args() -> LedgerArgs {
    LedgerArgs {
        ledger_topic: Some(format!("test-{}-ledger", unique())),
        ledger_partitions: 3,
        ledger_replication_factor: 1,
    }
}

pub async fn open_ledger(topics: &RuntimeTopics, args: &LedgerArgs, name: &str) -> Ledger {
    Ledger::open(&topics.kafka(), args, name, std::future::pending())
        .await
        .expect("opening the ledger")
        .expect("not shut down")
}

async fn start(
    processor: impl formstream_runtime::Processor,
    topics: RuntimeTopics,
    own: Vec<String>,
) -> Running {
    let mut own = own;
    own.push(topics.dlq.clone());
    Running {
        name: processor.name().to_owned(),
        runtime: spawn_runtime(processor, topics.config(&[])).await,
        topics,
        own,
    }
}

pub async fn start_validate(gateway: &TestGateway) -> Running {
    let topics = processor_topics(gateway);
    let validate = Validate::new(&topics.config(&[]))
        .await
        .expect("the validate processor");
    start(validate, topics, Vec::new()).await
}

/// notify-collectors on `twilio`, waited on over the flags topic.
pub async fn start_notify_collectors(gateway: &TestGateway, twilio: &FakeTwilio) -> Running {
    let topics = processor_topics(gateway);
    let ledger = ledger_args();
    let processor = NotifyCollectors::new(
        SmsSender::Twilio(TwilioClient::new(twilio.config()).expect("a Twilio client")),
        WebhookSender::new(Duration::from_secs(5), Destinations::Public).expect("a webhook sender"),
        WebhookSecrets::none(),
        open_ledger(
            &topics,
            &ledger,
            formstream_notify_collectors::processor::NAME,
        )
        .await,
        gateway.address.clone(),
    );
    let mut running = start(
        processor,
        topics,
        vec![ledger.ledger_topic.clone().unwrap_or_default()],
    )
    .await;
    // It consumes the flags topic: that is the one to wait on.
    running.topics.responses = running.topics.flags.clone();
    running
}

pub async fn start_receipts(gateway: &TestGateway, twilio: &FakeTwilio) -> Running {
    let topics = processor_topics(gateway);
    let ledger = ledger_args();
    let processor = Receipts::new(
        SmsSender::Twilio(TwilioClient::new(twilio.config()).expect("a Twilio client")),
        open_ledger(&topics, &ledger, formstream_receipts::processor::NAME).await,
        RateLimit::per_second(200.0).expect("a rate"),
    );
    start(
        processor,
        topics,
        vec![ledger.ledger_topic.clone().unwrap_or_default()],
    )
    .await
}

/// slang on an index in memory, which the test queries (after [`SlangIndex::commit`]).
pub async fn start_slang(gateway: &TestGateway) -> (Running, Arc<SlangIndex>) {
    let index = Arc::new(SlangIndex::in_memory(50_000_000).expect("an index"));
    let running = start(
        Slang::new(index.clone(), 64),
        processor_topics(gateway),
        Vec::new(),
    )
    .await;
    (running, index)
}

fn quick_batches() -> BatchSettings {
    BatchSettings {
        linger: Duration::from_millis(100),
        max_wait: Duration::from_secs(1),
        max_bytes: 2_000_000,
    }
}

/// sheets without credentials: CSV files in `dir`.
pub async fn start_sheets_local(gateway: &TestGateway, dir: &Path) -> Running {
    let sink = Sink::Local(LocalFiles::new(dir.to_owned()).expect("the sheets folder"));
    start(
        Sheets::new(sink, quick_batches()),
        processor_topics(gateway),
        Vec::new(),
    )
    .await
}

#[derive(Parser)]
struct SheetsFlags {
    #[command(flatten)]
    args: SheetsArgs,
}

/// sheets on the Sheets fake, with `extra` flags (e.g. `--organisations-file`); `dir` holds the
/// credentials file. Returns the ledger of created spreadsheets' topic settings too.
pub async fn start_sheets_google(
    gateway: &TestGateway,
    fake: &FakeSheets,
    dir: &Path,
    extra: &[String],
) -> (Running, LedgerArgs) {
    let topics = processor_topics(gateway);
    let ledger = ledger_args();
    let ledger_topic = ledger.ledger_topic.clone().unwrap_or_default();
    let mut argv = vec!["sheets".to_owned()];
    argv.extend(fake.exporter_flags(dir, &ledger_topic));
    argv.extend(
        [
            "--sheets-writes-per-minute",
            "6000",
            "--ledger-partitions",
            "3",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    argv.extend(extra.iter().cloned());
    let args = SheetsFlags::try_parse_from(&argv)
        .expect("sheets flags")
        .args;
    let sheets = Sheets::open(args, &topics.config(&[]), std::future::pending())
        .await
        .expect("opening the exporter")
        .expect("not shut down");
    (start(sheets, topics, vec![ledger_topic]).await, ledger)
}

/// The rows of a CSV file (none when it does not exist).
pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    if !path.exists() {
        return Vec::new();
    }
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .expect("a CSV file")
        .records()
        .map(|r| r.expect("a CSV row").iter().map(str::to_owned).collect())
        .collect()
}

/// The log lines of this thread, kept in memory while its guard lives: a current-thread test
/// runtime runs every task of the gateway and the processors on it.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Starts capturing what `filter` (an `EnvFilter` directive) lets through, until the guard
    /// (the second value) is dropped.
    pub fn start(filter: &str) -> (CapturedLogs, impl Sized) {
        let captured = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_env_filter(filter)
            .finish();
        (captured, subscriber.set_default())
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
