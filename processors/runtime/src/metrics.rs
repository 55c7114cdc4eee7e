//! Every metric the processor runtime exports, in one place, one method per event.
//!
//! Invariant: labels only take values from bounded sets (processor names, topic names, partition
//! numbers, fixed outcome and kind names); never form ids, response ids, phones or cities.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// From 1 ms (a local effect) to 60 s (a slow API near its timeout).
const EFFECT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The circuit breaker's state as a number: 0 closed, 1 half-open, 2 open.
#[derive(Debug, Clone, Copy)]
pub enum CircuitGauge {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    processor: String,
    records: IntCounterVec,
    dead_letters: IntCounterVec,
    in_flight: IntGaugeVec,
    buffered: IntGaugeVec,
    lag_records: IntGaugeVec,
    lag_seconds: GaugeVec,
    committed_offset: IntGaugeVec,
    paused_partitions: IntGaugeVec,
    circuit_state: IntGaugeVec,
    open_circuits: IntGaugeVec,
    waiting: IntGaugeVec,
    commits: IntCounterVec,
    rebalances: IntCounterVec,
    /// Children resolved once: these are touched for every record.
    ok: prometheus::IntCounter,
    retried: prometheus::IntCounter,
    effect: prometheus::Histogram,
    transaction_duration: prometheus::Histogram,
    outputs: prometheus::IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

impl Metrics {
    pub fn new(processor: &str) -> Self {
        let registry = Registry::new();
        let records = counter(
            &registry,
            "formstream_processor_records_total",
            "Record attempts by outcome: ok (effect done), retried (a retriable failure, to be tried again), dead_lettered.",
            &["processor", "outcome"],
        );
        let dead_letters = counter(
            &registry,
            "formstream_processor_dead_letters_total",
            "Records sent to the dead-letter topic, by kind (permanent, retries_exhausted, undecodable, unknown_form, forbidden).",
            &["processor", "kind"],
        );
        let effect_duration = HistogramVec::new(
            HistogramOpts::new(
                "formstream_processor_effect_duration_seconds",
                "Time one call to the processor's effect took (a batch counts once).",
            )
            .buckets(EFFECT_BUCKETS.to_vec()),
            &["processor"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(effect_duration.clone()))
            .expect("unique metric name");
        let in_flight = gauge(
            &registry,
            "formstream_processor_records_in_flight",
            "Units (records, or batches of them) handed to the worker lanes: effect running, waiting for a retry, or waiting in a lane for one of the --max-in-flight slots.",
            &["processor"],
        );
        let buffered = gauge(
            &registry,
            "formstream_processor_records_buffered",
            "Records fetched and not yet finished (in flight or waiting behind their key).",
            &["processor"],
        );
        let lag_records = gauge(
            &registry,
            "formstream_processor_consumer_lag_records",
            "Records of the partition not yet finished: high watermark minus the committable offset.",
            &["processor", "topic", "partition"],
        );
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "formstream_processor_consumer_lag_seconds",
                "Age of the oldest unfinished record of the partition (0 when caught up); while that record is not fetched yet (paused partitions), the time since the partition last made progress.",
            ),
            &["processor", "topic", "partition"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric name");
        let committed_offset = gauge(
            &registry,
            "formstream_processor_committable_offset",
            "The offset the runtime stored for commit: every record below it is finished.",
            &["processor", "topic", "partition"],
        );
        let paused_partitions = gauge(
            &registry,
            "formstream_processor_paused_partitions",
            "Assigned partitions paused by the open circuit, or after full buffers stopped intake for 10 s.",
            &["processor"],
        );
        let circuit_state = gauge(
            &registry,
            "formstream_processor_circuit_state",
            "The processor's one circuit (failures that name no target; see formstream_processor_open_circuits for the circuits per target): 0 closed, 1 half-open, 2 open (partitions paused, target probed).",
            &["processor"],
        );
        let open_circuits = gauge(
            &registry,
            "formstream_processor_open_circuits",
            "Targets (webhook receivers, spreadsheets, Twilio accounts, each per organisation) whose circuit is open or half-open, by kind: their records wait while the others flow. Logs name each target.",
            &["processor", "kind"],
        );
        let waiting = gauge(
            &registry,
            "formstream_processor_records_waiting",
            "Records held back because their target's circuit is open (counted in the buffered records too).",
            &["processor"],
        );
        let commits = counter(
            &registry,
            "formstream_processor_commits_total",
            "Offset commits, by result (ok, error).",
            &["processor", "result"],
        );
        let rebalances = counter(
            &registry,
            "formstream_processor_rebalances_total",
            "Partitions assigned, revoked or lost in rebalances.",
            &["processor", "kind"],
        );
        let transaction_duration = HistogramVec::new(
            HistogramOpts::new(
                "formstream_processor_transaction_duration_seconds",
                "Time one committed Kafka transaction took (outputs sent, offsets added, committed); transactional processors only.",
            )
            .buckets(EFFECT_BUCKETS.to_vec()),
            &["processor"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(transaction_duration.clone()))
            .expect("unique metric name");
        let outputs = counter(
            &registry,
            "formstream_processor_outputs_total",
            "Records published in committed transactions; transactional processors only.",
            &["processor"],
        );
        // The circuit starts closed: say so from the first scrape, not only after a change.
        circuit_state
            .with_label_values(&[processor])
            .set(CircuitGauge::Closed as i64);
        let ok = records.with_label_values(&[processor, "ok"]);
        let retried = records.with_label_values(&[processor, "retried"]);
        let effect = effect_duration.with_label_values(&[processor]);
        Metrics {
            ok,
            retried,
            effect,
            transaction_duration: transaction_duration.with_label_values(&[processor]),
            outputs: outputs.with_label_values(&[processor]),
            registry,
            processor: processor.to_owned(),
            records,
            dead_letters,
            in_flight,
            buffered,
            lag_records,
            lag_seconds,
            committed_offset,
            paused_partitions,
            circuit_state,
            open_circuits,
            waiting,
            commits,
            rebalances,
        }
    }

    pub fn effect(&self, elapsed: Duration) {
        self.effect.observe(elapsed.as_secs_f64());
    }

    pub fn records(&self, outcome: &str, count: u64) {
        match outcome {
            "ok" => self.ok.inc_by(count),
            "retried" => self.retried.inc_by(count),
            other => self
                .records
                .with_label_values(&[&self.processor, other])
                .inc_by(count),
        }
    }

    pub fn dead_lettered(&self, kind: &str) {
        self.dead_letters
            .with_label_values(&[&self.processor, kind])
            .inc();
        self.records("dead_lettered", 1);
    }

    pub fn in_flight(&self, records: usize, buffered: usize) {
        self.in_flight
            .with_label_values(&[&self.processor])
            .set(records as i64);
        self.buffered
            .with_label_values(&[&self.processor])
            .set(buffered as i64);
    }

    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
        lag: i64,
        lag_seconds: f64,
        committable: i64,
    ) {
        let partition = partition.to_string();
        let labels = [self.processor.as_str(), topic, partition.as_str()];
        self.lag_records.with_label_values(&labels).set(lag.max(0));
        self.lag_seconds
            .with_label_values(&labels)
            .set(lag_seconds.max(0.0));
        self.committed_offset
            .with_label_values(&labels)
            .set(committable);
    }

    /// A partition left this instance: its series go with it.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let partition = partition.to_string();
        let labels = [self.processor.as_str(), topic, partition.as_str()];
        let _ = self.lag_records.remove_label_values(&labels);
        let _ = self.lag_seconds.remove_label_values(&labels);
        let _ = self.committed_offset.remove_label_values(&labels);
    }

