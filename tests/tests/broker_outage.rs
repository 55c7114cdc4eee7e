//! The broker stopped in the middle of a test (docs/design.md, promise 1:
//! acknowledged means durable).
//!
//! A private broker instance (its own name, ports and data, started and stopped with the project's
//! `deploy/local/kafka.sh`) is stopped while clients keep submitting, so the shared broker and the
//! other tests are not disturbed.
//!
//! Invariants proved here: while Kafka is away the gateway answers 503 with Retry-After within a
//! bounded time and never 2xx; once Kafka is back it accepts again; every response that got a
//! 2xx is on the topic, where the gateway said; and a response retried while the broker holds its
//! record unanswered is on the topic once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use formstream_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

const PRODUCE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most any request may take: the produce timeout plus slack for scheduling on a busy machine.
const REQUEST_BOUND: Duration = Duration::from_secs(4);
/// `kafka.sh start` waits for the broker itself; this bounds the whole command.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// A broker instance of this test only. Dropping it stops the broker and deletes its files, even
/// when the test failed.
struct PrivateBroker {
    broker: BrokerInstance,
    dir: PathBuf,
}

impl PrivateBroker {
    fn new() -> Self {
        let broker = BrokerInstance::new("outage");
        let home = std::env::var_os("FORMSTREAM_KAFKA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/formstream/kafka")
            });
        let dir = home.join("instances").join(&broker.instance);
        PrivateBroker { broker, dir }
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    fn script(&self, command: &str) -> std::process::Command {
        self.broker.script(command)
    }

    async fn run(&self, command: &str) {
        let mut cmd = tokio::process::Command::from(self.script(command));
        cmd.kill_on_drop(true);
        let output = tokio::time::timeout(SCRIPT_DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "kafka.sh {command} ({}) did not finish within {SCRIPT_DEADLINE:?}",
                    self.broker.instance
                )
            })
            .unwrap_or_else(|e| panic!("running kafka.sh {command}: {e}"));
        assert!(
            output.status.success(),
            "kafka.sh {command} ({}) failed: {}\n{}",
            self.broker.instance,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn start(&self) {
        self.run("start").await;
    }

    async fn stop(&self) {
        self.run("stop").await;
    }

    /// Freezes the broker process (SIGSTOP): connections stay open and what clients send waits,
    /// unanswered, in its sockets (a long GC pause, a frozen VM).
    fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (SIGCONT): it then handles what waited in its sockets.
    fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid_file = self.dir.join("kafka.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()));
        let status = std::process::Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .unwrap_or_else(|e| panic!("kill {signal} {}: {e}", pid.trim()));
        assert!(status.success(), "kill {signal} {}: {status}", pid.trim());
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // A broker a failed test left frozen would ignore its SIGTERM.
        let _ = std::fs::read_to_string(self.dir.join("kafka.pid")).map(|pid| {
            std::process::Command::new("kill")
                .args(["-CONT", pid.trim()])
                .status()
        });
        match self
            .script("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "could not stop the private broker {}: {other:?}",
                self.broker.instance
            ),
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not delete {}: {error}", self.dir.display());
        }
    }
}

/// What one submission was told.
#[derive(Debug, Clone)]
struct Outcome {
    response_id: String,
    started: Instant,
    elapsed: Duration,
    /// 0 when the HTTP request itself failed.
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: Value,
}

type Log = Arc<Mutex<Vec<Outcome>>>;

fn count(log: &Log, since: Instant, status: u16) -> usize {
    log.lock()
        .expect("outcome log")
        .iter()
        .filter(|o| o.started >= since && o.status == status)
        .count()
}

