//! The sheets exporter's benchmark (issue 6): rows per second exported to the Sheets fake under
//! Google's quota of 60 write requests per minute (enforced by the exporter and, as a check, by
//! the fake, which answers 429 past it), across forms of skewed popularity.
//!
//! A binary, not a test (it takes minutes, and targets are checked by benchmarks, never by tests):
//! `cargo run -p formstream-tests --bin sheets-bench`, sized by
//! `SHEETS_BENCH_ROWS` (default 1,000,000) and `SHEETS_BENCH_FORMS` (default 200). It prints one
//! JSON line of figures: among them the writes the fake's quota let through (`writes`, those to
//! `values.append` in `values_appends`), their bodies' bytes (`write_bytes`, per row in
//! `bytes_per_row`), rows per write and the largest body. With `SHEETS_BENCH_KEEP_TOPICS` set, the responses topic is kept (and
//! named) for `deploy/local/kafka.sh perf-consumer` on the same records.

use std::time::{Duration, Instant};

use clap::Parser;
use formstream_schemas::fixtures::{self, choice_answer, number_answer, text_answer};
use formstream_schemas::{
    Collector, Form, FormVersion, Question, QuestionType, Response, Sheets as SheetsAction,
};
use formstream_sheets::{Sheets, SheetsArgs};
use formstream_tests::runtime::*;
use formstream_tests::sheets_fake::FakeSheets;
use formstream_tests::unique;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: SheetsArgs,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_form(id: &str, spreadsheet_id: &str) -> Form {
    let q = |key: &str, kind: QuestionType, choices: &[&str]| Question {
        text: format!("Question {key}"),
        ..fixtures::choice_question(key, kind, choices)
    };
    let version = FormVersion {
        title: format!("Bench {id}"),
        sheets: Some(SheetsAction {
            spreadsheet_id: Some(spreadsheet_id.into()),
        }),
        created_at: now_ms(),
        ..fixtures::version(
            1,
            vec![
                q("name", QuestionType::Text, &[]),
                q(
                    "city",
                    QuestionType::SingleChoice,
                    &["pune", "chennai", "kolkata"],
                ),
                q("langs", QuestionType::MultipleChoice, &["hi", "ta", "bn"]),
                q("income", QuestionType::Number, &[]),
                q("savings", QuestionType::Number, &[]),
                q("notes", QuestionType::Text, &[]),
            ],
        )
    };
    Form {
        created_at: now_ms(),
        ..fixtures::form("acme", id, vec![version])
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    init_logs();
    let rows = env("SHEETS_BENCH_ROWS", 1_000_000);
    let forms_count = env("SHEETS_BENCH_FORMS", 200);
    let partitions = 12;
    let fake = FakeSheets::start().await;
    fake.set_write_quota(60);
    let topics = RuntimeTopics::create(partitions).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut forms = Vec::new();
    for i in 0..forms_count {
        let id = format!("bench{i:03}-{}", unique());
        let sheet = fake.create_spreadsheet(&id);
        fake.add_tab(&sheet, "responses");
        producer.form(&bench_form(&id, &sheet)).await;
        forms.push(id);
    }
    // Zipf(1.1) popularity, as `formstream load` uses: form k gets weight 1/(k+1)^1.1.
    let weights: Vec<f64> = (0..forms_count)
        .map(|k| 1.0 / ((k + 1) as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(forms_count);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut state: u64 = 42;
    let produce_started = Instant::now();
    let mut batch = Vec::with_capacity(50_000);
    let mut per_form = vec![0usize; forms_count];
    for n in 0..rows {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        let k = cumulative
            .iter()
            .position(|c| u <= *c)
            .unwrap_or(forms_count - 1);
        per_form[k] += 1;
        let form_id = &forms[k];
        let answers = vec![
            text_answer("name", "Asha Kulkarni"),
            choice_answer("city", &["pune"]),
            choice_answer("langs", &["hi", "bn"]),
            number_answer("income", 25000.0),
            number_answer("savings", 1500.0),
            text_answer("notes", "Visited twice; prefers evening calls"),
        ];
        let response = Response {
            submitted_at: 1_764_000_000_000 + n as i64,
            received_at: 1_764_000_000_000 + n as i64,
            collector: Collector {
                id: format!("collector-{}", n % 97),
                phone: None,
            },
            ..fixtures::response(
                form_id,
                &format!("00000000-0000-4000-8000-{n:012}"),
                answers,
            )
        };
        // Key = form id: a form's responses share a partition, as the gateway publishes them.
        batch.push(((k % partitions as usize) as i32, response));
        if batch.len() == 50_000 {
            producer.responses(&batch).await;
            batch.clear();
        }
    }
    producer.responses(&batch).await;
    let produced_in = produce_started.elapsed();

    // Rows waiting in the batcher hold in-flight slots, and each write carries one form's rows:
    // rows per write is about (rows in flight) / (forms waiting), so a backlog over 200 forms
    // needs many slots to fill its writes.
    let config = topics.config(&[
        "--max-in-flight",
        "400000",
        "--max-buffered-records",
        "500000",
        "--max-buffered-bytes",
        "1073741824",
    ]);
    let credentials = fake.credentials_file(dir.path());
    let owners = fake.organisations_file(dir.path(), "acme");
    let ledger = format!("test-{}-ledger", unique());
    let args = Flags::try_parse_from([
        "sheets",
        "--organisations-file",
        &owners.display().to_string(),
        "--sheets-credentials",
        &credentials.display().to_string(),
        "--sheets-base-url",
        &fake.base_url(),
        "--sheets-writes-per-minute",
        "60",
        // Google's per-project read quota; the read-back of 200 forms needs 400 reads.
        "--sheets-reads-per-minute",
        "300",
        // A backlog drains fastest when the fullest batch goes first; a quiet form still goes
        // within 10 minutes.
        "--sheets-max-wait",
        "10m",
        "--ledger-topic",
        &ledger,
    ])
    .expect("flags")
    .args;
    let started = Instant::now();
    let sheets = Sheets::open(args, &config, std::future::pending())
        .await
        .expect("open")
        .expect("not shut down");
    let runtime = spawn_runtime(sheets, config).await;
    let mut last_report = Instant::now();
    loop {
        let written = fake.data_rows("responses");
        if written >= rows {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "sheets bench: {written} rows after {:?}, {} writes",
                started.elapsed(),
                fake.write_requests()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "not done in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exported_in = started.elapsed();
    // With fewer forms than partitions, some partitions stay empty (nothing to commit there).
    wait_committed_to_nonempty_ends(&topics, Duration::from_secs(120)).await;
    runtime.stop().await.expect("clean stop");
    let written = fake.data_rows("responses");
    assert_eq!(written, rows, "one row per response");
    let hottest = per_form.iter().max().copied().unwrap_or(0);
    // Writes the quota let through (the ones Google would count), and their bodies' bytes.
    let writes = fake.write_requests() - fake.throttled();
    println!(
        "{{\"rows\":{rows},\"forms\":{forms_count},\"hottest_form_rows\":{hottest},\"produce_s\":{:.1},\"export_s\":{:.1},\"rows_per_s\":{:.0},\"write_requests\":{},\"writes\":{writes},\"values_appends\":{},\"write_bytes\":{},\"bytes_per_row\":{:.0},\"rows_per_write\":{:.0},\"largest_write\":{},\"read_requests\":{},\"throttled_by_fake\":{}}}",
        produced_in.as_secs_f64(),
        exported_in.as_secs_f64(),
        rows as f64 / exported_in.as_secs_f64(),
        fake.write_requests(),
        fake.value_appends(),
        fake.write_bytes(),
        fake.write_bytes() as f64 / rows as f64,
        rows as f64 / writes.max(1) as f64,
        fake.largest_write(),
        fake.read_requests(),
        fake.throttled()
    );
    // Kept for Kafka's own consumer perf test on the same records when asked.
    if std::env::var_os("SHEETS_BENCH_KEEP_TOPICS").is_some() {
        println!("responses topic kept: {}", topics.responses);
    } else {
        topics.delete().await;
    }
}
