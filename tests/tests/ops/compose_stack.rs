//! The whole compose stack, built and run: the commands of docs/operations.md, as a
//! user types them, with this test's own project name, image tag and host ports so it runs beside
//! the shared broker, `formstream dev` and other runs of itself.
//!
//! `deploy/docker/build.sh` builds the images (the formstream image from the debug binary the
//! test suite runs, its debug sections split off by deploy/split-debuginfo.sh), `docker-compose -f docker-compose.yml -f docker-compose.offline.yml
//! up -d` starts Kafka, the topics job, the gateway, every processor and Prometheus; then a form
//! with rules, a receipt, slang and a sheets export gets responses through the published port
//! (the request bodies of docs/operations.md's session, deploy/docker/session/*.json),
//! and what every processor did is read where a user would: the SMS outboxes and the CSV in their
//! volumes (`docker-compose exec`), the flags API, the slang search and Prometheus' targets and
//! series. The stack and the image are removed at the end, also when the test fails (after
//! printing the services' logs).
//!
//! Without a Docker daemon (`docker version` fails for DOCKER_HOST) or docker-compose the test is
//! skipped with a message, except in CI, where it fails.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use formstream_tests::deploy::{
    free_port, processors, read_repo_file, repo_root, runnable, yaml_documents,
};
use formstream_tests::runtime::formstream_binary;
use formstream_tests::unique;
use serde_json::Value;
use tokio::process::Command;

/// The stack's files, as docs/operations.md runs them.
const COMPOSE_FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.offline.yml"];
/// The development key of organisation `acme` (deploy/local/api-keys.toml, mounted by the stack).
const ACME: &str = "Bearer dev-acme-key";
/// Starting the stack: the gateway ready (Kafka, the topics job and the gateway's forms view).
const START_DEADLINE: Duration = Duration::from_secs(240);
/// Everything a response causes (flags, SMS, CSV rows, index commits, a Prometheus scrape).
const EFFECT_DEADLINE: Duration = Duration::from_secs(120);

