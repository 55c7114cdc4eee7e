//! Helpers for the deployment tests: what the real `formstream` binary accepts, read
//! from its `--help`, and which metrics the code really exports, read from its metrics modules.
//!
//! Invariant: the deployment files (docker-compose.yml, deploy/k8s, deploy/prometheus,
//! deploy/grafana) are checked against these two sources of truth and nothing hand-copied, so a
//! renamed flag, a new processor or a renamed metric fails a test instead of a deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use regex::Regex;

use crate::runtime::formstream_binary;

/// The repository's root (the tests crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

/// Reads a file of the repository, relative to its root.
pub fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `formstream <args> --help`, whitespace collapsed (clap wraps long lines anywhere).
pub fn help(args: &[&str]) -> String {
    let output = Command::new(formstream_binary())
        .args(args)
        .arg("--help")
        .env("COLUMNS", "1000")
        .output()
        .expect("running formstream --help");
    assert!(
        output.status.success(),
        "formstream {args:?} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 help")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The processors registered in the binary: the subcommands of `formstream process`.
pub fn processors() -> Vec<String> {
    let output = Command::new(formstream_binary())
        .args(["process", "--help"])
        .output()
        .expect("running formstream process --help");
    let text = String::from_utf8(output.stdout).expect("UTF-8 help");
    let mut in_commands = false;
    let mut names = Vec::new();
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            // A command line is indented by exactly two spaces; wrapped descriptions by more.
            let Some(rest) = line.strip_prefix("  ") else {
                break;
            };
            if rest.starts_with(' ') {
                continue;
            }
            let name = rest.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                names.push(name.to_owned());
            }
        }
    }
    assert!(!names.is_empty(), "no processors in:\n{text}");
    names
}

/// What one subcommand reads from the environment: each variable with its default, if any.
#[derive(Debug)]
pub struct CommandEnv {
    pub command: Vec<String>,
    pub vars: BTreeMap<String, Option<String>>,
}

impl CommandEnv {
    pub fn of(command: &[&str]) -> Self {
        let text = help(command);
        let pattern = Regex::new(r"\[env: ([A-Z0-9_]+)=?[^\]]*\](?: \[default: ([^\]]*)\])?")
            .expect("static regex");
        let vars = pattern
            .captures_iter(&text)
            .map(|c| (c[1].to_owned(), c.get(2).map(|d| d.as_str().to_owned())))
            .collect();
        CommandEnv {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            vars,
        }
    }

    /// Whether the command reads `name`: one of its flags' variables, or a
    /// `FORMSTREAM_KAFKA_X_<KEY>` librdkafka property when it talks to Kafka.
    pub fn accepts(&self, name: &str) -> bool {
        self.vars.contains_key(name)
            || (name.starts_with("FORMSTREAM_KAFKA_X_")
                && self.vars.contains_key("FORMSTREAM_KAFKA_PROPERTIES"))
    }

    /// The port of a listen-address variable's default (`127.0.0.1:9464` → 9464).
    pub fn default_port(&self, name: &str) -> u16 {
        let default = self
            .vars
            .get(name)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{:?} has no default for {name}", self.command));
        port_of(&default)
    }
}

/// The port of `host:port`, `http://host:port/path` or a bare port.
pub fn port_of(address: &str) -> u16 {
    let without_scheme = address.split("://").last().unwrap_or(address);
    let host_port = without_scheme.split('/').next().unwrap_or(without_scheme);
    let port = host_port.rsplit(':').next().unwrap_or(host_port);
    port.parse()
        .unwrap_or_else(|_| panic!("no port in {address:?}"))
}

