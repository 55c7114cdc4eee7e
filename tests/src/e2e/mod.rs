//! The end-to-end scenario of issue 15: the gateway and every processor as separate `formstream`
//! processes, the Twilio and Sheets fakes as standalone servers, a steady load of responses to
//! many forms (rule breakers, corrections, poison records), faults while it runs (`kill -9` of
//! each processor, a broker restart, a Twilio outage, a minute of Sheets 429s), and at the end
//! checks of every effect against what the gateway acknowledged. `bench/e2e.sh` runs it at 1M
//! responses (the `e2e` binary) and `tests/tests/e2e.rs` at CI size.
//!
//! Invariant: the outcome's checks are computed from the topics and the fakes only (never from
//! the processors' own counters), and a run that cannot finish (a process that will not start,
//! a drain past its deadline) is an error, never a pass.

pub mod alerts;
pub mod checks;
pub mod load;
pub mod procs;
pub mod report;
pub mod sample;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::poll_until;
use crate::standalone::{FakeAdmin, FakeKind};
use checks::Check;
use load::{Ledger, LoadPlan};
use procs::{Fake, PROCESSORS, Proc};
use sample::{Procs, Sample};
use workload::{Poison, Workload};

/// The API key of the scenario's organisation (a test key, written hashed to the run's keys file).
const API_KEY: &str = "e2e-key-acme-5d21";

/// The scenario's organisation: the owner of its API key and its forms.
const ORGANISATION: &str = "acme";

/// How to restart the scenario's broker (its own `kafka.sh` instance).
#[derive(Debug, Clone)]
pub struct BrokerControl {
    pub script: PathBuf,
    pub instance: String,
    pub port: u16,
    pub controller_port: u16,
}