async fn submit_until_stopped(
    app_url: String,
    client: reqwest::Client,
    form: String,
    log: Log,
    stop: Arc<AtomicBool>,
) {
    let url = format!("{app_url}/v1/forms/{form}/responses");
    while !stop.load(Ordering::Relaxed) {
        let response_id = uuid::Uuid::new_v4().to_string();
        let mut body = valid_response("During an outage");
        body["response_id"] = json!(response_id);
        let started = Instant::now();
        let outcome = match client
            .post(&url)
            .bearer_auth(ACME_KEY)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let status = response.status().as_u16();
                let retry_after = header("retry-after");
                let content_type = header("content-type");
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                Outcome {
                    response_id,
                    started,
                    elapsed: started.elapsed(),
                    status,
                    retry_after,
                    content_type,
                    body,
                }
            }
            Err(error) => Outcome {
                response_id,
                started,
                elapsed: started.elapsed(),
                status: 0,
                retry_after: None,
                content_type: None,
                body: json!({"client_error": error.to_string()}),
            },
        };
        let pause = outcome.status == 503;
        log.lock().expect("outcome log").push(outcome);
        if pause {
            // A well-behaved client backs off a little (not the full Retry-After, to keep the test short).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A private broker, started, and a gateway on it answering within `produce_timeout`.
async fn broker_and_gateway(produce_timeout: Duration) -> (PrivateBroker, TestGateway) {
    let broker = PrivateBroker::new();
    broker.start().await;
    let app = spawn_gateway(
        GatewayOptions {
            bootstrap: broker.bootstrap(),
            responses_partitions: 3,
            ..GatewayOptions::default()
        }
        .arg(
            "--produce-timeout",
            format!("{}ms", produce_timeout.as_millis()),
        )
        .arg("--retry-after-secs", 1),
    )
    .await;
    (broker, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gets_503_with_retry_after_and_nothing_acknowledged_is_lost() {
    let (broker, app) = broker_and_gateway(PRODUCE_TIMEOUT).await;
    let form = app.create_typical_form().await;

    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let submitters: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(submit_until_stopped(
                app.address.clone(),
                client.clone(),
                form.clone(),
                log.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let test_start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&log, test_start, 202) >= 30
        })
        .await,
        "the gateway accepts responses while the broker is up: {:?}",
        log.lock().expect("log").last()
    );

    broker.stop().await;
    let stopped = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&log, stopped, 503) >= 6
        })
        .await,
        "with the broker stopped, the gateway answers 503: {:?}",
        log.lock().expect("log").last()
    );
    assert_eq!(
        count(&log, stopped, 202),
        0,
        "no 2xx while the broker is down"
    );

    // A batch whose items all go unacknowledged is a 503 as a whole.
    let batch_started = Instant::now();
    let batch = app
        .acme(Method::POST, "/v1/responses/batch")
        .json(&json!({"items": [
            {"form_id": form, "collector": {"id": "c"}, "answers": {"name": "Batch", "income": 1}},
            {"form_id": form, "collector": {"id": "c"}, "answers": {"name": "Batch", "income": 2}},
        ]}))
        .send()
        .await
        .expect("POST batch during the outage");
    assert!(
        batch_started.elapsed() <= REQUEST_BOUND,
        "a batch is answered in bounded time too"
    );
    assert!(
        batch.headers().contains_key("retry-after"),
        "a 503 batch says when to retry"
    );
    assert_problem(batch, 503).await;
    assert_eq!(
        count(&log, stopped, 202),
        0,
        "no 2xx while the broker is down"
    );

    broker.start().await;
    let restarted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(90), || async {
            count(&log, restarted, 202) >= 10
        })
        .await,
        "once the broker is back, the gateway accepts responses again: {:?}",
        log.lock().expect("log").last()
    );
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters {
        submitter.await.expect("a submitter task panicked");
    }

    let outcomes = log.lock().expect("log").clone();
    let unexpected: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != 202 && o.status != 503)
        .collect();
    assert!(
        unexpected.is_empty(),
        "every answer is 202 or 503: {unexpected:#?}"
    );
    let slow: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.elapsed > REQUEST_BOUND)
        .collect();
    assert!(
        slow.is_empty(),
        "every request is answered within {REQUEST_BOUND:?}: {slow:#?}"
    );
    for outcome in outcomes.iter().filter(|o| o.status == 503) {
        let retry_after: u64 = outcome
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a 503 carries Retry-After in seconds: {outcome:#?}"));
        assert!(retry_after >= 1, "{outcome:#?}");
        assert_eq!(
            outcome.content_type.as_deref(),
            Some("application/problem+json"),
            "{outcome:#?}"
        );
        assert_eq!(outcome.body["status"], 503, "{outcome:#?}");
    }

    // Every acknowledged response is on the topic, where the gateway said.
    let accepted: HashMap<&str, &Outcome> = outcomes
        .iter()
        .filter(|o| o.status == 202)
        .map(|o| (o.response_id.as_str(), o))
        .collect();
    let landed = read_responses(
        &broker.bootstrap(),
        &app.topics.responses,
        accepted.len(),
        Duration::from_secs(60),
    )
    .await
    .expect("reading the private broker's responses topic");
    let on_topic: HashMap<&str, &Landed> = landed
        .iter()
        .map(|r| (r.response.response_id.as_str(), r))
        .collect();
    let missing: Vec<&&Outcome> = accepted
        .iter()
        .filter(|(id, _)| !on_topic.contains_key(*id))
        .map(|(_, o)| o)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged responses are missing from the topic: {missing:#?}",
        missing.len(),
        accepted.len()
    );
    for (id, outcome) in &accepted {
        let record = on_topic[id];
        assert_eq!(
            Some(i64::from(record.partition)),
            outcome.body["partition"].as_i64(),
            "{outcome:#?}"
        );
        assert_eq!(
            Some(record.offset),
            outcome.body["offset"].as_i64(),
            "{outcome:#?}"
        );
        assert_eq!(record.key.as_deref(), Some(form.as_str()));
    }
    let unacknowledged_but_landed = landed.len() - accepted.len();
    eprintln!(
        "outage test: {} requests, {} accepted, {} answered 503, {} records on the topic \
         ({unacknowledged_but_landed} landed after a 503: allowed, a retry with the same id is a duplicate)",
        outcomes.len(),
        accepted.len(),
        outcomes.iter().filter(|o| o.status == 503).count(),
        landed.len(),
    );

    app.stop().await.expect("the gateway stops cleanly");
    drop(broker);
}

