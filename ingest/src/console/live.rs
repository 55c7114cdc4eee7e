//! `GET /console/api/live`: what the console's Live page polls: records written to the pipeline's
//! topics (the page turns successive totals into rates) and, per processor, the records its
//! consumer group has not committed yet (lag), read from Kafka itself.
//!
//! Invariant: read-only (no group is joined, nothing is committed: `committed_offsets` is an
//! OffsetFetch), at most one snapshot every [`CACHE`] whatever the number of open consoles, and the
//! Kafka calls run off the async workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use formstream_core::api::{ApiError, Caller};
use formstream_core::config::KafkaArgs;
use formstream_core::kafka::client_config;
use formstream_core::time::now_millis;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::http::AppState;

/// How long a snapshot is served before Kafka is asked again: the page polls every few seconds.
const CACHE: Duration = Duration::from_secs(2);
/// Longest one Kafka call may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// One client per group (created at the first poll), and one without a group for watermarks.
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    last: tokio::sync::Mutex<Option<(Instant, LiveView)>>,
}

impl Live {
    pub fn new(kafka: KafkaArgs, topics: Vec<String>, processors: Vec<(String, String)>) -> Self {
        Live {
            kafka,
            topics,
            processors,
            clients: Mutex::new(HashMap::new()),
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
        let view = tokio::task::spawn_blocking(move || live.snapshot())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|cause| {
                tracing::warn!(%cause, "Live: Kafka did not answer.");
                ApiError::Unavailable {
                    retry_after_secs: 5,
                    cause: cause.to_string(),
                }
            })?;
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
        for (processor, group) in &self.processors {
            let committed = self
                .client(Some(group))?
                .committed_offsets(partitions.clone(), KAFKA_TIMEOUT)?;
            let mut lag = None;
            let mut topics: Vec<String> = Vec::new();
            for element in committed.elements() {
                let Offset::Offset(offset) = element.offset() else {
                    continue;
                };
                let high = highs
                    .get(&(element.topic().to_owned(), element.partition()))
                    .copied()
                    .unwrap_or(offset);
                *lag.get_or_insert(0) += (high - offset).max(0);
                if !topics.iter().any(|t| t == element.topic()) {
                    topics.push(element.topic().to_owned());
                }
            }
            processors.push(ProcessorLag {
                processor: processor.clone(),
                group: group.clone(),
                lag_records: lag,
                topics,
            });
        }
        Ok(LiveView {
            at_ms: now_millis(),
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