impl BrokerControl {
    fn command(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&self.script)
            .arg(command)
            .env("FORMSTREAM_KAFKA_INSTANCE", &self.instance)
            .env("FORMSTREAM_KAFKA_PORT", self.port.to_string())
            .env(
                "FORMSTREAM_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env_remove("FORMSTREAM_KAFKA_DATA_DIR")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// The file holding the broker JVM's pid, for its CPU and memory: read at every sample, as
    /// the broker restart gives it a new one.
    fn pid_file(&self) -> PathBuf {
        let home = std::env::var("FORMSTREAM_KAFKA_HOME").unwrap_or_else(|_| {
            format!(
                "{}/.cache/formstream/kafka",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        PathBuf::from(format!("{home}/instances/{}/kafka.pid", self.instance))
    }
}

/// What to run. [`Scenario::ci`] and [`Scenario::full`] are the two sizes of issue 15.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub responses: usize,
    pub forms: usize,
    pub zipf: f64,
    /// Responses per second offered to the gateway.
    pub rate: f64,
    pub batch: usize,
    pub partitions: i32,
    pub kills_per_processor: usize,
    pub twilio_outage: Duration,
    pub sheets_429: Option<Duration>,
    /// Restart the broker once during ingest (needs `broker`).
    pub broker: Option<BrokerControl>,
    pub bootstrap: String,
    pub receipts_rate: f64,
    pub twilio_latency: Duration,
    pub sheets_latency: Duration,
    pub sheets_writes_per_minute: usize,
    /// The runtime's --max-in-flight of the sheets exporter (rows waiting in batches count).
    pub sheets_in_flight: usize,
    pub seed: u64,
    /// Logs, index, series and report go here.
    pub dir: PathBuf,
    pub formstream: PathBuf,
    pub fake_twilio: PathBuf,
    pub fake_sheets: PathBuf,
    /// Longest wait, after the load and the faults, for every effect.
    pub drain_deadline: Duration,
    /// Keep the topics (normally deleted at the end).
    pub keep_topics: bool,
    /// A `prometheus` binary and the alert rules it evaluates over the scraped series.
    pub prometheus: Option<(PathBuf, PathBuf)>,
    /// After the checks, measure the solo throughput of each of [`SOLO`] over up to this many of
    /// the run's records; `None` leaves it unmeasured (the CI size, for time).
    pub solo_records: Option<usize>,
}

impl Scenario {
    /// The CI size: 20,000 responses to 20 forms, one kill of each processor, one 15 s Twilio
    /// outage, no broker restart, no Sheets 429s.
    pub fn ci(
        bootstrap: &str,
        dir: &Path,
        formstream: &Path,
        fake_twilio: &Path,
        fake_sheets: &Path,
    ) -> Self {
        Scenario {
            responses: 20_000,
            forms: 20,
            zipf: 1.1,
            rate: 400.0,
            batch: 100,
            partitions: 6,
            kills_per_processor: 1,
            twilio_outage: Duration::from_secs(15),
            sheets_429: None,
            broker: None,
            bootstrap: bootstrap.to_owned(),
            receipts_rate: 2_000.0,
            twilio_latency: Duration::from_millis(100),
            sheets_latency: Duration::from_millis(200),
            sheets_writes_per_minute: 60,
            sheets_in_flight: 20_000,
            seed: 15,
            dir: dir.to_owned(),
            formstream: formstream.to_owned(),
            fake_twilio: fake_twilio.to_owned(),
            fake_sheets: fake_sheets.to_owned(),
            drain_deadline: Duration::from_secs(120),
            keep_topics: false,
            prometheus: None,
            solo_records: None,
        }
    }

    /// The full size of issue 15: 1,000,000 responses to 200 forms, three kills of each
    /// processor, a broker restart, a 2-minute Twilio outage and a minute of Sheets 429s.
    pub fn full(
        bootstrap: &str,
        broker: BrokerControl,
        dir: &Path,
        formstream: &Path,
        fake_twilio: &Path,
        fake_sheets: &Path,
    ) -> Self {
        Scenario {
            responses: 1_000_000,
            forms: 200,
            // Between two bounds of the targets: receipts cannot finish before ~520 s (799k
            // receipts at 2,000/s plus the 2-minute outage), which must stay within 1.25 x the
            // ingest time (so ingest >= ~420 s); sheets needs about one write per form plus the
            // bytes past 2 MB per request after the last response (~250 writes at 60 a minute),
            // which must end within 720 s (so ingest <= ~470 s). 2,200/s ingests in ~460 s.
            rate: 2_200.0,
            batch: 500,
            partitions: 12,
            kills_per_processor: 3,
            twilio_outage: Duration::from_secs(120),
            sheets_429: Some(Duration::from_secs(60)),
            broker: Some(broker),
            // Every row waiting since its form's last write must fit, or the exporter stops
            // reading and the drain after the ingest takes more rounds of writes over the 200
            // forms: ~6.5 KB per waiting row, ~4.5 GB at most, on a 24 GiB machine.
            sheets_in_flight: 700_000,
            drain_deadline: Duration::from_secs(900),
            solo_records: Some(200_000),
            ..Scenario::ci(bootstrap, dir, formstream, fake_twilio, fake_sheets)
        }
    }
}

/// One fault, when it happened (seconds since the first POST).
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub what: String,
    /// The processor it hit, if any.
    pub target: Option<String>,
    pub start: f64,
    pub end: f64,
}

/// A restarted processor's first effect.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub processor: String,
    /// Seconds since the first POST at which the new process was started.
    pub at: f64,
    /// Seconds from its start to its first finished record; `None` if none came in a minute.
    pub first_effect: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub run: String,
    pub responses: usize,
    pub forms: usize,
    pub rate: f64,
    pub acked: usize,
    pub refused: usize,
    pub retried: usize,
    pub unavailable: usize,
    pub refusals: Vec<String>,
    /// Seconds from the first POST to the last acknowledgement.
    pub ingest_seconds: f64,
    /// Seconds from the first POST to the last effect seen.
    pub last_effect_seconds: f64,
    /// Per processor: seconds from the first POST to its last finished record.
    pub finished: BTreeMap<String, f64>,
    /// Per processor: records it finished over all its lives (a record finished again after a
    /// kill counts twice: it was work done twice).
    pub processed: BTreeMap<String, f64>,
    /// Per processor of [`SOLO`]: its throughput alone on the machine (when measured).
    pub solo: BTreeMap<String, Solo>,
    pub faults: Vec<FaultEvent>,
    pub restarts: Vec<Restart>,
    pub checks: Vec<Check>,
    /// When Prometheus saw each alert firing (when it ran).
    pub firings: Option<Vec<alerts::Firing>>,
    pub samples: Vec<Sample>,
    pub twilio_writes: usize,
    /// Receipts Twilio holds (messages with a receipt reference).
    pub receipts: usize,
    pub sheets_writes: usize,
    pub sheets_throttled: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The run's names: topics, groups, dead-letter and ledger topics.
struct Names {
    run: String,
    forms: String,
    responses: String,
    flags: String,
}

impl Names {
    fn group(&self, processor: &str) -> String {
        format!("{}-{processor}", self.run)
    }
    fn dlq(&self, processor: &str) -> String {
        format!("{}-{processor}.dlq", self.run)
    }
    fn ledger(&self, processor: &str) -> String {
        format!("{}-{processor}.ledger", self.run)
    }
    fn all_topics(&self) -> Vec<String> {
        let mut topics = vec![
            self.forms.clone(),
            self.responses.clone(),
            self.flags.clone(),
        ];
        for processor in PROCESSORS {
            topics.push(self.dlq(processor));
            topics.push(self.ledger(processor));
        }
        let solo = self.solo(SOLO[0]);
        topics.push(solo.flags.clone());
        for processor in SOLO {
            topics.push(solo.dlq(processor));
            topics.push(solo.ledger(processor));
        }
        topics
    }

    /// The names of `processor`'s solo run: the run's forms and responses, groups and topics of
    /// its own; validate's flags go to a topic of their own, notify-collectors reads the run's.
    fn solo(&self, processor: &str) -> Names {
        let run = format!("{}-solo", self.run);
        Names {
            flags: if processor == "validate" {
                format!("{run}-flags")
            } else {
                self.flags.clone()
            },
            forms: self.forms.clone(),
            responses: self.responses.clone(),
            run,
        }
    }
}

/// The processors whose bound is their own throughput (issue 15): measured alone, on this run's
/// records, after the checks.
pub const SOLO: &[&str] = &["validate", "slang", "notify-collectors"];

/// A processor's throughput alone on the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Solo {
    /// Records finished from its process start (a new group from the start: all of them) to its
    /// last counted one.
    pub records: f64,
    /// From its process start to the sample at which its count last grew (startup and group
    /// join included: a first sample taken late, after most records were done, overstated the
    /// rate by orders of magnitude).
    pub seconds: f64,
}

impl Solo {
    pub fn rate(&self) -> f64 {
        self.records / self.seconds
    }
}

fn free_address() -> String {
    format!("127.0.0.1:{}", crate::deploy::free_port())
}

/// The topic flags every process of the scenario takes.
fn kafka_args(scenario: &Scenario, names: &Names) -> Vec<String> {
    [
        "--kafka-bootstrap",
        &scenario.bootstrap,
        "--forms-topic",
        &names.forms,
        "--responses-topic",
        &names.responses,
        "--flags-topic",
        &names.flags,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// What the processors are pointed at besides Kafka: the fakes, the keys file, slang's index.
struct Wiring<'a> {
    twilio: &'a crate::standalone::Announce,
    sheets_api: &'a str,
    sheets_credentials: &'a Path,
    keys: &'a Path,
    index_dir: PathBuf,
    slang_listen: String,
}

/// The command line of `processor`: a static member (its name as instance id) of the group
/// `names` gives it, with its dead-letter and ledger topics.
fn processor_args(
    scenario: &Scenario,
    names: &Names,
    processor: &str,
    wiring: &Wiring<'_>,
    metrics_listen: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["process".into(), processor.to_owned()];
    args.extend(kafka_args(scenario, names));
    let partitions = scenario.partitions.to_string();
    let ledger = names.ledger(processor);
    let (group, dlq) = (names.group(processor), names.dlq(processor));
    args.extend(
        [
            "--group-id",
            &group,
            "--dlq-topic",
            &dlq,
            "--metrics-listen",
            metrics_listen,
            "--instance-id",
            processor,
        ]
        .map(str::to_owned),
    );
    let twilio = [
        // A Twilio probe is one cheap authenticated GET: probing at most every 5 s (not the
        // runtime's 30 s) closes the circuit within seconds of Twilio's return, where a 30 s
        // interval could idle receipts for up to 60k receipts' worth after the outage.
        "--probe-max",
        "5s",
        "--twilio-base-url",
        &wiring.twilio.api,
        "--twilio-account-sid",
        wiring.twilio.account_sid.as_deref().unwrap_or_default(),
        "--twilio-auth-token",
        wiring.twilio.auth_token.as_deref().unwrap_or_default(),
        "--twilio-from",
        crate::twilio_fake::FAKE_FROM,
        "--ledger-topic",
        &ledger,
        "--ledger-partitions",
        &partitions,
    ]
    .map(str::to_owned);
    match processor {
        "notify-collectors" => args.extend(twilio),
        "receipts" => {
            args.extend(twilio);
            args.extend([
                "--receipts-rate".to_owned(),
                scenario.receipts_rate.to_string(),
            ]);
        }
        "sheets" => args.extend(
            [
                "--sheets-credentials",
                &wiring.sheets_credentials.display().to_string(),
                "--sheets-base-url",
                wiring.sheets_api,
                "--ledger-topic",
                &ledger,
                "--ledger-partitions",
                &partitions,
                "--max-in-flight",
                &scenario.sheets_in_flight.to_string(),
                "--max-buffered-records",
                &(scenario.sheets_in_flight * 2).to_string(),
                "--max-buffered-bytes",
                &(scenario.sheets_in_flight * 4_096).to_string(),
            ]
            .map(str::to_owned),
        ),
        "slang" => args.extend(
            [
                "--index-dir",
                &wiring.index_dir.display().to_string(),
                "--search-listen",
                &wiring.slang_listen,
                "--api-keys-file",
                &wiring.keys.display().to_string(),
            ]
            .map(str::to_owned),
        ),
        _ => {}
    }
    args
}

/// Runs the scenario; the outcome holds the checks (a failed check is not an `Err`).
pub async fn run(scenario: Scenario) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&scenario.dir)?;
    let logs = scenario.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let run = format!("e2e-{}", &crate::unique()[..10]);
    let names = Names {
        forms: format!("{run}-forms"),
        responses: format!("{run}-responses"),
        flags: format!("{run}-flags"),
        run: run.clone(),
    };
    let loadavg_start = loadavg();
    let result = run_named(&scenario, &names, &logs, loadavg_start).await;
    if !scenario.keep_topics {
        let topics = names.all_topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        crate::delete_topics(&scenario.bootstrap, &topics).await;
    }
    result
}

