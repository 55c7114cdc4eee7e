//! The `validate` processor: every revision of every response is checked against the business
//! rules of the form version it answered (`formstream_core::rules`, CEL), and its outcome (CLEAN, or
//! FLAGGED with each violated rule) is published to `response-flags`, keyed by form id.
//!
//! Exactly once per (response, revision): the processor is transactional, so the runtime commits
//! each flag together with the consumed offset in one Kafka transaction. A crash or a rebalance
//! redoes only uncommitted records, whose earlier flags (if any were sent) were aborted and are
//! never seen by `read_committed` readers (the flags view, the collector notifier).
//!
//! A rule that cannot be evaluated on a response (a type error, say) flags the response with the
//! error as the violation's reason, so that a person looks at it; it never fails the record. A
//! form version whose rules do not compile (the gateway refuses such forms, so only a form written
//! by something else) is a permanent failure: the record is dead-lettered with the reason.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::anyhow;
use formstream_core::rules::RuleSet;
use formstream_core::time::now_millis;
use formstream_runtime::processor::ORDERING_HEADER;
use formstream_runtime::{Failure, Output, Processor, Record, RuntimeConfig};
use formstream_schemas::{Encoder, FlagStatus, Response, ResponseFlag};

/// The header that carries a flag's response revision, beside the response id.
pub const REVISION_HEADER: &str = "revision";

/// Compiled rule sets, by form id and version: compiled once (tens of µs) per version, then
/// evaluated in a few µs per response.
type RuleCache = RwLock<HashMap<(String, i32), Arc<RuleSet>>>;

pub struct Validate {
    encoder: Encoder<ResponseFlag>,
    flags_topic: Arc<str>,
    rules: RuleCache,
}

impl Validate {
    /// Builds the processor for `config`'s topics: flags are encoded for the flags topic (and
    /// registered with the schema registry when one is configured).
    pub async fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        let codec = formstream_core::codec(&config.registry)?;
        let flags_topic = config.topics.flags_topic.clone();
        let encoder = codec.encoder::<ResponseFlag>(&flags_topic).await?;
        Ok(Validate {
            encoder,
            flags_topic: flags_topic.into(),
            rules: RwLock::new(HashMap::new()),
        })
    }

    fn rules_of(&self, record: &Record<Response>) -> Result<Arc<RuleSet>, Failure> {
        let response = &record.value;
        let key = (response.form_id.clone(), response.form_version);
        if let Some(rules) = self.rules.read().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(rules);
        }
        // The runtime holds a record back until its form version is in the view.
        let version = record.form_version().ok_or_else(|| {
            Failure::permanent(anyhow!(
                "form {} has no version {}",
                response.form_id,
                response.form_version
            ))
        })?;
        let rules = RuleSet::compile(version).map_err(|problems| {
            let reasons: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.pointer, p.detail))
                .collect();
            Failure::permanent(anyhow!(
                "the rules of form {} version {} do not compile: {}",
                response.form_id,
                response.form_version,
                reasons.join("; ")
            ))
        })?;
        let rules = Arc::new(rules);
        if let Ok(mut cache) = self.rules.write() {
            cache.insert(key, rules.clone());
        }
        Ok(rules)
    }

    /// The outcome of one response revision.
    pub fn evaluate(&self, record: &Record<Response>) -> Result<ResponseFlag, Failure> {
        let rules = self.rules_of(record)?;
        let response = &record.value;
        let violations = rules.evaluate(response);
        Ok(ResponseFlag {
            response_id: response.response_id.clone(),
            form_id: response.form_id.clone(),
            form_version: response.form_version,
            organisation: response.organisation.clone(),
            revision: response.revision,
            collector_id: response.collector.id.clone(),
            collector_phone: response.collector.phone.clone(),
            status: if violations.is_empty() {
                FlagStatus::Clean
            } else {
                FlagStatus::Flagged
            },
            violations,
            evaluated_at: now_millis(),
        })
    }
}

impl Processor for Validate {
    type Value = Response;

    fn name(&self) -> &str {
        "validate"
    }

    /// Nothing outside Kafka: the outcome is the output record, published by the runtime.
    async fn handle(&self, _record: &Record<Response>) -> Result<(), Failure> {
        Ok(())
    }

    fn transactional(&self) -> bool {
        true
    }

    fn outputs(&self, record: &Record<Response>) -> Result<Vec<Output>, Failure> {
        let flag = self.evaluate(record)?;
        let payload = self
            .encoder
            .encode(&flag)
            .map_err(|e| Failure::permanent(anyhow!("cannot encode the flag: {e}")))?;
        Ok(vec![Output {
            topic: self.flags_topic.clone(),
            key: Some(flag.form_id.clone().into_bytes()),
            payload,
            headers: vec![
                (ORDERING_HEADER.to_owned(), flag.response_id),
                (REVISION_HEADER.to_owned(), flag.revision.to_string()),
            ],
        }])
    }
}