/// Runs a command to completion; its stdout, or a panic with its stderr.
async fn run(what: &str, command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What stops the test from running here, if anything.
async fn missing_docker() -> Option<String> {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(30), version).await {
        Err(_) => return Some("`docker version` did not answer within 30 s".to_owned()),
        Ok(Err(e)) => return Some(format!("the docker CLI cannot run ({e})")),
        Ok(Ok(output)) if !output.status.success() => {
            return Some(format!(
                "no Docker daemon answers (DOCKER_HOST={}; deploy/docker/dockerd.sh starts one): {}",
                std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".to_owned()),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Ok(_)) => {}
    }
    match Command::new("docker-compose")
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(output) if output.status.success() => None,
        _ => Some("docker-compose is not installed (apt-get install docker-compose)".to_owned()),
    }
}

/// One run of the stack: its compose project, image and host ports. Dropping it takes the stack
/// down with its volumes and removes the image.
struct Stack {
    project: String,
    image: String,
    gateway: u16,
    slang: u16,
    kafka: u16,
    prometheus: u16,
}

impl Stack {
    fn new() -> Self {
        let id = &unique()[..10];
        Stack {
            project: format!("fstest{id}"),
            image: format!("formstream:test-{id}"),
            gateway: free_port(),
            slang: free_port(),
            kafka: free_port(),
            prometheus: free_port(),
        }
    }

    /// The variables docker-compose.yml reads: this run's image and host ports.
    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("FORMSTREAM_IMAGE", self.image.clone()),
            ("FORMSTREAM_COMPOSE_GATEWAY_PORT", self.gateway.to_string()),
            ("FORMSTREAM_COMPOSE_SLANG_PORT", self.slang.to_string()),
            ("FORMSTREAM_COMPOSE_KAFKA_PORT", self.kafka.to_string()),
            (
                "FORMSTREAM_COMPOSE_PROMETHEUS_PORT",
                self.prometheus.to_string(),
            ),
        ]
    }

    /// The compose arguments naming this run's project and the stack's files.
    fn compose_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_owned(), self.project.clone()];
        for file in COMPOSE_FILES {
            args.push("-f".to_owned());
            args.push(file.to_owned());
        }
        args
    }

    /// `docker-compose -p <project> -f ... -f ... <args>` in the repository, with this run's env.
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(repo_root())
            .args(self.compose_args())
            .args(args)
            .envs(self.env());
        command
    }

    /// A file of a service's volume, as `docker-compose exec -T <service> cat <path>` prints it
    /// (empty while it does not exist yet).
    async fn read(&self, service: &str, path: &str) -> String {
        let output = self
            .compose(&[
                "exec",
                "-T",
                service,
                "sh",
                "-c",
                &format!("cat {path} 2>/dev/null || true"),
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker-compose exec");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let sync = |args: &[&str]| {
            let mut command = std::process::Command::new("docker-compose");
            command
                .current_dir(repo_root())
                .args(self.compose_args())
                .args(args)
                .envs(self.env())
                .stdin(Stdio::null());
            command
        };
        if std::thread::panicking() {
            if let Ok(output) = sync(&["ps"]).output() {
                eprintln!("{}", String::from_utf8_lossy(&output.stdout));
            }
            if let Ok(output) = sync(&["logs", "--no-color", "--tail=40"]).output() {
                eprintln!("{}", String::from_utf8_lossy(&output.stdout));
            }
        }
        let _ = sync(&["down", "--volumes", "--remove-orphans", "--timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The processors `up` starts: every registered one whose service in docker-compose.yml is in
/// no profile (the `forward` example is in the `example` profile: its output topic comes first).
fn started_processors() -> BTreeSet<String> {
    let compose = yaml_documents("docker-compose.yml")
        .pop()
        .expect("docker-compose.yml has a document");
    processors()
        .into_iter()
        .filter(|name| compose["services"][name.as_str()].get("profiles").is_none())
        .collect()
}

/// Polls `probe` until it gives a value, or panics with `what` and the last thing seen.
async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= deadline => {
                panic!("{what} within {deadline:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// GET with the acme key: status and JSON body (Null when the body is not JSON).
async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let response = http
        .get(url)
        .header("Authorization", ACME)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// POST or PUT with the acme key; panics unless the answer is `expected`.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: &Value,
    expected: u16,
) {
    let response = http
        .request(method, url)
        .header("Authorization", ACME)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, expected, "{url}: {text}");
}

/// A request body of the documented session (deploy/docker/session/<name>.json), as curl sends it.
fn session(name: &str) -> Value {
    let text = read_repo_file(&format!("deploy/docker/session/{name}.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("deploy/docker/session/{name}.json: {e}"))
}

/// What the session asks, as docs/operations.md's commands ask it (checked by
/// `the_documented_commands_are_the_ones_this_test_runs`).
const READYZ: &str = "/readyz";
const FORMS: &str = "/v1/forms";
const RESPONSES: &str = "/v1/forms/household/responses";
const FLAGS: &str = "/v1/forms/household/flags";
const RESOLVED: &str = "/v1/forms/household/flags?status=resolved";
const SLANG_CITIES: &str = "/v1/forms/household/slang/local_words/cities?word=scene";
const SLANG_WORDS: &str = "/v1/forms/household/slang/local_words/words?city=pune";
/// Where receipts and notify-collectors write their SMS, and sheets its CSV (in their volumes).
const OUTBOX: &str = "data/sms-outbox.jsonl";
const CSV: &str = "data/sheets/acme/household.csv";

/// The response ids and phones of the session's files.
const ASHA: &str = "0b9e4a44-2d0c-4c41-9a57-6f2d8b0f4e11";
const RAVI: &str = "5f1c9e2a-7b3d-4e8f-a1c2-93d4e5f6a7b8";
const COLLECTOR_PHONE: &str = "+919876500017";

/// The JSON lines of an outbox file.
fn outbox_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("outbox line {l:?}: {e}")))
        .collect()
}

/// Prometheus' instant query: the result vector.
async fn query(
    http: &reqwest::Client,
    prometheus: &str,
    promql: &str,
) -> Result<Vec<Value>, String> {
    let body: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    body["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_stack_serves_a_form_end_to_end() {
    let test = "ops::compose_stack::the_offline_stack_serves_a_form_end_to_end";
    if !runnable(test, missing_docker().await) {
        return;
    }
    let stack = Stack::new();
    let started = Instant::now();

    // 1. The images, then the stack.
    let binary = formstream_binary();
    run(
        "deploy/docker/build.sh",
        Command::new(repo_root().join("deploy/docker/build.sh")).args([
            "--binary",
            &binary.to_string_lossy(),
            "--tag",
            &stack.image,
        ]),
    )
    .await;
    let built = started.elapsed();
    run("docker-compose up", &mut stack.compose(&["up", "-d"])).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    eventually(START_DEADLINE, "the gateway is ready", || async {
        match get(&http, &stack.url(stack.gateway, READYZ)).await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    eprintln!(
        "compose_stack: images built in {:.0?}, gateway ready {:.0?} after `up`",
        built,
        started.elapsed() - built
    );

    // 2. A form with every action, and two responses through the published port: Ravi's
    // savings exceed his income (flagged), Asha's do not.
    let gateway = |path: &str| stack.url(stack.gateway, path);
    send(
        &http,
        reqwest::Method::POST,
        &gateway(FORMS),
        &session("form"),
        201,
    )
    .await;
    let responses = gateway(RESPONSES);
    send(
        &http,
        reqwest::Method::POST,
        &responses,
        &session("asha"),
        202,
    )
    .await;
    send(
        &http,
        reqwest::Method::POST,
        &responses,
        &session("ravi"),
        202,
    )
    .await;

    // 3. validate flagged Ravi's response: the flags API shows it open, with the rule.
    let flags = gateway(FLAGS);
    let open = eventually(
        EFFECT_DEADLINE,
        "the flags API lists Ravi's flag",
        || async {
            let (status, body) = get(&http, &flags).await?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if status == 200 && items.len() == 1 {
                Ok(items[0].clone())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    assert_eq!(open["response_id"], RAVI);
    assert_eq!(open["violations"][0]["rule_id"], "savings-le-income");

    // notify-collectors texted the collector once, with the correction link through the gateway's
    // published port; the SMS is in its volume's outbox.
    let collector_sms = eventually(
        EFFECT_DEADLINE,
        "the collector's SMS is in the outbox",
        || async {
            let lines = outbox_lines(&stack.read("notify-collectors", OUTBOX).await);
            if lines.is_empty() {
                Err("no SMS yet".to_owned())
            } else {
                Ok(lines)
            }
        },
    )
    .await;
    assert_eq!(collector_sms.len(), 1, "{collector_sms:?}");
    assert_eq!(collector_sms[0]["to"], COLLECTOR_PHONE);
    let body = collector_sms[0]["body"].as_str().expect("an SMS body");
    assert!(
        body.contains(RAVI) && body.contains("Savings cannot exceed income"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "http://localhost:{}/v1/forms/household/responses/{RAVI}",
            stack.gateway
        )),
        "the correction link leads to the published gateway: {body}"
    );

    // 4. Ravi's correction passes the rules: the flag is resolved by revision 1.
    let correction = session("ravi-correction");
    assert_eq!(correction["response_id"], RAVI);
    send(
        &http,
        reqwest::Method::PUT,
        &gateway(&format!("{RESPONSES}/{RAVI}")),
        &correction,
        202,
    )
    .await;
    let resolved = gateway(RESOLVED);
    eventually(
        EFFECT_DEADLINE,
        "the flag is resolved by the correction",
        || async {
            let (status, body) = get(&http, &resolved).await?;
            match body["items"].as_array() {
                Some(items)
                    if status == 200
                        && items.len() == 1
                        && items[0]["resolved_by_revision"] == 1 =>
                {
                    Ok(())
                }
                _ => Err(format!("{status} {body}")),
            }
        },
    )
    .await;

    // 5. sheets wrote the CSV in its volume: a row per response, Ravi's rewritten in place by
    // his correction.
    let csv = eventually(
        EFFECT_DEADLINE,
        "the CSV holds both responses, Ravi's corrected",
        || async {
            let text = stack.read("sheets", CSV).await;
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let rows: Vec<csv::StringRecord> = reader.records().filter_map(Result::ok).collect();
            let ravi = rows.iter().find(|r| r.get(0) == Some(RAVI));
            if rows.len() == 2 && ravi.is_some_and(|r| r.get(1) == Some("1")) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert!(csv.starts_with("Response ID,Revision,"), "{csv}");
    assert!(
        csv.contains(ASHA) && csv.contains("Pune") && csv.contains("क्या scene है bhai"),
        "{csv}"
    );

    // 6. receipts texted each respondent once (a correction sends no second receipt).
    let receipts = eventually(
        EFFECT_DEADLINE,
        "both receipts are in the outbox",
        || async {
            let lines = outbox_lines(&stack.read("receipts", OUTBOX).await);
            if lines.len() >= 2 {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        },
    )
    .await;
    let to: BTreeSet<&str> = receipts.iter().filter_map(|r| r["to"].as_str()).collect();
    assert_eq!(
        to,
        BTreeSet::from(["+919876543210", "+919876543211"]),
        "{receipts:?}"
    );
    assert_eq!(receipts.len(), 2, "one receipt per response: {receipts:?}");
    for receipt in &receipts {
        let body = receipt["body"].as_str().expect("a receipt body");
        assert!(
            body.contains("for taking part in Household finances. Your receipt: RC"),
            "{body}"
        );
    }

    // 7. slang indexed the words per city; the search API answers through its published port.
    let words = stack.url(stack.slang, SLANG_CITIES);
    let cities = eventually(
        EFFECT_DEADLINE,
        "slang finds `scene` in both cities",
        || async {
            let (status, body) = get(&http, &words).await?;
            let cities: BTreeSet<String> = body["cities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["city"].as_str().map(str::to_owned))
                .collect();
            if status == 200 && cities.len() == 2 {
                Ok(cities)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    assert_eq!(
        cities,
        BTreeSet::from(["chennai".to_owned(), "pune".to_owned()])
    );
    let (status, top) = get(&http, &stack.url(stack.slang, SLANG_WORDS))
        .await
        .expect("the slang words query");
    assert_eq!(status, 200, "{top}");
    let pune_words: Vec<&str> = top["cities"][0]["words"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["word"].as_str())
        .collect();
    assert!(
        pune_words.contains(&"क्या"),
        "Devanagari words stay whole: {top}"
    );

    // 8. Prometheus scrapes the gateway and every processor, found by DNS on the compose network:
    // every target is up and each processor's own series are stored.
    let prometheus = stack.url(stack.prometheus, "");
    let expected = started_processors();
    eventually(
        EFFECT_DEADLINE,
        "Prometheus scrapes every processor and the gateway",
        || async {
            let up = query(&http, &prometheus, "up").await?;
            let down: Vec<&Value> = up.iter().filter(|s| s["value"][1] != "1").collect();
            let gateway_up = up
                .iter()
                .any(|s| s["metric"]["job"] == "formstream-gateway" && s["value"][1] == "1");
            let scraped: BTreeSet<String> = query(
                &http,
                &prometheus,
                "count by (processor) (formstream_processor_records_total)",
            )
            .await?
            .iter()
            .filter_map(|s| s["metric"]["processor"].as_str().map(str::to_owned))
            .collect();
            if down.is_empty()
                && gateway_up
                && up.len() == expected.len() + 1
                && scraped == expected
            {
                Ok(())
            } else {
                Err(format!("up: {up:?}; processors with records: {scraped:?}"))
            }
        },
    )
    .await;
    // 9. The console's Live page reads every started processor's circuit from its /metrics
    // (FORMSTREAM_CONSOLE_PROCESSOR_METRICS), none of them `unknown`.
    let live = stack.url(stack.gateway, "/console/api/live");
    eventually(
        EFFECT_DEADLINE,
        "the console's Live page knows every processor's circuit",
        || async {
            let (status, body) = get(&http, &live).await?;
            let processors = body["processors"].as_array().cloned().unwrap_or_default();
            let name = |p: &Value| p["processor"].as_str().unwrap_or_default().to_owned();
            let listed: BTreeSet<String> = processors.iter().map(name).collect();
            let unknown: Vec<String> = processors
                .iter()
                .filter(|p| p["circuit"] == "unknown")
                .map(name)
                .collect();
            if status == 200
                && !listed.is_empty()
                && listed.is_subset(&expected)
                && unknown.is_empty()
            {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    eprintln!(
        "compose_stack: done {:.0?} after the start",
        started.elapsed()
    );
    // 10. Drop takes the stack down (`docker-compose down --volumes`) and removes the image.
}

/// The `sh` block of docs/operations.md's "Without a registry" section.
fn documented_commands() -> String {
    let docs = read_repo_file("docs/operations.md");
    let section = docs
        .split_once("#### Without a registry")
        .expect("docs/operations.md has a section \"Without a registry\"")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the section has an sh block")
        .1;
    block
        .split_once("```")
        .expect("the sh block ends")
        .0
        .to_owned()
}

#[test]
fn the_documented_commands_are_the_ones_this_test_runs() {
    // The README sends users to docs/operations.md for Docker; its commands must be this test's
    // (with the default ports a user has), so that what CI proves is what a user types.
    let commands = documented_commands();
    let compose = format!(
        "docker-compose -f {} -f {}",
        COMPOSE_FILES[0], COMPOSE_FILES[1]
    );
    let mut expected = vec![
        "cargo build --release --bin formstream".to_owned(),
        "deploy/docker/build.sh".to_owned(),
        format!("{compose} up -d"),
        format!("localhost:8080{READYZ}"),
        format!("localhost:8080{FORMS} -H \"$K\" -H \"$H\" -d @deploy/docker/session/form.json"),
        format!("localhost:8080{FLAGS} -H \"$K\""),
        format!(
            "localhost:8080{RESPONSES}/{RAVI} \\\n  -H \"$K\" -H \"$H\" -d @deploy/docker/session/ravi-correction.json"
        ),
        format!("'localhost:8080{RESOLVED}' -H \"$K\""),
        format!("{compose} exec -T notify-collectors cat {OUTBOX}"),
        format!("{compose} exec -T receipts cat {OUTBOX}"),
        format!("{compose} exec -T sheets cat {CSV}"),
        format!("'localhost:8090{SLANG_CITIES}' -H \"$K\""),
        format!("'localhost:8090{SLANG_WORDS}' -H \"$K\""),
        "'localhost:9090/api/v1/query?query=up'".to_owned(),
        format!("{compose} down --volumes"),
    ];
    for response in ["asha", "ravi"] {
        expected.push(format!(
            "localhost:8080{RESPONSES} -H \"$K\" -H \"$H\" -d @deploy/docker/session/{response}.json"
        ));
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|command| !commands.contains(command.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md's commands lack what compose_stack runs: {missing:#?}\n{commands}"
    );
    // The README's Docker section starts the same stack the same way.
    let readme = read_repo_file("README.md");
    for command in &expected[..3] {
        assert!(
            readme.contains(command.as_str()),
            "README.md lacks `{command}`"
        );
    }
    // The key the test sends is the documented one, and the session's files are its bodies.
    assert!(commands.contains(&format!("K='Authorization: {ACME}'")));
    assert_eq!(session("ravi-correction")["response_id"], RAVI);
    assert_eq!(session("asha")["response_id"], ASHA);
}
