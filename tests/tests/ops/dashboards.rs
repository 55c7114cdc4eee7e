//! The Grafana dashboard and the alert rules refer only to metrics and labels the code exports
//! every PromQL expression of deploy/grafana and deploy/prometheus is checked against
//! the metric definitions in the gateway's and the runtime's metrics modules, so renaming a
//! metric breaks this test rather than a panel or a page.

use formstream_tests::deploy::{check_promql, metrics_in_code, read_repo_file, yaml_documents};
use serde_json::Value;

/// Every `expr` in a Grafana dashboard (panels, nested rows, annotations).
fn dashboard_exprs(value: &Value, path: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "expr"
                    && let Some(expr) = child.as_str()
                {
                    found.push((path.to_owned(), expr.to_owned()));
                }
                let title = map.get("title").and_then(Value::as_str).unwrap_or(key);
                dashboard_exprs(child, &format!("{path}/{title}"), found);
            }
        }
        Value::Array(items) => {
            for item in items {
                dashboard_exprs(item, path, found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_code_defines_the_metrics_this_test_relies_on() {
    let metrics = metrics_in_code();
    let lag = &metrics["formstream_processor_consumer_lag_records"];
    assert_eq!(
        lag.labels.iter().map(String::as_str).collect::<Vec<_>>(),
        ["partition", "processor", "topic"]
    );
    assert!(metrics["formstream_processor_effect_duration_seconds"].histogram);
    assert!(!metrics["formstream_processor_consumer_lag_seconds"].histogram);
    assert!(
        metrics["formstream_gateway_http_requests_in_flight"]
            .labels
            .is_empty()
    );
}

#[test]
fn dashboard_queries_use_real_metrics() {
    let metrics = metrics_in_code();
    let dashboard: Value =
        serde_json::from_str(&read_repo_file("deploy/grafana/dashboards/formstream.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, "dashboard", &mut exprs);
    assert!(exprs.len() >= 10, "found only {} queries", exprs.len());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|(path, expr)| check_promql(path, expr, &metrics))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");

    // What the issue asks the dashboard to show.
    let all = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for wanted in [
        "formstream_processor_records_total",
        "formstream_processor_consumer_lag_records",
        "formstream_processor_consumer_lag_seconds",
        "formstream_processor_dead_letters_total",
        "formstream_processor_circuit_state",
        "histogram_quantile(0.99, sum by (le, processor) (rate(formstream_processor_effect_duration_seconds_bucket",
        "formstream_gateway_http_request_duration_seconds_bucket",
    ] {
        assert!(all.contains(wanted), "the dashboard shows no {wanted}");
    }
    for (path, expr) in &exprs {
        if expr.contains("consumer_lag") && !expr.contains("sum by (processor)") {
            assert!(
                expr.contains("partition"),
                "{path}: lag is shown per processor and partition"
            );
        }
    }
}

#[test]
fn alert_rules_use_real_metrics() {
    let metrics = metrics_in_code();
    let rules = yaml_documents("deploy/prometheus/alerts.yml")
        .pop()
        .expect("alerts.yml");
    let mut count = 0;
    let mut problems = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let origin = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("alert or record");
            let expr = rule["expr"].as_str().expect("expr");
            problems.extend(check_promql(origin, expr, &metrics));
            count += 1;
        }
    }
    assert!(count >= 8);
    assert!(problems.is_empty(), "{problems:#?}");
    // docs/operations.md has a runbook entry for every alert.
    let runbook = read_repo_file("docs/operations.md");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(alert) = rule["alert"].as_str() {
                assert!(
                    runbook.contains(&format!("### `{alert}`\n")),
                    "docs/operations.md has no runbook for {alert}"
                );
            }
        }
    }
}