async fn run_named(
    scenario: &Scenario,
    names: &Names,
    logs: &Path,
    loadavg_start: String,
) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(
        &names.run,
        scenario.seed,
        scenario.forms,
        scenario.responses,
        scenario.zipf,
    ));

    // The fakes.
    let twilio = Fake::spawn(
        "fake-twilio",
        &scenario.fake_twilio,
        &[
            "--latency".into(),
            format!("{}ms", scenario.twilio_latency.as_millis()),
        ],
        logs,
    )?;
    let credentials = scenario.dir.join("sheets-credentials.json");
    let sheets = Fake::spawn(
        "fake-sheets",
        &scenario.fake_sheets,
        &[
            "--latency".into(),
            format!("{}ms", scenario.sheets_latency.as_millis()),
            "--writes-per-minute".into(),
            scenario.sheets_writes_per_minute.to_string(),
            "--credentials-out".into(),
            credentials.display().to_string(),
        ],
        logs,
    )?;
    let twilio_admin = FakeAdmin::new(FakeKind::Twilio, &twilio.announce.admin);
    let sheets_admin = FakeAdmin::new(FakeKind::Sheets, &sheets.announce.admin);

    // The poison numbers, refused by Twilio as invalid.
    let refused: Vec<String> = (0..scenario.responses)
        .filter(|i| i % 1_000 == 500)
        .map(|i| workload.response(i))
        .filter(|p| p.poison == Some(Poison::RefusedNumber))
        .filter_map(|p| p.phone)
        .collect();
    twilio_admin.refuse_numbers(&refused).await?;

    // The API keys file of the gateway and the slang search API.
    let keys = scenario.dir.join("api-keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\norganisation = \"{ORGANISATION}\"\nname = \"e2e\"\nsha256 = \"{}\"\n",
            hex::encode(formstream_core::api::keys::hash_key(API_KEY))
        ),
    )?;

    // The gateway (it creates the topics).
    let gateway_listen = free_address();
    let gateway_url = format!("http://{gateway_listen}");
    let mut args: Vec<String> = vec!["gateway".into(), "--listen".into(), gateway_listen.clone()];
    args.extend(kafka_args(scenario, names));
    args.extend(
        [
            "--responses-partitions",
            &scenario.partitions.to_string(),
            "--api-keys-file",
            &keys.display().to_string(),
            // The operator's view of this run's dead letters (`/v1/dead-letters`), which the
            // checks read to prove each poison record is listed once.
            "--dead-letter-processors",
            &PROCESSORS
                .iter()
                .map(|p| format!("{p}={}", names.dlq(p)))
                .collect::<Vec<_>>()
                .join(","),
        ]
        .map(str::to_owned),
    );
    let mut gateway = Proc::spawn(
        "gateway",
        &scenario.formstream,
        args,
        logs,
        Some(gateway_url.clone()),
    )?;
    gateway.wait_ready(Duration::from_secs(120)).await?;

    // The forms.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for form in 0..scenario.forms {
        let response = client
            .post(format!("{gateway_url}/v1/forms"))
            .bearer_auth(API_KEY)
            .json(&workload.form_body(form))
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "creating form {form}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    // The processors, each a static member (its name as instance id).
    let wiring = Wiring {
        twilio: &twilio.announce,
        sheets_api: &sheets.announce.api,
        sheets_credentials: &credentials,
        keys: &keys,
        index_dir: scenario.dir.join("slang-index"),
        slang_listen: free_address(),
    };
    let mut processors = Vec::new();
    for processor in PROCESSORS {
        let metrics_listen = free_address();
        processors.push(Proc::spawn(
            processor,
            &scenario.formstream,
            processor_args(scenario, names, processor, &wiring, &metrics_listen),
            logs,
            Some(format!("http://{metrics_listen}")),
        )?);
    }
    for processor in &mut processors {
        processor.wait_ready(Duration::from_secs(180)).await?;
    }
    let mut all = vec![gateway];
    all.extend(processors);
    let prometheus = match &scenario.prometheus {
        Some((binary, rules)) => {
            let targets: Vec<(&str, String)> = all
                .iter()
                .filter_map(|p| {
                    let job = if p.name == "gateway" {
                        "formstream-gateway"
                    } else {
                        "formstream-processor"
                    };
                    Some((
                        job,
                        p.metrics
                            .as_deref()?
                            .trim_start_matches("http://")
                            .to_owned(),
                    ))
                })
                .collect();
            Some(
                alerts::Prometheus::start(
                    binary,
                    rules,
                    &scenario.dir.join("prometheus"),
                    &targets,
                )
                .await?,
            )
        }
        None => None,
    };
    let procs: Procs = Arc::new(Mutex::new(all));

    // Load, faults and sampling, from the first POST.
    let ledger = Arc::new(Ledger::new(scenario.responses));
    let started = Instant::now();
    let first_post = std::time::SystemTime::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let (stop_sampling, sampling_stopped) = tokio::sync::watch::channel(false);
    let pid_files: Vec<(String, PathBuf)> = scenario
        .broker
        .iter()
        .map(|broker| ("broker".to_owned(), broker.pid_file()))
        .collect();
    let sampler = tokio::spawn(sample::run(
        procs.clone(),
        pid_files,
        twilio_admin.clone(),
        sheets_admin.clone(),
        ledger.clone(),
        started,
        samples.clone(),
        sampling_stopped,
    ));
    let plan = LoadPlan {
        gateway: gateway_url.clone(),
        api_key: API_KEY.to_owned(),
        rate: scenario.rate,
        batch: scenario.batch,
        concurrency: 16,
        correction_delay: Duration::from_secs(5),
    };
    let loader = tokio::spawn(load::run(workload.clone(), plan, ledger.clone(), started));
    let ingest = Duration::from_secs_f64(scenario.responses as f64 / scenario.rate);
    let (faults, restarts) = inject_faults(
        scenario,
        &procs,
        &twilio_admin,
        &sheets_admin,
        ingest,
        started,
    )
    .await?;
    loader.await.context("the loader panicked")??;
    let ingest_seconds = ledger.last_ack_us.load(Ordering::Relaxed) as f64 / 1e6;

    // Drain: every processor caught up and nothing finished for a few seconds. A drain past
    // its deadline is a failed check (with each processor's lag), and the checks still run.
    let drained = drain(scenario, &procs, &samples).await?;
    let _ = stop_sampling.send(true);
    let _ = sampler.await;
    let samples: Vec<Sample> = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let finished = finish_times(&samples);
    let last_effect_seconds = finished.values().copied().fold(0.0, f64::max);

    // Checks.
    let messages = twilio_admin.messages().await?;
    let rows = sheets_admin.rows().await?;
    let dead_letter_topics: Vec<(String, String)> = PROCESSORS
        .iter()
        .map(|p| ((*p).to_owned(), names.dlq(p)))
        .collect();
    let sources = checks::Sources {
        bootstrap: &scenario.bootstrap,
        responses_topic: &names.responses,
        flags_topic: &names.flags,
        dead_letter_topics: &dead_letter_topics,
        messages: &messages,
        rows: &rows,
        slang: &format!("http://{}", wiring.slang_listen),
        gateway: &gateway_url,
        api_key: API_KEY,
    };
    let mut checks = vec![drained];
    checks.extend(checks::run(&workload, &ledger, &sources).await?);
    let firings = match &prometheus {
        Some(prometheus) => Some(prometheus.firings(first_post).await?),
        None => None,
    };
    if let Some(firings) = &firings {
        checks.push(lag_alerts_check(
            &faults,
            firings,
            samples.last().map_or(0.0, |s| s.t),
        ));
    }
    let twilio_stats = twilio_admin.stats().await.unwrap_or_default();
    let sheets_stats = sheets_admin.stats().await.unwrap_or_default();
    let mut faults = faults;
    for proc in procs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        for (at, why) in &proc.exits {
            let at = at.duration_since(started).as_secs_f64();
            faults.push(FaultEvent {
                what: format!("unplanned exit, restarted: {why}"),
                target: Some(proc.name.clone()),
                start: at,
                end: at,
            });
        }
    }
    faults.sort_by(|a, b| a.start.total_cmp(&b.start));
    drop(procs);
    let solo = match scenario.solo_records {
        Some(limit) => solo_throughputs(scenario, names, &wiring, logs, limit).await?,
        None => BTreeMap::new(),
    };
    let refusals = ledger
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        run: names.run.clone(),
        responses: scenario.responses,
        forms: scenario.forms,
        rate: scenario.rate,
        acked: ledger.acked_total.load(Ordering::Relaxed),
        refused: ledger.refused.load(Ordering::Relaxed),
        retried: ledger.retried.load(Ordering::Relaxed),
        unavailable: ledger.unavailable.load(Ordering::Relaxed),
        refusals,
        ingest_seconds,
        last_effect_seconds,
        processed: processed_totals(&samples),
        finished,
        solo,
        faults,
        restarts,
        checks,
        firings,
        samples,
        twilio_writes: twilio_stats.writes,
        receipts: messages
            .iter()
            .filter(|m| m.body.contains("Ref RC"))
            .count(),
        sheets_writes: sheets_stats.writes,
        sheets_throttled: sheets_stats.throttled,
        loadavg_start,
        loadavg_end: loadavg(),
    })
}

