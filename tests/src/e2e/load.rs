//! The scenario's load: every planned response through `POST /v1/responses/batch` at a steady
//! offered rate, and each planned correction as a `PUT` some seconds after its response was
//! acknowledged. Items the gateway could not publish (503 while the broker restarts, a refused
//! connection) are sent again with the same response id, as a collector app would.
//!
//! Invariant: a (response, revision) is recorded as acknowledged only when the gateway answered it
//! 2xx; the checks then require each of them on the topic and in every effect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use super::workload::Workload;

/// What the loader saw, shared with the sampler and the checks.
#[derive(Default)]
pub struct Ledger {
    /// Per response index: bit 0 revision 0 acknowledged, bit 1 revision 1 acknowledged.
    pub acked: Vec<AtomicU8>,
    pub acked_total: AtomicUsize,
    /// Items answered with a status the loader does not retry (a 4xx): should stay 0.
    pub refused: AtomicUsize,
    /// Items (or corrections) sent again after a 5xx or a transport error.
    pub retried: AtomicUsize,
    /// Batch requests answered 503 as a whole, and transport errors.
    pub unavailable: AtomicUsize,
    /// Microseconds from the load's start to the first and to the last acknowledgement.
    pub last_ack_us: AtomicU64,
    /// Planned corrections that will not be sent, their response having been refused.
    pub skipped_corrections: AtomicUsize,
    /// A few refusals, for the report.
    pub refusals: std::sync::Mutex<Vec<String>>,
}

impl Ledger {
    pub fn new(responses: usize) -> Self {
        Ledger {
            acked: (0..responses).map(|_| AtomicU8::new(0)).collect(),
            ..Default::default()
        }
    }

    pub fn is_acked(&self, index: usize, revision: i32) -> bool {
        self.acked[index].load(Ordering::Acquire) & (1 << revision) != 0
    }