/// Posts `items` as one batch; returns the HTTP status and each item's status (none for a batch
/// answered as a whole).
async fn post_batch(app: &TestGateway, items: &[Value]) -> (u16, Vec<u16>) {
    let answer = app
        .acme(Method::POST, "/v1/responses/batch")
        .json(&json!({ "items": items }))
        .send()
        .await
        .expect("POST batch");
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    let items = body["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| r["status"].as_u64().map_or(0, |s| s as u16))
                .collect()
        })
        .unwrap_or_default();
    (status, items)
}

/// The broker is frozen right after the gateway sent it a batch's records: it holds them in its
/// socket, unanswered. The client is told 503 and sends the batch again, as any client does, while
/// the broker is still frozen. Once the broker runs again it writes what it held, and every
/// response of the batch must be on the topic once: a gateway that gave up on the first records
/// and published the retry wrote each of them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_while_the_broker_holds_its_records_unanswered_is_published_once() {
    let (broker, app) = broker_and_gateway(Duration::from_secs(1)).await;
    let form = app.create_typical_form().await;
    let item = |name: String, income: usize| {
        json!({"form_id": form, "response_id": uuid::Uuid::new_v4().to_string(),
               "collector": {"id": "c"}, "answers": {"name": name, "income": income}})
    };
    // Connected to every partition's leader first, so that the frozen broker receives the batch.
    let warm: Vec<Value> = (0..30).map(|i| item(format!("Warm {i}"), i)).collect();
    let (status, statuses) = post_batch(&app, &warm).await;
    assert!(
        status == 207 && statuses.iter().all(|s| *s == 202),
        "{status} {statuses:?}"
    );

    let items: Vec<Value> = (0..20).map(|i| item(format!("Frozen {i}"), i)).collect();
    broker.pause();
    let (status, _) = post_batch(&app, &items).await;
    assert_eq!(status, 503, "no item is acknowledged by a frozen broker");
    for attempt in 0..3 {
        let (status, _) = post_batch(&app, &items).await;
        assert_eq!(
            status, 503,
            "retry {attempt}: still not acknowledged while the broker is frozen"
        );
    }
    broker.resume();
    let last = Mutex::new((0, Vec::new()));
    assert!(
        wait_until(Duration::from_secs(60), || async {
            let (status, statuses) = post_batch(&app, &items).await;
            let acknowledged = status == 207
                && statuses.len() == items.len()
                && statuses.iter().all(|s| *s == 202);
            *last.lock().expect("last answer") = (status, statuses);
            acknowledged
        })
        .await,
        "once the broker runs again, a retry of the batch is acknowledged: {:?}",
        last.lock().expect("last answer")
    );

    let expected = warm.len() + items.len();
    let landed = read_responses(
        &broker.bootstrap(),
        &app.topics.responses,
        expected,
        Duration::from_secs(60),
    )
    .await
    .expect("reading the private broker's responses topic");
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for record in &landed {
        *copies
            .entry(record.response.response_id.as_str())
            .or_default() += 1;
    }
    let frozen: Vec<(&str, usize)> = items
        .iter()
        .filter_map(|i| i["response_id"].as_str())
        .map(|id| (id, copies.get(id).copied().unwrap_or(0)))
        .collect();
    assert!(
        frozen.iter().all(|(_, n)| *n == 1),
        "every response of the retried batch is on the topic once: {frozen:?}"
    );
    assert_eq!(landed.len(), expected, "nothing else is on the topic");

    app.stop().await.expect("the gateway stops cleanly");
    drop(broker);
}
