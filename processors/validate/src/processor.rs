//! [`Validate`]: the outcome of every response revision against its form version's compiled rules,
//! published to `response-flags` in the runtime's transaction with the consumed offset.
//!
//! Invariant: every response revision gets exactly one outcome, never an error: a rule that
//! cannot be evaluated (or ran past its deadline) flags the response with why; only rules that do
//! not compile (a form the gateway did not check) fail the record, permanently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::anyhow;
use formstream_core::rules::{RuleSet, TOO_EXPENSIVE};
use formstream_core::time::now_millis;
use formstream_runtime::processor::{ORDERING_HEADER, ORGANISATION_HEADER};
use formstream_runtime::{Failure, Output, Processor, Record, RuntimeConfig};
use formstream_schemas::{Encoder, FlagStatus, Response, ResponseFlag, Violation};
use tokio::sync::Semaphore;

use crate::config::ValidateArgs;
use crate::metrics::Unevaluated;

/// The processor's name: group `formstream-validate`, dead letters on `validate.dlq`.
pub const NAME: &str = "validate";

/// The header that carries a flag's response revision, beside the response id.
pub const REVISION_HEADER: &str = "revision";

/// A form version's compiled rules, and how many of their evaluations still run past their
/// deadline.
struct Rules {
    set: RuleSet,
    late: AtomicUsize,
}

/// Compiled rule sets, by organisation, form id and version (two organisations may each have a
/// form `household`, with rules of their own): compiled once (tens of µs) per version, then
/// evaluated in a few µs per response. Nested, so that a look-up borrows the record's strings
/// instead of building a key.
type RuleCache = RwLock<HashMap<String, HashMap<String, HashMap<i32, Arc<Rules>>>>>;

