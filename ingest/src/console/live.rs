//! `GET /console/api/live`: what the console's Live page polls: records written to the pipeline's
//! topics (the page turns successive totals into rates) and, per processor, the records its
//! consumer group has not committed yet (lag), how old the oldest of them is (lag in seconds: the
//! timestamp of the record at each lagging partition's committed offset), read from Kafka itself,
//! and its circuit state, scraped from its `/metrics` (`--console-processor-metrics`).
//!
//! Invariant: read-only (no group is joined, nothing is committed: `committed_offsets` is an
//! OffsetFetch, the oldest records are read by assignment), at most one snapshot every [`CACHE`]
//! whatever the number of open consoles, every Kafka and HTTP call bounded by a timeout, and the
//! Kafka calls run off the async workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use formstream_core::api::{ApiError, Caller};
use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use formstream_core::time::now_millis;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::http::AppState;

/// How long a snapshot is served before Kafka is asked again: the page polls every few seconds.
const CACHE: Duration = Duration::from_secs(2);
/// Longest one Kafka call may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a snapshot spends reading the oldest uncommitted records (for lag in seconds); a
/// partition not read by then counts at its next snapshot.
const OLDEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Most partitions whose oldest uncommitted record one snapshot reads (the rest are read next
/// time; each record is read once, then cached).
const OLDEST_READS: usize = 64;
/// Longest a processor's `/metrics` may take to answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(1);

/// One topic's total: records ever written (the sum of its partitions' high watermarks).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TopicTotal {
    pub topic: String,
    pub records: i64,
}

/// One processor's consumer group: records not committed yet, over the topics it consumes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProcessorLag {
    pub processor: String,
    pub group: String,
    /// None when the group has committed nothing on these topics (not running yet).
    pub lag_records: Option<i64>,
    /// Age in seconds of the oldest record not committed yet (its Kafka timestamp); 0 when
    /// nothing lags; None when not running, or when no lagging record could be read in time.
    pub lag_seconds: Option<f64>,
    /// The processor's circuit, from its `/metrics`: `closed`, `half-open`, `open`, or `unknown`
    /// (its metrics URL is not configured, or it did not answer).
    pub circuit: String,
    /// Targets (per organisation) whose own circuit is open or half-open; None when unknown.
    pub open_target_circuits: Option<i64>,
    /// The topics the group has committed offsets on.
    pub topics: Vec<String>,
}

/// The answer of `GET /console/api/live`. The pipeline's processors are shared by every
/// organisation: these figures are the pipeline's, not one organisation's.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveView {
    pub at_ms: i64,
    pub topics: Vec<TopicTotal>,
    pub processors: Vec<ProcessorLag>,
}

/// The Kafka clients and the last snapshot.
pub struct Live {
    kafka: KafkaArgs,
    topics: Vec<String>,
    /// (processor, consumer group).
    processors: Vec<(String, String)>,
    /// (processor, its metrics URL).
    metrics: Vec<(String, String)>,
    http: reqwest::Client,
    /// One client per group (created at the first poll), and one without a group for watermarks
    /// and for reading the oldest uncommitted records.
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Timestamps (ms) of the records at committed offsets, by (topic, partition, offset): those
    /// the last snapshot needed.
    timestamps: Mutex<HashMap<(String, i32, i64), i64>>,
    last: tokio::sync::Mutex<Option<(Instant, LiveView)>>,
}

/// A processor's circuit as its metrics tell it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Circuit {
    state: Option<&'static str>,
    open_targets: Option<i64>,
}

