//! A real Prometheus scrapes a real gateway and processor: the Debian `prometheus`
//! binary runs with a generated configuration (and the project's alert rules) on a free port, the
//! `formstream` binary runs the gateway and the journal processor on the shared broker with fresh
//! topics, a few responses go through, and Prometheus' HTTP API must then hold the lag and
//! throughput series with the labels the alerts and the dashboard rely on. Every wait polls with
//! a deadline; the Prometheus process and its data directory go away at the end.

use std::time::{Duration, Instant};

use formstream_tests::deploy::{ChildGuard, free_port, repo_root, topic_flags};
use formstream_tests::runtime::formstream_binary;
use formstream_tests::{bootstrap, delete_topics, unique};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(90);

/// Polls `query` on Prometheus until `accept` takes its result vector, or panics at the deadline.
async fn wait_for_query(
    http: &reqwest::Client,
    prometheus: &str,
    query: &str,
    guards: &mut [&mut ChildGuard],
    accept: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    let mut last = Value::Null;
    loop {
        for guard in guards.iter_mut() {
            guard.assert_running();
        }
        if let Ok(response) = http
            .get(format!("{prometheus}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await
            && let Ok(body) = response.json::<Value>().await
        {
            if let Some(result) = body["data"]["result"].as_array()
                && accept(result)
            {
                return result.clone();
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered {query} as expected; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_lag_and_throughput_with_their_labels() {
    let id = unique();
    let (forms, responses, flags) = (
        format!("scrape-{id}-forms"),
        format!("scrape-{id}-responses"),
        format!("scrape-{id}-flags"),
    );
    let bootstrap = bootstrap();
    let topic_args = topic_flags(&bootstrap, &forms, &responses, &flags);
    let created = std::process::Command::new(formstream_binary())
        .args(["topics", "create", "--responses-partitions", "2"])
        .args(&topic_args)
        .output()
        .expect("formstream topics create");
    assert!(created.status.success(), "{created:?}");

    let gateway_port = free_port();
    let mut gateway = ChildGuard::spawn(
        "the gateway",
        std::process::Command::new(formstream_binary())
            .args(["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")])
            .args(&topic_args)
            .arg("--api-keys-file")
            .arg(repo_root().join("deploy/local/api-keys.toml"))
            .args(["--create-topics", "false"]),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let metrics_port = free_port();
    let mut journal = ChildGuard::spawn(
        "the journal processor",
        std::process::Command::new(formstream_binary())
            .args(["process", "journal"])
            .args(&topic_args)
            .args(["--group-id", &format!("scrape-{id}-group")])
            .args(["--dlq-topic", &format!("scrape-{id}-dlq")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--commit-interval", "200ms", "--session-timeout", "6s"])
            .arg("--journal-path")
            .arg(dir.path().join("journal.jsonl")),
    );

    // Prometheus: 1 s scrapes and rule evaluations, the project's rules, its own port and TSDB.
    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             - job_name: formstream-gateway\n  static_configs: [{{targets: ['127.0.0.1:{gateway_port}']}}]\n\
             - job_name: formstream-processor\n  static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n",
            rules.display()
        ),
    )
    .expect("writing the Prometheus config");
    let mut prometheus = ChildGuard::spawn(
        "prometheus",
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let prometheus_url = format!("http://127.0.0.1:{prometheus_port}");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gateway_port}");

    // Both targets up: the scrape works at all.
    wait_for_query(
        &http,
        &prometheus_url,
        r#"up{job=~"formstream-.*"} == 1"#,
        &mut [&mut gateway, &mut journal, &mut prometheus],
        |r| r.len() == 2,
    )
    .await;

    let form_id = format!("scrape-{}", &id[..8]);
    let created = http
        .post(format!("{base}/v1/forms"))
        .bearer_auth("dev-acme-key")
        .json(&json!({"id": form_id, "title": "scrape",
            "questions": [{"key": "name", "text": "Name", "type": "text", "required": true}]}))
        .send()
        .await
        .expect("POST /v1/forms");
    assert_eq!(created.status().as_u16(), 201);
    for n in 0..5 {
        let accepted = http
            .post(format!("{base}/v1/forms/{form_id}/responses"))
            .bearer_auth("dev-acme-key")
            .json(&json!({"collector": {"id": "c1"}, "answers": {"name": format!("n{n}")}}))
            .send()
            .await
            .expect("POST a response");
        assert_eq!(accepted.status().as_u16(), 202);
    }

    let guards = &mut [&mut gateway, &mut journal, &mut prometheus];
    // Throughput: the processor's finished records and the gateway's accepted responses.
    wait_for_query(
        &http,
        &prometheus_url,
        r#"formstream_processor_records_total{job="formstream-processor",processor="journal",outcome="ok"}"#,
        guards,
        |r| r.len() == 1 && value(&r[0]) >= 5.0,
    )
    .await;
    wait_for_query(
        &http,
        &prometheus_url,
        r#"formstream_gateway_responses_total{job="formstream-gateway",outcome="accepted"}"#,
        guards,
        |r| r.len() == 1 && value(&r[0]) >= 5.0,
    )
    .await;
    // Lag: a series per partition of the source topic that has had records (all five share a
    // form, so one partition), in records and in seconds, labelled as the alerts and the
    // dashboard expect; caught up, so zero.
    for metric in [
        "formstream_processor_consumer_lag_records",
        "formstream_processor_consumer_lag_seconds",
        "formstream_processor_committable_offset",
    ] {
        let series = wait_for_query(
            &http,
            &prometheus_url,
            &format!(r#"{metric}{{processor="journal"}}"#),
            guards,
            |r| !r.is_empty(),
        )
        .await;
        for s in &series {
            assert_eq!(s["metric"]["topic"].as_str(), Some(responses.as_str()));
            assert_eq!(s["metric"]["job"].as_str(), Some("formstream-processor"));
            let partition: i32 = s["metric"]["partition"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{metric}: a numeric partition label: {s}"));
            assert!((0..2).contains(&partition), "{metric}: {s}");
        }
    }
    wait_for_query(
        &http,
        &prometheus_url,
        r#"sum(formstream_processor_consumer_lag_records{processor="journal"}) == 0"#,
        guards,
        |r| r.len() == 1,
    )
    .await;
    // The alert rules loaded into a real Prometheus and their recording rules evaluate.
    wait_for_query(
        &http,
        &prometheus_url,
        r#"processor_topic_partition:formstream_processor_consumer_lag_records:max{processor="journal"}"#,
        guards,
        |r| !r.is_empty(),
    )
    .await;

    drop(prometheus);
    drop(journal);
    drop(gateway);
    delete_topics(
        &bootstrap,
        &[&forms, &responses, &flags, &format!("scrape-{id}-dlq")],
    )
    .await;
}