    fn ack(&self, index: usize, revision: i32, started: Instant) {
        let before = self.acked[index].fetch_or(1 << revision, Ordering::AcqRel);
        if before & (1 << revision) == 0 {
            self.acked_total.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ack_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn refuse(&self, what: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if refusals.len() < 10 {
            refusals.push(what);
        }
    }
}

/// How to load the gateway.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub gateway: String,
    pub api_key: String,
    /// Responses per second offered.
    pub rate: f64,
    pub batch: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// A correction is sent this long after its response was acknowledged.
    pub correction_delay: Duration,
}

/// Sends the whole workload; returns once every planned response and correction is acknowledged.
pub async fn run(
    workload: Arc<Workload>,
    plan: LoadPlan,
    ledger: Arc<Ledger>,
    started: Instant,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(plan.concurrency)
        .build()?;
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let corrections: Arc<Mutex<VecDeque<(Instant, usize)>>> = Arc::default();
    let retries: Arc<Mutex<Vec<usize>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));

    let corrector = tokio::spawn(correct(
        workload.clone(),
        plan.clone(),
        client.clone(),
        ledger.clone(),
        corrections.clone(),
        started,
    ));

    // One batch every batch/rate seconds, from the first index to the last, then the retries.
    let period = Duration::from_secs_f64(plan.batch as f64 / plan.rate);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    loop {
        ticks.tick().await;
        let mut indexes: Vec<usize> = {
            let mut retry = retries.lock().await;
            let n = retry.len().min(plan.batch);
            retry.drain(..n).collect()
        };
        while indexes.len() < plan.batch && next < workload.responses {
            indexes.push(next);
            next += 1;
        }
        if indexes.is_empty() {
            if in_flight.load(Ordering::Acquire) == 0 && retries.lock().await.is_empty() {
                break;
            }
            continue;
        }
        let permit = permits.clone().acquire_owned().await?;
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (workload, plan, client, ledger) = (
            workload.clone(),
            plan.clone(),
            client.clone(),
            ledger.clone(),
        );
        let (corrections, retries, in_flight) =
            (corrections.clone(), retries.clone(), in_flight.clone());
        tokio::spawn(async move {
            let failed = send_batch(
                &workload,
                &plan,
                &client,
                &ledger,
                &indexes,
                &corrections,
                started,
            )
            .await;
            if !failed.is_empty() {
                ledger.retried.fetch_add(failed.len(), Ordering::Relaxed);
                retries.lock().await.extend(failed);
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
    // Every response is acknowledged; the corrector finishes the corrections due.
    corrector.await??;
    Ok(())
}

/// Sends one batch; returns the indexes to send again.
async fn send_batch(
    workload: &Workload,
    plan: &LoadPlan,
    client: &reqwest::Client,
    ledger: &Ledger,
    indexes: &[usize],
    corrections: &Mutex<VecDeque<(Instant, usize)>>,
    started: Instant,
) -> Vec<usize> {
    let planned: Vec<_> = indexes.iter().map(|&i| workload.response(i)).collect();
    let items: Vec<Value> = planned
        .iter()
        .map(|p| p.item(&workload.form_id(p.form)))
        .collect();
    let answer = client
        .post(format!("{}/v1/responses/batch", plan.gateway))
        .bearer_auth(&plan.api_key)
        .json(&json!({ "items": items }))
        .send()
        .await;
    let body: Value = match answer {
        Ok(response) if response.status().as_u16() == 207 => match response.json().await {
            Ok(body) => body,
            Err(_) => return indexes.to_vec(),
        },
        Ok(response) if response.status().is_server_error() => {
            ledger.unavailable.fetch_add(1, Ordering::Relaxed);
            return indexes.to_vec();
        }
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            ledger.refuse(format!("batch answered {status}: {text}"));
            let skipped = planned.iter().filter(|p| p.corrected).count();
            ledger
                .skipped_corrections
                .fetch_add(skipped, Ordering::Relaxed);
            return Vec::new();
        }
        Err(_) => {
            ledger.unavailable.fetch_add(1, Ordering::Relaxed);
            return indexes.to_vec();
        }
    };
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let mut again = Vec::new();
    let mut due = Vec::new();
    for (position, p) in planned.iter().enumerate() {
        let status = results
            .get(position)
            .and_then(|r| r["status"].as_u64())
            .unwrap_or(0);
        match status {
            200..=299 => {
                ledger.ack(p.index, 0, started);
                if p.corrected {
                    due.push((Instant::now() + plan.correction_delay, p.index));
                }
            }
            0 | 500..=599 => again.push(p.index),
            _ => {
                ledger.refuse(format!(
                    "item {} answered {status}: {}",
                    p.index,
                    results
                        .get(position)
                        .map(Value::to_string)
                        .unwrap_or_default()
                ));
                if p.corrected {
                    ledger.skipped_corrections.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    corrections.lock().await.extend(due);
    again
}

/// Sends the corrections as they fall due, until every planned one is acknowledged.
async fn correct(
    workload: Arc<Workload>,
    plan: LoadPlan,
    client: reqwest::Client,
    ledger: Arc<Ledger>,
    queue: Arc<Mutex<VecDeque<(Instant, usize)>>>,
    started: Instant,
) -> anyhow::Result<()> {
    let planned = (0..workload.responses)
        .filter(|&i| workload.response(i).corrected)
        .count();
    let permits = Arc::new(Semaphore::new(8));
    let done = Arc::new(AtomicUsize::new(0));
    while done.load(Ordering::Acquire) + ledger.skipped_corrections.load(Ordering::Relaxed)
        < planned
    {
        let due = {
            let mut queue = queue.lock().await;
            match queue.front() {
                Some((at, _)) if *at <= Instant::now() => queue.pop_front(),
                _ => None,
            }
        };
        let Some((_, index)) = due else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let permit = permits.clone().acquire_owned().await?;
        let (workload, plan, client, ledger, queue, done) = (
            workload.clone(),
            plan.clone(),
            client.clone(),
            ledger.clone(),
            queue.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let p = workload.response(index);
            let form_id = workload.form_id(p.form);
            let answer = client
                .put(format!(
                    "{}/v1/forms/{form_id}/responses/{}",
                    plan.gateway, p.response_id
                ))
                .bearer_auth(&plan.api_key)
                .json(&p.correction())
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => {
                    ledger.ack(index, 1, started);
                    done.fetch_add(1, Ordering::AcqRel);
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    ledger.refuse(format!("correction {index} answered {status}: {text}"));
                    done.fetch_add(1, Ordering::AcqRel);
                }
                _ => {
                    ledger.retried.fetch_add(1, Ordering::Relaxed);
                    queue
                        .lock()
                        .await
                        .push_back((Instant::now() + Duration::from_secs(1), index));
                }
            }
            drop(permit);
        });
    }
    Ok(())
}