/// Where a record was read: the key of an outcome evaluated by `handle` for `outputs`.
type Position = (&'static str, i32, i64);

pub struct Validate {
    encoder: Encoder<ResponseFlag>,
    flags_topic: Arc<str>,
    rules: RuleCache,
    deadline: Duration,
    /// One permit per evaluation on a blocking thread (`--max-rule-evaluations`), held until the
    /// evaluation ends, past its deadline too: abandoned evaluations cannot pile up.
    slots: Arc<Semaphore>,
    /// Responses flagged without a finished evaluation, by why (served on /metrics).
    unevaluated: Unevaluated,
    /// Outcomes evaluated off the async threads in `handle`, taken by `outputs`, which the
    /// runtime calls right after `handle` for the same record.
    evaluated: Mutex<HashMap<Position, Vec<Violation>>>,
}

impl Validate {
    /// Builds the processor for `config`'s topics: flags are encoded for the flags topic (and
    /// registered with the schema registry when one is configured).
    pub async fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        Self::with_args(config, &ValidateArgs::default()).await
    }

    /// [`Validate::new`] with the processor's own flags.
    pub async fn with_args(config: &RuntimeConfig, args: &ValidateArgs) -> anyhow::Result<Self> {
        let codec = formstream_core::codec(&config.registry)?;
        let flags_topic = config.topics.flags_topic.clone();
        let encoder = codec.encoder::<ResponseFlag>(&flags_topic).await?;
        Ok(Validate {
            encoder,
            flags_topic: flags_topic.into(),
            rules: RwLock::new(HashMap::new()),
            deadline: args.rule_deadline,
            slots: Arc::new(Semaphore::new(args.max_rule_evaluations.max(1))),
            unevaluated: Unevaluated::new(),
            evaluated: Mutex::new(HashMap::new()),
        })
    }

    fn rules_of(&self, record: &Record<Response>) -> Result<Arc<Rules>, Failure> {
        let response = &record.value;
        let cached = self.rules.read().ok().and_then(|cache| {
            cache
                .get(&response.organisation)?
                .get(&response.form_id)?
                .get(&response.form_version)
                .cloned()
        });
        if let Some(rules) = cached {
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
        let rules = Arc::new(Rules {
            set: rules,
            late: AtomicUsize::new(0),
        });
        if let Ok(mut cache) = self.rules.write() {
            cache
                .entry(response.organisation.clone())
                .or_default()
                .entry(response.form_id.clone())
                .or_default()
                .insert(response.form_version, rules.clone());
        }
        Ok(rules)
    }

    /// The violations of a response whose rules may run long, evaluated on a blocking thread
    /// within the deadline (see the module header).
    async fn evaluate_off_thread(&self, rules: Arc<Rules>, response: &Response) -> Vec<Violation> {
        if rules.late.load(Ordering::Acquire) > 0 {
            self.unevaluated.still_running.inc();
            return rules.set.unevaluated(&format!(
                "{TOO_EXPENSIVE}: not evaluated; these rules are still running past their {} ms deadline on an earlier response",
                self.deadline.as_millis()
            ));
        }
        let started = tokio::time::Instant::now();
        let slot = tokio::time::timeout(self.deadline, self.slots.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = slot else {
            self.unevaluated.no_slot.inc();
            return rules.set.unevaluated(&format!(
                "{TOO_EXPENSIVE}: not evaluated; every one of this instance's rule evaluation \
                 threads stayed busy for {} ms (rules running past their deadline)",
                self.deadline.as_millis()
            ));
        };
        let owned = response.clone();
        let evaluating = rules.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            evaluating.set.evaluate(&owned)
        });
        let left = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, &mut task).await {
            Ok(Ok(violations)) => violations,
            // Evaluation catches the interpreter's panics; this is the thread pool's own failure.
            Ok(Err(failed)) => rules
                .set
                .unevaluated(&format!("the rules' evaluation failed: {failed}")),
            Err(_) => {
                self.unevaluated.past_deadline.inc();
                let abandoned = self.unevaluated.past_deadline.get();
                tracing::warn!(
                    organisation = %response.organisation,
                    form_id = %response.form_id,
                    form_version = response.form_version,
                    abandoned,
                    "Rules ran past their deadline; flagged, their evaluation runs on in its slot."
                );
                rules.late.fetch_add(1, Ordering::AcqRel);
                let running = rules.clone();
                tokio::spawn(async move {
                    let _ = task.await;
                    running.late.fetch_sub(1, Ordering::AcqRel);
                });
                rules.set.unevaluated(&format!(
                    "{TOO_EXPENSIVE}: these rules ran past their {} ms deadline on this response",
                    self.deadline.as_millis()
                ))
            }
        }
    }

    /// Evaluations given up at their deadline since start (each ran on in its slot).
    pub fn abandoned_evaluations(&self) -> u64 {
        self.unevaluated.past_deadline.get()
    }

    /// The outcome of one response revision, evaluated in place.
    pub fn evaluate(&self, record: &Record<Response>) -> Result<ResponseFlag, Failure> {
        let rules = self.rules_of(record)?;
        Ok(flag_of(&record.value, rules.set.evaluate(&record.value)))
    }

    fn evaluated(&self) -> std::sync::MutexGuard<'_, HashMap<Position, Vec<Violation>>> {
        self.evaluated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn position(record: &Record<Response>) -> Position {
    (record.topic, record.partition, record.offset)
}

/// The flag of `response` with `violations`.
fn flag_of(response: &Response, violations: Vec<Violation>) -> ResponseFlag {
    ResponseFlag {
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
    }
}

impl Processor for Validate {
    type Value = Response;

    fn name(&self) -> &str {
        NAME
    }

    /// Nothing outside Kafka: the outcome is the output record, published by the runtime. Rules
    /// that may run long are evaluated here, off the async threads, for `outputs` to publish.
    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        let rules = self.rules_of(record)?;
        if rules.set.may_run_long() {
            let violations = self.evaluate_off_thread(rules, &record.value).await;
            self.evaluated().insert(position(record), violations);
        }
        Ok(())
    }

    fn transactional(&self) -> bool {
        true
    }

    fn metrics(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![self.unevaluated.collector()]
    }

    fn outputs(&self, record: &Record<Response>) -> Result<Vec<Output>, Failure> {
        let evaluated = self.evaluated().remove(&position(record));
        let flag = match evaluated {
            Some(violations) => flag_of(&record.value, violations),
            None => self.evaluate(record)?,
        };
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
                (ORGANISATION_HEADER.to_owned(), flag.organisation),
            ],
        }])
    }
}
