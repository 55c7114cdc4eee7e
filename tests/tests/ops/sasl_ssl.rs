//! The gateway and a processor work against a SASL_SSL cluster: a private broker of
//! its own, started by `deploy/local/kafka.sh` in secure mode (a CA and SCRAM-SHA-512 user
//! generated for it, never in the repository), refuses a client without TLS and credentials; the
//! real `formstream` binary creates the topics, runs the gateway (configured through
//! `FORMSTREAM_KAFKA_X_*` variables) and the journal processor (configured with `-X` flags), and a
//! response posted to the gateway reaches the journal. The broker is destroyed at the end, also
//! when the test fails; its ports and instance name are fresh, so parallel runs do not collide.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use formstream_tests::deploy::{ChildGuard, free_port, repo_root, topic_flags};
use formstream_tests::runtime::formstream_binary;
use formstream_tests::{BrokerInstance, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

/// Starting a broker takes seconds, formatting and generating certificates a few more.
const BROKER_DEADLINE: Duration = Duration::from_secs(180);
/// The gateway's readiness and the journal's first line.
const DEADLINE: Duration = Duration::from_secs(90);

/// A private SASL_SSL broker instance; `destroy`ed (stopped and deleted) on drop.
struct SecureBroker {
    broker: BrokerInstance,
}

impl SecureBroker {
    fn start() -> Self {
        let broker = SecureBroker {
            broker: BrokerInstance::new("sasl"),
        };
        let output = broker
            .script("start")
            .output()
            .expect("running kafka.sh start");
        assert!(
            output.status.success(),
            "kafka.sh start (secure) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        broker
    }

    fn script(&self, command: &str) -> Command {
        let mut cmd = self.broker.script(command);
        cmd.env("FORMSTREAM_KAFKA_SECURE", "1").env(
            "FORMSTREAM_KAFKA_START_TIMEOUT",
            BROKER_DEADLINE.as_secs().to_string(),
        );
        cmd
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// The librdkafka settings kafka.sh wrote for clients: SASL_SSL, SCRAM-SHA-512, the user
    /// and its generated password, the CA.
    fn client_properties(&self) -> Vec<(String, String)> {
        let output = self.script("env").output().expect("kafka.sh env");
        let env = String::from_utf8(output.stdout).expect("UTF-8");
        let path = env
            .lines()
            .find_map(|l| l.strip_prefix("export FORMSTREAM_KAFKA_CLIENT_PROPERTIES="))
            .expect("kafka.sh env names the client properties in secure mode");
        std::fs::read_to_string(path)
            .expect("the client properties")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        match self
            .script("destroy")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "could not destroy the private broker {}: {other:?}",
                self.broker.instance
            ),
        }
    }
}

/// `-X key=value` for each property.
fn x_flags(properties: &[(String, String)]) -> Vec<String> {
    properties
        .iter()
        .flat_map(|(k, v)| ["-X".to_owned(), format!("{k}={v}")])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_journal_work_over_sasl_ssl_with_scram() {
    let broker = SecureBroker::start();
    let bootstrap = broker.bootstrap();
    let properties = broker.client_properties();
    assert!(
        properties
            .iter()
            .any(|(k, v)| k == "security.protocol" && v == "SASL_SSL")
    );

    // The listener really is secure: a plaintext client without credentials gets no metadata.
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("log_level", "0")
        .create()
        .expect("a plaintext client");
    assert!(
        plain.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "a PLAINTEXT client must not get metadata from the SASL_SSL listener"
    );
    drop(plain);

    let id = unique();
    let (forms, responses, flags) = (
        format!("sasl-{id}-forms"),
        format!("sasl-{id}-responses"),
        format!("sasl-{id}-flags"),
    );
    let topic_args = topic_flags(&bootstrap, &forms, &responses, &flags);

    // Topics, with -X flags.
    let created = Command::new(formstream_binary())
        .args(["topics", "create", "--responses-partitions", "3"])
        .args(&topic_args)
        .args(x_flags(&properties))
        .output()
        .expect("formstream topics create");
    assert!(
        created.status.success(),
        "topics create over SASL_SSL failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    // The gateway, with one FORMSTREAM_KAFKA_X_<KEY> variable per property.
    let gateway_port = free_port();
    let mut gateway_cmd = Command::new(formstream_binary());
    gateway_cmd
        .args(["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")])
        .args(&topic_args)
        .arg("--api-keys-file")
        .arg(repo_root().join("deploy/local/api-keys.toml"))
        .args(["--create-topics", "false"]);
    for (key, value) in &properties {
        let name = format!(
            "FORMSTREAM_KAFKA_X_{}",
            key.replace('_', "__")
                .replace('.', "_")
                .to_ascii_uppercase()
        );
        gateway_cmd.env(name, value);
    }
    let mut gateway = ChildGuard::spawn("the gateway", &mut gateway_cmd);

    // The journal processor, with -X flags.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal_path: PathBuf = dir.path().join("journal.jsonl");
    let mut journal_cmd = Command::new(formstream_binary());
    journal_cmd
        .args(["process", "journal"])
        .args(&topic_args)
        .args(x_flags(&properties))
        .args(["--group-id", &format!("sasl-{id}-group")])
        .args(["--dlq-topic", &format!("sasl-{id}-dlq")])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--commit-interval", "200ms", "--session-timeout", "6s"])
        .arg("--journal-path")
        .arg(&journal_path);
    let mut journal = ChildGuard::spawn("the journal processor", &mut journal_cmd);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gateway_port}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        gateway.assert_running();
        journal.assert_running();
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was not ready over SASL_SSL within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let form_id = format!("sasl-{}", &id[..8]);
    let created = http
        .post(format!("{base}/v1/forms"))
        .bearer_auth("dev-acme-key")
        .json(&json!({
            "id": form_id,
            "title": "SASL_SSL",
            "questions": [{"key": "name", "text": "Name", "type": "text", "required": true}]
        }))
        .send()
        .await
        .expect("POST /v1/forms");
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text().await);
    let accepted = http
        .post(format!("{base}/v1/forms/{form_id}/responses"))
        .bearer_auth("dev-acme-key")
        .json(&json!({"collector": {"id": "c1"}, "answers": {"name": "Asha"}}))
        .send()
        .await
        .expect("POST a response");
    assert_eq!(
        accepted.status().as_u16(),
        202,
        "acknowledged by the SASL_SSL broker"
    );
    let accepted: Value = accepted.json().await.expect("JSON");
    let response_id = accepted["response_id"]
        .as_str()
        .expect("response_id")
        .to_owned();

    // The processor consumed it over SASL_SSL and journaled it.
    loop {
        journal.assert_running();
        let text = std::fs::read_to_string(&journal_path).unwrap_or_default();
        if text.contains(&response_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the journal did not record {response_id} within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(journal);
    drop(gateway);
    drop(broker);
}