impl Live {
    pub fn new(
        kafka: KafkaArgs,
        topics: Vec<String>,
        processors: Vec<(String, String)>,
        metrics: Vec<(String, String)>,
    ) -> Self {
        Live {
            kafka,
            topics,
            processors,
            metrics,
            http: reqwest::Client::builder()
                .timeout(METRICS_TIMEOUT)
                .build()
                .unwrap_or_default(),
            clients: Mutex::new(HashMap::new()),
            timestamps: Mutex::new(HashMap::new()),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The latest snapshot, at most [`CACHE`] old.
    pub async fn view(self: &Arc<Self>) -> Result<LiveView, ApiError> {
        let mut last = self.last.lock().await;
        if let Some((at, view)) = last.as_ref()
            && at.elapsed() < CACHE
        {
            return Ok(view.clone());
        }
        let live = self.clone();
        let (kafka, circuits) = tokio::join!(
            tokio::task::spawn_blocking(move || live.snapshot()),
            self.circuits()
        );
        let mut view = kafka
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|cause| {
                tracing::warn!(%cause, "Live: Kafka did not answer.");
                ApiError::Unavailable {
                    retry_after_secs: 5,
                    cause: cause.to_string(),
                }
            })?;
        for processor in &mut view.processors {
            let circuit = circuits
                .get(&processor.processor)
                .cloned()
                .unwrap_or_default();
            processor.circuit = circuit.state.unwrap_or("unknown").to_owned();
            processor.open_target_circuits = circuit.open_targets;
        }
        *last = Some((Instant::now(), view.clone()));
        Ok(view)
    }

    fn client(&self, group: Option<&str>) -> anyhow::Result<Arc<BaseConsumer>> {
        let key = group.unwrap_or("").to_owned();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = client_config(&self.kafka);
        config.set("enable.auto.commit", "false");
        // A consumer needs a group id even to read watermarks; this one never joins it.
        config.set("group.id", group.unwrap_or("formstream-gateway-live"));
        let client: Arc<BaseConsumer> = Arc::new(config.create()?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Each configured processor's circuit, scraped from its metrics at once (unknown when it does
    /// not answer within [`METRICS_TIMEOUT`]).
    async fn circuits(&self) -> HashMap<String, Circuit> {
        let scrapes = self.metrics.iter().map(|(processor, url)| async move {
            let text = match self.http.get(url).send().await {
                Ok(response) if response.status().is_success() => response.text().await.ok(),
                _ => None,
            };
            let circuit = text.map(|t| parse_circuit(&t)).unwrap_or_default();
            if circuit.state.is_none() {
                tracing::debug!(%processor, %url, "Live: no circuit state from the processor's metrics.");
            }
            (processor.clone(), circuit)
        });
        futures::future::join_all(scrapes)
            .await
            .into_iter()
            .collect()
    }

    /// The Kafka timestamp (ms) of the first record at or after each wanted (topic, partition,
    /// offset): cached ones, then at most [`OLDEST_READS`] read by assignment within
    /// [`OLDEST_TIMEOUT`]. Those not read in time are missing from the answer.
    fn oldest_timestamps(
        &self,
        wanted: &[(String, i32, i64)],
    ) -> anyhow::Result<HashMap<(String, i32, i64), i64>> {
        let mut cache = self
            .timestamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found: HashMap<(String, i32, i64), i64> = HashMap::new();
        let mut missing: Vec<&(String, i32, i64)> = Vec::new();
        for key in wanted {
            match cache.get(key) {
                Some(ts) => {
                    found.insert(key.clone(), *ts);
                }
                None => missing.push(key),
            }
        }
        // One assignment holds a partition once: several processors' offsets of one partition
        // are read in successive rounds.
        let deadline = Instant::now() + OLDEST_TIMEOUT;
        let reader = self.client(None)?;
        let mut budget = OLDEST_READS;
        while !missing.is_empty() && budget > 0 && Instant::now() < deadline {
            let mut round: HashMap<(String, i32), i64> = HashMap::new();
            missing.retain(|(topic, partition, offset)| {
                if budget == 0 || round.contains_key(&(topic.clone(), *partition)) {
                    return true;
                }
                budget -= 1;
                round.insert((topic.clone(), *partition), *offset);
                false
            });
            let mut list = TopicPartitionList::new();
            for ((topic, partition), offset) in &round {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
            reader.assign(&list)?;
            while !round.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Some(message) = reader.poll(left) else {
                    break;
                };
                let Ok(message) = message else { continue };
                let key = (message.topic().to_owned(), message.partition());
                if let Some(offset) = round.get(&key).copied()
                    && message.offset() >= offset
                {
                    round.remove(&key);
                    if let Some(ts) = message.timestamp().to_millis() {
                        found.insert((key.0, key.1, offset), ts);
                    }
                }
            }
            reader.unassign()?;
        }
        // Keep what this snapshot needed: older offsets are committed past and never asked again.
        *cache = found.clone();
        Ok(found)
    }

    fn snapshot(&self) -> anyhow::Result<LiveView> {
        let reader = self.client(None)?;
        // High watermark of every partition of every topic.
        let mut highs: HashMap<(String, i32), i64> = HashMap::new();
        let mut totals = Vec::new();
        let mut partitions = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = reader.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
            let mut records = 0;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let (_, high) = reader.fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)?;
                    highs.insert((topic.clone(), p.id()), high);
                    partitions.add_partition(topic, p.id());
                    records += high;
                }
            }
            totals.push(TopicTotal {
                topic: topic.clone(),
                records,
            });
        }
        let mut processors = Vec::new();
        // Per processor, the (topic, partition, committed offset) of each lagging partition.
        let mut lagging: Vec<Vec<(String, i32, i64)>> = Vec::new();
        for (processor, group) in &self.processors {
            let committed = self
                .client(Some(group))?
                .committed_offsets(partitions.clone(), KAFKA_TIMEOUT)?;
            let mut lag = None;
            let mut topics: Vec<String> = Vec::new();
            let mut behind = Vec::new();
            for element in committed.elements() {
                let Offset::Offset(offset) = element.offset() else {
                    continue;
                };
                let high = highs
                    .get(&(element.topic().to_owned(), element.partition()))
                    .copied()
                    .unwrap_or(offset);
                *lag.get_or_insert(0) += (high - offset).max(0);
                if high > offset {
                    behind.push((element.topic().to_owned(), element.partition(), offset));
                }
                if !topics.iter().any(|t| t == element.topic()) {
                    topics.push(element.topic().to_owned());
                }
            }
            processors.push(ProcessorLag {
                processor: processor.clone(),
                group: group.clone(),
                lag_records: lag,
                lag_seconds: lag.map(|_| 0.0),
                circuit: "unknown".to_owned(),
                open_target_circuits: None,
                topics,
            });
            lagging.push(behind);
        }
        let at_ms = now_millis();
        let timestamps = self.oldest_timestamps(&lagging.concat())?;
        for (processor, behind) in processors.iter_mut().zip(&lagging) {
            if behind.is_empty() {
                continue;
            }
            processor.lag_seconds = behind
                .iter()
                .filter_map(|key| timestamps.get(key))
                .min()
                .map(|oldest| ((at_ms - oldest).max(0) as f64) / 1000.0);
        }
        Ok(LiveView {
            at_ms,
            topics: totals,
            processors,
        })
    }
}