/// The alerts on lag, of deploy/prometheus/alerts.yml.
const LAG_ALERTS: &[&str] = &[
    "FormstreamLagBehind",
    "FormstreamLagAboveSLO",
    "FormstreamConsumerStalled",
    "FormstreamConsumerLagGrowing",
];

/// The lag alerts of the processors that send through Twilio fired during its outage (or within
/// a minute of its end) and none of them is still firing at the end of the run.
fn lag_alerts_check(faults: &[FaultEvent], firings: &[alerts::Firing], end: f64) -> Check {
    let twilio_processors = ["receipts", "notify-collectors"];
    let Some(outage) = faults.iter().find(|f| f.what.starts_with("Twilio")) else {
        return Check {
            name: "the lag alerts fire during the Twilio outage and resolve after it".into(),
            passed: false,
            figures: "no Twilio outage in this run".into(),
        };
    };
    let lag: Vec<&alerts::Firing> = firings
        .iter()
        .filter(|f| LAG_ALERTS.contains(&f.alert.as_str()))
        .filter(|f| {
            f.processor
                .as_deref()
                .is_some_and(|p| twilio_processors.contains(&p))
        })
        .collect();
    let during: Vec<&&alerts::Firing> = lag
        .iter()
        .filter(|f| f.from >= outage.start && f.from <= outage.end + 60.0)
        .collect();
    let still = lag.iter().filter(|f| f.to >= end - 3.0).count();
    let first = during.iter().map(|f| f.from).fold(f64::INFINITY, f64::min);
    let resolved = lag.iter().map(|f| f.to).fold(0.0, f64::max);
    Check {
        name: "the lag alerts fire during the Twilio outage and resolve after it".into(),
        passed: !during.is_empty() && still == 0,
        figures: format!(
            "outage {:.0}-{:.0} s; {} lag alert series of receipts and notify-collectors fired, the first at {} s; the last resolved at {resolved:.0} s; still firing at the end {still}; all firings (any alert, any processor): {}",
            outage.start,
            outage.end,
            during.len(),
            if first.is_finite() {
                format!("{first:.0}")
            } else {
                "-".into()
            },
            firings.len()
        ),
    }
}