/// The path of `http://host:port/path`.
pub fn path_of(url: &str) -> String {
    let without_scheme = url.split("://").last().unwrap_or(url);
    match without_scheme.find('/') {
        Some(i) => without_scheme[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// A metric the code exports: its labels, and whether it is a histogram.
#[derive(Debug, Clone)]
pub struct MetricDef {
    pub labels: BTreeSet<String>,
    pub histogram: bool,
}

/// Every metric defined in a `metrics.rs` of the gateway or of the processors, by name.
///
/// The metrics modules keep one definition per metric: the name literal, then its labels as
/// `&["a", "b"]` before the next name (none for a plain gauge), and `HistogramOpts` right before a
/// histogram's name. Reading the source (rather than a live /metrics) also sees metrics that
/// appear only after their first event, such as dead letters.
pub fn metrics_in_code() -> BTreeMap<String, MetricDef> {
    let mut files = Vec::new();
    for dir in ["ingest", "processors"] {
        collect_metrics_files(&repo_root().join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no metrics.rs found");
    let name = Regex::new(r#""(formstream_[a-z0-9_]+)""#).expect("static regex");
    let labels = Regex::new(r#"&\[((?:\s*"[a-z_]+",?)+)\s*\]"#).expect("static regex");
    let mut metrics = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a metrics module");
        let found: Vec<_> = name.captures_iter(&text).collect();
        for (i, capture) in found.iter().enumerate() {
            let whole = capture.get(0).expect("match");
            let end = found
                .get(i + 1)
                .map_or(text.len(), |next| next.get(0).expect("match").start());
            let before = &text[whole.start().saturating_sub(80)..whole.start()];
            let label_set = labels
                .captures(&text[whole.end()..end])
                .map(|l| {
                    l[1].split(',')
                        .map(|s| s.trim().trim_matches('"').to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            metrics.insert(
                capture[1].to_owned(),
                MetricDef {
                    labels: label_set,
                    histogram: before.contains("HistogramOpts"),
                },
            );
        }
    }
    metrics
}

fn collect_metrics_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect_metrics_files(&path, files);
            }
        } else if path.file_name().is_some_and(|n| n == "metrics.rs") {
            files.push(path);
        }
    }
}

/// Labels every scraped series has besides its own.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Checks one PromQL expression against the code's metrics: every `formstream_*` name exists
/// (histogram series by their `_bucket`, `_sum`, `_count`), every label matched in a selector
/// belongs to its metric, and every `by (...)` label to one of the expression's metrics.
/// Returns the problems found, each naming `origin`.
pub fn check_promql(
    origin: &str,
    expr: &str,
    metrics: &BTreeMap<String, MetricDef>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let selector =
        Regex::new(r"(formstream_[a-z0-9_]+)(?::[a-z0-9_]+)?(\{[^}]*\})?").expect("static regex");
    let matcher =
        Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*""#).expect("static regex");
    let by = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").expect("static regex");
    let mut in_expr = BTreeSet::new();
    for capture in selector.captures_iter(expr) {
        let name = &capture[1];
        let (base, def) = match resolve(name, metrics) {
            Some(found) => found,
            None => {
                problems.push(format!("{origin}: {name} is not a metric of the code"));
                continue;
            }
        };
        in_expr.insert(base.clone());
        let mut allowed = def.labels.clone();
        allowed.extend(TARGET_LABELS.iter().map(|s| (*s).to_owned()));
        if def.histogram {
            allowed.insert("le".to_owned());
        }
        if let Some(matchers) = capture.get(2) {
            for m in matcher.captures_iter(matchers.as_str()) {
                if !allowed.contains(&m[1]) {
                    problems.push(format!("{origin}: {base} has no label {}", &m[1]));
                }
            }
        }
    }
    let mut allowed: BTreeSet<String> = TARGET_LABELS.iter().map(|s| (*s).to_owned()).collect();
    for base in &in_expr {
        let def = &metrics[base];
        allowed.extend(def.labels.iter().cloned());
        if def.histogram {
            allowed.insert("le".to_owned());
        }
    }
    for clause in by.captures_iter(expr) {
        for label in clause[1]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if !allowed.contains(label) {
                problems.push(format!(
                    "{origin}: `by ({label})` is not a label of {in_expr:?}"
                ));
            }
        }
    }
    problems
}

fn resolve<'m>(
    name: &str,
    metrics: &'m BTreeMap<String, MetricDef>,
) -> Option<(String, &'m MetricDef)> {
    if let Some(def) = metrics.get(name) {
        return Some((name.to_owned(), def));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(def) = metrics.get(base)
            && def.histogram
        {
            return Some((base.to_owned(), def));
        }
    }
    None
}

/// Every YAML document of a file (Kubernetes files hold several, separated by `---`).
pub fn yaml_documents(relative: &str) -> Vec<serde_yaml_ng::Value> {
    let text = read_repo_file(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        })
        .filter(|value: &serde_yaml_ng::Value| !value.is_null())
        .collect()
}

/// A child process killed on drop, so a failing test leaves nothing running.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, command: &mut Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        ChildGuard { name, child }
    }

    /// Panics if the process has exited: a wait for it would otherwise run to its deadline.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (the OS picks it; a small race with other processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding port 0 to find a free port")
}

/// The `formstream` flags naming a broker and a test's own three topics.
pub fn topic_flags(bootstrap: &str, forms: &str, responses: &str, flags: &str) -> Vec<String> {
    [
        "--kafka-bootstrap",
        bootstrap,
        "--forms-topic",
        forms,
        "--responses-topic",
        responses,
        "--flags-topic",
        flags,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Whether a test that needs something a developer's machine may lack (a Docker daemon,
/// kubeconform) can run: `missing` says what is missing, if anything. Outside CI the test is then
/// skipped with a message on stderr; in CI (`CI=true`) it fails, so CI never passes a test it
/// did not run.
pub fn runnable(test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} must run in CI, but {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}