/// The pipeline's topic totals and each processor's lag, for the Live page (any signed-in
/// organisation: the processors are shared, and no organisation's data is in these figures).
#[utoipa::path(get, path = "/console/api/live", tag = "console",
    responses(
        (status = 200, description = "Topic totals and processor lag", body = LiveView),
        (status = 401, description = "Not signed in", body = formstream_core::api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not answer", body = formstream_core::api::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn live(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<axum::Json<LiveView>, ApiError> {
    state.inner.live.view().await.map(axum::Json)
}

/// Parses `--console-processors`: `name` (its group is `formstream-<name>`, the runtime's default)
/// or `name=group`.
pub fn parse_processor(text: &str) -> Result<(String, String), String> {
    let (name, group) = match text.split_once('=') {
        Some((name, group)) => (name.trim(), group.trim().to_owned()),
        None => (text.trim(), format!("formstream-{}", text.trim())),
    };
    if name.is_empty() || group.is_empty() {
        return Err(format!(
            "expected a processor name or name=group, got {text:?}"
        ));
    }
    Ok((name.to_owned(), group))
}

/// Parses `--console-processor-metrics`: `name=url`.
pub fn parse_metrics_url(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, url))
            if !name.trim().is_empty()
                && (url.trim().starts_with("http://") || url.trim().starts_with("https://")) =>
        {
            Ok((name.trim().to_owned(), url.trim().to_owned()))
        }
        _ => Err(format!(
            "expected name=http://host:port/metrics, got {text:?}"
        )),
    }
}

/// The circuit in a processor's Prometheus text: `formstream_processor_circuit_state` (0 closed,
/// 1 half-open, 2 open) and the sum of `formstream_processor_open_circuits` (targets' circuits).
fn parse_circuit(text: &str) -> Circuit {
    let mut circuit = Circuit::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = name.split('{').next().unwrap_or(name);
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match metric {
            "formstream_processor_circuit_state" => {
                circuit.state = Some(match value as i64 {
                    0 => "closed",
                    1 => "half-open",
                    _ => "open",
                });
            }
            "formstream_processor_open_circuits" => {
                *circuit.open_targets.get_or_insert(0) += value as i64;
            }
            _ => {}
        }
    }
    if circuit.state.is_some() {
        circuit.open_targets.get_or_insert(0);
    }
    circuit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_is_read_from_the_processors_metrics() {
        let text = "# HELP formstream_processor_circuit_state x\n\
                    formstream_processor_circuit_state{processor=\"journal\"} 2\n\
                    formstream_processor_open_circuits{kind=\"webhook\",processor=\"notify\"} 1\n\
                    formstream_processor_open_circuits{kind=\"sheet\",processor=\"notify\"} 2\n";
        assert_eq!(
            parse_circuit(text),
            Circuit {
                state: Some("open"),
                open_targets: Some(3)
            }
        );
        let closed = parse_circuit("formstream_processor_circuit_state{processor=\"v\"} 0\n");
        assert_eq!(closed.state, Some("closed"));
        assert_eq!(closed.open_targets, Some(0));
        assert_eq!(parse_circuit("nothing here 1\n"), Circuit::default());
    }

    #[test]
    fn metrics_urls_are_name_equals_url() {
        assert_eq!(
            parse_metrics_url("journal=http://127.0.0.1:9464/metrics"),
            Ok((
                "journal".to_owned(),
                "http://127.0.0.1:9464/metrics".to_owned()
            ))
        );
        assert!(parse_metrics_url("journal").is_err());
        assert!(parse_metrics_url("=http://x/metrics").is_err());
        assert!(parse_metrics_url("journal=127.0.0.1:9464").is_err());
    }
}