    pub fn paused(&self, partitions: usize) {
        self.paused_partitions
            .with_label_values(&[&self.processor])
            .set(partitions as i64);
    }

    pub fn circuit(&self, state: CircuitGauge) {
        self.circuit_state
            .with_label_values(&[&self.processor])
            .set(state as i64);
    }

    /// `count` targets of `kind` have their circuit open or half-open.
    pub fn open_circuits(&self, kind: &str, count: usize) {
        self.open_circuits
            .with_label_values(&[&self.processor, kind])
            .set(count as i64);
    }

    /// Records waiting for their target's circuit.
    pub fn waiting(&self, records: usize) {
        self.waiting
            .with_label_values(&[&self.processor])
            .set(records as i64);
    }

    pub fn commit(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.commits
            .with_label_values(&[&self.processor, result])
            .inc();
    }

    /// A committed transaction: how long it took and how many outputs it published.
    pub fn transaction(&self, elapsed: Duration, outputs: usize) {
        self.transaction_duration.observe(elapsed.as_secs_f64());
        self.outputs.inc_by(outputs as u64);
    }

    pub fn rebalance(&self, kind: &str, partitions: usize) {
        self.rebalances
            .with_label_values(&[&self.processor, kind])
            .inc_by(partitions as u64);
    }

    /// Adds a processor's own metric to this registry ([`crate::Processor::metrics`]).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> anyhow::Result<()> {
        self.registry
            .register(collector)
            .map_err(|e| anyhow::anyhow!("registering a processor's metric: {e}"))
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "Could not encode metrics.");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