/// Per processor, the records it finished over all its lives: the growth of its counter, which
/// starts again from 0 at each restart.
fn processed_totals(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut last: BTreeMap<&str, f64> = BTreeMap::new();
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    for sample in samples {
        for (name, p) in sample.processors.iter().filter(|(_, p)| p.up) {
            let previous = last.insert(name, p.ok).unwrap_or(0.0);
            let grown = if p.ok >= previous {
                p.ok - previous
            } else {
                p.ok
            };
            *totals.entry(name.clone()).or_default() += grown;
        }
    }
    totals
}

/// A solo run's progress: the count of finished records and when it last grew.
type SoloProgress = (f64, Instant);

/// Each of [`SOLO`] alone (every process of the run stopped but the fakes), as a new consumer
/// group over the run's records from the start, with topics and an index of its own: records
/// finished per second from its process start to its `limit`-th, or to its last when it caught
/// up before (nothing finished for 5 s). Startup and group join are counted: the figure is what
/// a fresh process achieves, never more.
async fn solo_throughputs(
    scenario: &Scenario,
    names: &Names,
    wiring: &Wiring<'_>,
    logs: &Path,
    limit: usize,
) -> anyhow::Result<BTreeMap<String, Solo>> {
    let kafka = formstream_core::config::KafkaArgs {
        bootstrap: scenario.bootstrap.clone(),
        properties: Vec::new(),
    };
    let flags = names.solo("validate").flags;
    formstream_core::topics::ensure_topics(
        &kafka,
        &[formstream_core::topics::TopicSpec {
            name: flags,
            partitions: scenario.partitions,
            replication_factor: 1,
            config: Vec::new(),
        }],
        Duration::from_secs(30),
    )
    .await?;
    let client = reqwest::Client::new();
    let mut solo = BTreeMap::new();
    for processor in SOLO {
        let wiring = Wiring {
            index_dir: scenario.dir.join("solo-slang-index"),
            slang_listen: free_address(),
            ..*wiring
        };
        let metrics_listen = free_address();
        let metrics = format!("http://{metrics_listen}");
        let args = processor_args(
            scenario,
            &names.solo(processor),
            processor,
            &wiring,
            &metrics_listen,
        );
        let name = format!("solo-{processor}");
        let started = Instant::now();
        let mut proc = Proc::spawn(
            &name,
            &scenario.formstream,
            args,
            logs,
            Some(metrics.clone()),
        )?;
        proc.wait_ready(Duration::from_secs(180)).await?;
        let progress: Mutex<SoloProgress> = Mutex::new((0.0, started));
        let attempt = || {
            let running = proc.check_running();
            let (client, metrics, progress) = (&client, &metrics, &progress);
            async move {
                running?;
                let text = match client
                    .get(format!("{metrics}/metrics"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    Ok(response) => response.text().await.ok(),
                    Err(_) => None,
                };
                let now = Instant::now();
                let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(now_ok) = text.as_deref().map(sample::ok_records)
                    && now_ok > p.0
                {
                    *p = (now_ok, now);
                }
                anyhow::Ok(*p)
            }
        };
        let caught_up = |(ok, grown_at): &SoloProgress| {
            *ok > 0.0 && grown_at.elapsed() > Duration::from_secs(5)
        };
        let (ok, grown_at) = poll_until(
            Duration::from_secs(300),
            Duration::from_millis(200),
            attempt,
            |p| p.0 >= limit as f64 || caught_up(p),
        )
        .await?;
        drop(proc);
        if ok == 0.0 {
            eprintln!("e2e: solo {processor}: no record finished to measure");
            continue;
        }
        let measured = Solo {
            records: ok,
            seconds: (grown_at - started).as_secs_f64(),
        };
        eprintln!(
            "e2e: solo {processor}: {:.0} records in {:.1} s, {:.0}/s",
            measured.records,
            measured.seconds,
            measured.rate()
        );
        solo.insert((*processor).to_owned(), measured);
    }
    Ok(solo)
}

/// Per processor, the time of the last sample at which its finished count grew (1 s resolution).
fn finish_times(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut last: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut finished = BTreeMap::new();
    for sample in samples {
        for (name, p) in &sample.processors {
            if !p.up {
                continue;
            }
            let entry = last.entry(name.clone()).or_insert((p.ok, sample.t));
            // A restart starts the counter again from 0: any change is progress.
            if p.ok != entry.0 {
                finished.insert(name.clone(), sample.t);
            }
            *entry = (p.ok, sample.t);
        }
    }
    finished
}

/// The fault plan: each fault at a time drawn from the seed, within the ingest window. A kill
/// keeps clear of the broker restart, of the outage of its own target (so that its first effect
/// after the restart can come at once) and of the other kills of the same processor.
fn plan_faults(scenario: &Scenario, ingest: Duration) -> anyhow::Result<Vec<(f64, Planned)>> {
    let t = ingest.as_secs_f64();
    let mut plan: Vec<(f64, Planned)> = Vec::new();
    // Windows no kill of a processor may fall in: (processor or all, from, to).
    let mut busy: Vec<(Option<&str>, f64, f64)> = Vec::new();
    let outage_start = 0.35 * t;
    plan.push((outage_start, Planned::TwilioDown(scenario.twilio_outage)));
    for processor in ["receipts", "notify-collectors"] {
        busy.push((
            Some(processor),
            outage_start - 5.0,
            outage_start + scenario.twilio_outage.as_secs_f64() + 5.0,
        ));
    }
    if scenario.broker.is_some() {
        plan.push((0.15 * t, Planned::BrokerRestart));
        busy.push((None, 0.15 * t - 5.0, 0.15 * t + 45.0));
    }
    if let Some(duration) = scenario.sheets_429 {
        let at = 0.7 * t;
        plan.push((at, Planned::SheetsDown(duration)));
        busy.push((Some("sheets"), at - 5.0, at + duration.as_secs_f64() + 5.0));
    }
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    for processor in PROCESSORS {
        for _ in 0..scenario.kills_per_processor {
            let free = |at: f64, busy: &[(Option<&str>, f64, f64)]| {
                !busy.iter().any(|(who, a, b)| {
                    who.is_none_or(|w| w == *processor) && (*a..*b).contains(&at)
                })
            };
            let at = (0..10_000)
                .map(|_| rng.random_range(0.05 * t..0.9 * t))
                .find(|at| free(*at, &busy))
                .with_context(|| {
                    format!(
                        "no room for {} kills of {processor} in {t:.0} s of load",
                        scenario.kills_per_processor
                    )
                })?;
            // 10 s apart at least, so that each restart of a processor is measured on its own.
            busy.push((Some(processor), at - 10.0, at + 10.0));
            plan.push((at, Planned::Kill(processor)));
        }
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(plan)
}

#[derive(Debug, Clone)]
enum Planned {
    Kill(&'static str),
    TwilioDown(Duration),
    SheetsDown(Duration),
    BrokerRestart,
}

async fn inject_faults(
    scenario: &Scenario,
    procs: &Procs,
    twilio: &FakeAdmin,
    sheets: &FakeAdmin,
    ingest: Duration,
    started: Instant,
) -> anyhow::Result<(Vec<FaultEvent>, Vec<Restart>)> {
    let mut events = Vec::new();
    let mut watches = Vec::new();
    let mut outages = Vec::new();
    for (at, fault) in plan_faults(scenario, ingest)? {
        let due = started + Duration::from_secs_f64(at);
        tokio::time::sleep_until(due.into()).await;
        let start = started.elapsed().as_secs_f64();
        match fault {
            Planned::Kill(processor) => {
                let metrics = {
                    let mut procs = procs.lock().unwrap_or_else(|p| p.into_inner());
                    let proc = procs
                        .iter_mut()
                        .find(|p| p.name == processor)
                        .context("a processor of the scenario")?;
                    proc.kill_and_restart()?;
                    proc.metrics.clone().unwrap_or_default()
                };
                eprintln!("e2e: {start:.1}s kill -9 {processor}, restarted");
                let at = started.elapsed().as_secs_f64();
                watches.push(tokio::spawn(first_effect(
                    processor.to_owned(),
                    metrics,
                    at,
                )));
                events.push(FaultEvent {
                    what: "kill -9".into(),
                    target: Some(processor.to_owned()),
                    start,
                    end: at,
                });
            }
            // An outage runs beside the plan, so that the faults due during it come on time.
            Planned::TwilioDown(duration) => {
                eprintln!("e2e: {start:.1}s Twilio down for {duration:?}");
                outages.push(tokio::spawn(outage(
                    twilio.clone(),
                    "Twilio down (503)",
                    duration,
                    started,
                )));
            }
            Planned::SheetsDown(duration) => {
                eprintln!("e2e: {start:.1}s Sheets answers 429 for {duration:?}");
                outages.push(tokio::spawn(outage(
                    sheets.clone(),
                    "Sheets 429s",
                    duration,
                    started,
                )));
            }
            Planned::BrokerRestart => {
                let Some(broker) = &scenario.broker else {
                    continue;
                };
                eprintln!("e2e: {start:.1}s broker restart");
                let status = tokio::task::spawn_blocking({
                    let mut command = broker.command("restart");
                    move || command.status()
                })
                .await??;
                anyhow::ensure!(status.success(), "restarting the broker failed ({status})");
                events.push(FaultEvent {
                    what: "broker restart".into(),
                    target: None,
                    start,
                    end: started.elapsed().as_secs_f64(),
                });
            }
        }
        procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .try_for_each(Proc::restart_if_exited)?;
    }
    for outage in outages {
        events.push(outage.await??);
    }
    events.sort_by(|a, b| a.start.total_cmp(&b.start));
    let mut restarts = Vec::new();
    for watch in watches {
        restarts.push(watch.await?);
    }
    Ok((events, restarts))
}

/// One fake down for `duration` (Twilio answers 503, Sheets 429), then up again.
async fn outage(
    fake: FakeAdmin,
    what: &str,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<FaultEvent> {
    let start = started.elapsed().as_secs_f64();
    fake.set_down(true).await?;
    tokio::time::sleep(duration).await;
    fake.set_down(false).await?;
    Ok(FaultEvent {
        what: what.into(),
        target: None,
        start,
        end: started.elapsed().as_secs_f64(),
    })
}

/// Polls a restarted processor's /metrics every 100 ms until it reports a finished record.
async fn first_effect(processor: String, metrics: String, at: f64) -> Restart {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let attempt = || {
        let scrape = client
            .get(format!("{metrics}/metrics"))
            .timeout(Duration::from_millis(500))
            .send();
        async move {
            let text = match scrape.await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            anyhow::Ok(sample::ok_records(&text) > 0.0)
        }
    };
    let effected = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        attempt,
        |effected| *effected,
    )
    .await
    .unwrap_or(false);
    Restart {
        processor,
        at,
        first_effect: effected.then(|| started.elapsed().as_secs_f64()),
    }
}

/// Waits until every processor has caught up (lag of at most one record per partition: a
/// partition written with transactions ends with a commit marker, which no consumer finishes) and
/// no processor finished anything for 5 s; at the deadline, says which did not.
async fn drain(
    scenario: &Scenario,
    procs: &Procs,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> anyhow::Result<Check> {
    let started = Instant::now();
    let slack = f64::from(scenario.partitions);
    let attempt = || {
        let state = caught_up(procs, samples, slack);
        async move { state }
    };
    let (quiet, last) = poll_until(
        scenario.drain_deadline,
        Duration::from_millis(500),
        attempt,
        |(quiet, _)| *quiet,
    )
    .await?;
    let waited = started.elapsed();
    let lags: Vec<String> = last
        .map(|s| {
            s.processors
                .iter()
                .map(|(name, p)| {
                    format!("{name} {} records, {:.0} s", p.lag_records, p.lag_seconds)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Check {
        name: "every processor caught up after the load and the faults".into(),
        passed: quiet,
        figures: format!(
            "{} after {:.0} s (deadline {:.0} s); lag at the end: {}",
            if quiet { "caught up" } else { "NOT caught up" },
            waited.as_secs_f64(),
            scenario.drain_deadline.as_secs_f64(),
            lags.join(", ")
        ),
    })
}

/// Whether every processor runs, is within `slack` records of the end of its topic and finished
/// nothing over the last six samples (5 s); with the latest sample. An error if a process died.
fn caught_up(
    procs: &Procs,
    samples: &Mutex<Vec<Sample>>,
    slack: f64,
) -> anyhow::Result<(bool, Option<Sample>)> {
    procs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter_mut()
        .try_for_each(Proc::restart_if_exited)?;
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    let recent: Vec<&Sample> = samples.iter().rev().take(6).collect();
    let quiet = recent.len() == 6
        && recent.iter().all(|s| {
            PROCESSORS.iter().all(|p| {
                s.processors
                    .get(*p)
                    .is_some_and(|x| x.up && x.lag_records <= slack)
            })
        })
        && PROCESSORS.iter().all(|p| {
            let oks: Vec<f64> = recent
                .iter()
                .filter_map(|s| s.processors.get(*p).map(|x| x.ok))
                .collect();
            oks.windows(2).all(|w| w[0] == w[1])
        });
    Ok((quiet, recent.first().map(|s| (*s).clone())))
}
