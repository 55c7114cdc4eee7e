//! Once a second, what every process of the scenario reports (and any process that exited by
//! itself is started again, as a supervisor would): each processor's lag (records and
//! seconds), finished and dead-lettered records from its /metrics, the CPU and memory of every
//! process from /proc, and what the fakes hold.
//!
//! Invariant: a sample only holds what was read at that moment; a process that did not answer
//! (killed, restarting) is marked down for that second, never given a made-up value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::procs::{Proc, usage};
use crate::standalone::FakeAdmin;

/// One processor at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessorSample {
    pub up: bool,
    /// Sum over its partitions of records not yet finished.
    pub lag_records: f64,
    /// Age of its oldest unfinished record, over its partitions.
    pub lag_seconds: f64,
    /// Records finished (effect done) since the process started.
    pub ok: f64,
    pub dead_lettered: f64,
    /// Partitions paused (an open circuit).
    pub paused: f64,
}

/// Every process at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the first POST.
    pub t: f64,
    pub processors: BTreeMap<String, ProcessorSample>,
    /// CPU seconds and resident bytes of each process (gateway, processors, fakes, broker).
    pub usage: BTreeMap<String, (f64, u64)>,
    pub acked: usize,
    pub twilio_messages: usize,
    pub sheet_rows: usize,
}

/// Processes the sampler reads; the fault injector replaces their incarnations.
pub type Procs = Arc<Mutex<Vec<Proc>>>;

/// Sums of `name`'s samples (and the largest), over series whose labels hold every pair.
fn metric(text: &str, name: &str) -> (f64, f64) {
    let (mut sum, mut max) = (0.0, 0.0f64);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series_name = series.split('{').next().unwrap_or_default();
        if series_name != name {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            sum += v;
            max = max.max(v);
        }
    }
    (sum, max)
}

/// Reads one sample.
pub async fn sample(
    client: &reqwest::Client,
    procs: &Procs,
    pid_files: &[(String, PathBuf)],
    twilio: &FakeAdmin,
    sheets: &FakeAdmin,
    acked: usize,
    t: f64,
) -> Sample {
    let targets: Vec<(String, u32, Option<String>)> = {
        let procs = procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|p| (p.name.clone(), p.pid(), p.metrics.clone()))
            .collect()
    };
    let mut sample = Sample {
        t,
        acked,
        ..Default::default()
    };
    for (name, pid, metrics) in &targets {
        if let Some(u) = usage(*pid) {
            sample.usage.insert(name.clone(), u);
        }
        if name == "gateway" {
            continue;
        }
        let Some(base) = metrics else { continue };
        let text = match client
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_millis(800))
            .send()
            .await
        {
            Ok(response) => response.text().await.ok(),
            Err(_) => None,
        };
        let processor = match text {
            Some(text) => ProcessorSample {
                up: true,
                lag_records: metric(&text, "formstream_processor_consumer_lag_records").0,
                lag_seconds: metric(&text, "formstream_processor_consumer_lag_seconds").1,
                ok: ok_records(&text),
                dead_lettered: metric(&text, "formstream_processor_dead_letters_total").0,
                paused: metric(&text, "formstream_processor_paused_partitions").0,
            },
            None => ProcessorSample::default(),
        };
        sample.processors.insert(name.clone(), processor);
    }
    for (name, file) in pid_files {
        let pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        if let Some(u) = pid.and_then(usage) {
            sample.usage.insert(name.clone(), u);
        }
    }
    if let Ok(stats) = twilio.stats().await {
        sample.twilio_messages = stats.effects;
    }
    if let Ok(stats) = sheets.stats().await {
        sample.sheet_rows = stats.effects;
    }
    sample
}

/// Records finished with their effect: `formstream_processor_records_total{outcome="ok"}`.
pub fn ok_records(text: &str) -> f64 {
    crate::runtime::metric_value(
        text,
        "formstream_processor_records_total",
        &[("outcome", "ok")],
    )
}

/// Samples every second until `stop` is set.
#[allow(clippy::too_many_arguments)] // each is one source the sample reads
pub async fn run(
    procs: Procs,
    pid_files: Vec<(String, PathBuf)>,
    twilio: FakeAdmin,
    sheets: FakeAdmin,
    ledger: Arc<super::load::Ledger>,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        // The supervisor: a process that exited by itself is started again (a failure to start
        // it shows at the fault injector's or the drain's next check).
        for proc in procs.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            let _ = proc.restart_if_exited();
        }
        let acked = ledger
            .acked_total
            .load(std::sync::atomic::Ordering::Relaxed);
        let t = started.elapsed().as_secs_f64();
        let sample = sample(&client, &procs, &pid_files, &twilio, &sheets, acked, t).await;
        samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample);
    }
}
