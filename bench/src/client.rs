//! The timed phase: a fixed number of keep-alive HTTP/1.1 connections, each sending one request at
//! a time (a closed loop), with pre-generated bodies.
//!
//! Invariant: only requests *started* inside the measured window are counted, each exactly once,
//! whatever its outcome: every status is tallied and transport errors are counted, never dropped.
//! Latency is from just before the request is written to the last byte of the answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;

use crate::workload::{ID_PLACEHOLDER, Template};

/// What the timed phase is given.
pub struct Plan {
    pub addr: String,
    pub host: HeaderValue,
    pub auth: Option<HeaderValue>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop after this many measured requests (and at `duration` at the latest).
    pub max_requests: Option<u64>,
    pub templates: Arc<Vec<Template>>,
    pub fresh_ids: bool,
    pub request_timeout: Duration,
    pub seed: u64,
}

/// What one connection (and, merged, all of them) saw in the measured window.
pub struct Tally {
    /// Microseconds.
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub requests: u64,
    /// Responses the server said it accepted: 2xx singles, and `accepted` of each batch answer.
    pub accepted: u64,
    /// Batch items the server answered with something other than 202.
    pub rejected_items: u64,
    pub body_bytes: u64,
    /// A few error messages, for the report.
    pub errors: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Tally {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            requests: 0,
            accepted: 0,
            rejected_items: 0,
            body_bytes: 0,
            errors: Vec::new(),
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.requests += other.requests;
        self.accepted += other.accepted;
        self.rejected_items += other.rejected_items;
        self.body_bytes += other.body_bytes;
        for e in other.errors {
            if self.errors.len() < 5 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        Ok(())
    }

    fn error(&mut self, message: String) {
        if self.errors.len() < 5 && !self.errors.contains(&message) {
            self.errors.push(message);
        }
    }
}

/// The merged tally and the length of the measured window.
pub struct Outcome {
    pub tally: Tally,
    pub elapsed: Duration,
}

/// Runs the plan on the current runtime and returns once every connection has finished.
pub async fn drive(plan: Plan) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let stop_at = measure_from + plan.duration;
    let measured = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(plan.connections);
    for worker in 0..plan.connections {
        let plan = plan.clone();
        let measured = measured.clone();
        workers.push(tokio::spawn(async move {
            connection_loop(&plan, worker, measure_from, stop_at, &measured).await
        }));
    }
    let mut total = Tally::new()?;
    for worker in workers {
        total.merge(worker.await.context("a load connection panicked")??)?;
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    Ok(Outcome {
        tally: total,
        elapsed,
    })
}

async fn connect(plan: &Plan) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&plan.addr)
        .await
        .with_context(|| format!("connecting to {}", plan.addr))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; errors surface on the sender.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The request body for `template`, with fresh response ids written over the placeholders.
fn body_for(template: &Template, fresh_ids: bool, rng: &mut StdRng) -> Bytes {
    if !fresh_ids || template.id_offsets.is_empty() {
        return template.body.clone();
    }
    let mut body = template.body.to_vec();
    for &offset in &template.id_offsets {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        id.hyphenated()
            .encode_lower(&mut body[offset..offset + ID_PLACEHOLDER.len()]);
    }
    Bytes::from(body)
}

async fn connection_loop(
    plan: &Plan,
    worker: usize,
    measure_from: Instant,
    stop_at: Instant,
    measured: &AtomicU64,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(worker as u64 * 7919));
    let templates = &plan.templates;
    // Spread the connections over the pool so they do not all send the same body at once.
    let mut next = worker * templates.len() / plan.connections.max(1);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut buffer = Vec::new();
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        let in_window = now >= measure_from;
        if in_window
            && let Some(limit) = plan.max_requests
            && measured.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }

        let template = &templates[next % templates.len()];
        next += 1;
        let body = body_for(template, plan.fresh_ids, &mut rng);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&template.path)
            .header(HOST, plan.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &plan.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(body.clone()))?;

        let started = Instant::now();
        let result = send(plan, &mut sender, request, &mut buffer).await;
        let latency = started.elapsed();
        if !in_window {
            if result.is_err() {
                // Do not spin on a dead server during warm-up.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        tally.requests += 1;
        tally.body_bytes += body.len() as u64;
        match result {
            Ok(status) => {
                tally
                    .latency
                    .saturating_record(latency.as_micros().max(1) as u64);
                *tally.statuses.entry(status).or_default() += 1;
                match status {
                    207 => match batch_counts(&buffer) {
                        Some((accepted, rejected)) => {
                            tally.accepted += accepted;
                            tally.rejected_items += rejected;
                        }
                        None => tally.error("a 207 answer without accepted/rejected counts".into()),
                    },
                    200..=299 => tally.accepted += template.items as u64,
                    _ => tally.error(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&buffer[..buffer.len().min(300)])
                    )),
                }
            }
            Err(error) => {
                tally.transport_errors += 1;
                tally.error(format!("{error:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(tally)
}

/// Sends one request on the connection (opening it if needed) and reads the whole answer into
/// `buffer`. On any error the connection is dropped, to be reopened by the next request.
async fn send(
    plan: &Plan,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    request: Request<Full<Bytes>>,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    let exchange = async {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            *sender = Some(connect(plan).await?);
        }
        let Some(s) = sender.as_mut() else {
            anyhow::bail!("no connection");
        };
        s.ready().await?;
        let response = s.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        buffer.clear();
        buffer.extend_from_slice(&body);
        Ok(status)
    };
    let outcome = match tokio::time::timeout(plan.request_timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {:?}",
            plan.request_timeout
        )),
    };
    if outcome.is_err() {
        *sender = None;
    }
    outcome
}

/// `accepted` and `rejected` of a batch answer. The gateway writes them first, so the common case
/// reads a few bytes; anything else falls back to a full parse.
fn batch_counts(body: &[u8]) -> Option<(u64, u64)> {
    fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
        let at = body.windows(key.len()).take(64).position(|w| w == key)? + key.len();
        let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&body[at..at + digits])
            .ok()?
            .parse()
            .ok()
    }
    if let (Some(a), Some(r)) = (
        number_after(body, b"\"accepted\":"),
        number_after(body, b"\"rejected\":"),
    ) {
        return Some((a, r));
    }
    #[derive(serde::Deserialize)]
    struct Counts {
        accepted: u64,
        #[serde(default)]
        rejected: u64,
    }
    serde_json::from_slice::<Counts>(body)
        .ok()
        .map(|c| (c.accepted, c.rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_read_the_prefix_or_the_whole() {
        assert_eq!(
            batch_counts(br#"{"accepted":498,"rejected":2,"results":[]}"#),
            Some((498, 2))
        );
        assert_eq!(
            batch_counts(br#"{"results":[],"rejected":0,"accepted":5}"#),
            Some((5, 0))
        );
        assert_eq!(batch_counts(b"<html>"), None);
    }
}
