//! Every metric the gateway exports, in one place, one method per event.
//!
//! Invariant: labels only take values from bounded sets (route templates, methods, status codes,
//! configured topic names, fixed outcome and error kinds), never form ids, response ids or phones.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use formstream_core::forms::FormsObserver;

use crate::kafka::PublishError;

/// Buckets from 0.5 ms to 10 s: the gateway's p99 target is 20 ms, and a broker outage pushes
/// requests out to the produce timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_in_flight: IntGauge,
    produce_duration: HistogramVec,
    kafka_errors: IntCounterVec,
    responses: IntCounterVec,
    forms_view_ready: IntGauge,
    forms_view_forms: IntGauge,
    forms_view_decode_errors: IntCounterVec,
    flags_view_ready: IntGauge,
    flags_view_responses: IntGauge,
    flags_view_open: IntGauge,
    flags_view_decode_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "formstream_gateway_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("static metric definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "formstream_gateway_http_request_duration_seconds",
                "Time from request to response, by route template and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("static metric definition");
        let http_in_flight = IntGauge::new(
            "formstream_gateway_http_requests_in_flight",
            "HTTP requests being handled now.",
        )
        .expect("static metric definition");
        let produce_duration = HistogramVec::new(
            HistogramOpts::new(
                "formstream_gateway_produce_duration_seconds",
                "Time from produce to Kafka's acknowledgement (or failure), by topic and outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["topic", "outcome"],
        )
        .expect("static metric definition");
        let kafka_errors = IntCounterVec::new(
            Opts::new("formstream_gateway_kafka_errors_total", "Records Kafka did not acknowledge, by topic and kind (timeout, queue_full, too_large, broker)."),
            &["topic", "kind"],
        )
        .expect("static metric definition");
        let responses = IntCounterVec::new(
            Opts::new(
                "formstream_gateway_responses_total",
                "Response submissions, by outcome (accepted, duplicate, invalid, unavailable).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let forms_view_ready = IntGauge::new(
            "formstream_gateway_forms_view_ready",
            "1 once the forms view has caught up with the forms topic.",
        )
        .expect("static metric definition");
        let forms_view_forms = IntGauge::new(
            "formstream_gateway_forms_view_forms",
            "Forms held in the forms view.",
        )
        .expect("static metric definition");
        let forms_view_decode_errors = IntCounterVec::new(
            Opts::new(
                "formstream_gateway_forms_view_decode_errors_total",
                "Records of the forms topic that could not be decoded and were skipped.",
            ),
            &["topic"],
        )
        .expect("static metric definition");
        let flags_view_ready = IntGauge::new(
            "formstream_gateway_flags_view_ready",
            "1 once the flags view has caught up with the response-flags topic.",
        )
        .expect("static metric definition");
        let flags_view_responses = IntGauge::new(
            "formstream_gateway_flags_view_responses",
            "Responses held in the flags view: every response ever flagged, open or resolved.",
        )
        .expect("static metric definition");
        let flags_view_open = IntGauge::new(
            "formstream_gateway_flags_view_open",
            "Responses whose flag is open in the flags view.",
        )
        .expect("static metric definition");
        let flags_view_decode_errors = IntCounterVec::new(
            Opts::new(
                "formstream_gateway_flags_view_decode_errors_total",
                "Records of the response-flags topic that could not be decoded and were skipped.",
            ),
            &["topic"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(http_in_flight.clone()),
            Box::new(produce_duration.clone()),
            Box::new(kafka_errors.clone()),
            Box::new(responses.clone()),
            Box::new(forms_view_ready.clone()),
            Box::new(forms_view_forms.clone()),
            Box::new(forms_view_decode_errors.clone()),
            Box::new(flags_view_ready.clone()),
            Box::new(flags_view_responses.clone()),
            Box::new(flags_view_open.clone()),
            Box::new(flags_view_decode_errors.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            produce_duration,
            kafka_errors,
            responses,
            forms_view_ready,
            forms_view_forms,
            forms_view_decode_errors,
            flags_view_ready,
            flags_view_responses,
            flags_view_open,
            flags_view_decode_errors,
        }
    }

    pub fn request_started(&self) {
        self.http_in_flight.inc();
    }

    /// A request answered or abandoned: out of the in-flight gauge.
    pub fn request_ended(&self) {
        self.http_in_flight.dec();
    }

    /// An answered request, by route, method and status.
    pub fn request_finished(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, method, status_label(status)])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts the outcomes of records published together. Each record is timed by the wait of
    /// its whole call: a record of a batch counts the batch's wait.
    pub fn observe_produced(
        &self,
        topic: &str,
        elapsed: Duration,
        outcomes: &[Result<crate::kafka::Delivered, PublishError>],
    ) {
        let seconds = elapsed.as_secs_f64();
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        let ok = outcomes.len() - failed;
        if ok > 0 {
            let histogram = self.produce_duration.with_label_values(&[topic, "ok"]);
            for _ in 0..ok {
                histogram.observe(seconds);
            }
        }
        if failed > 0 {
            let histogram = self.produce_duration.with_label_values(&[topic, "error"]);
            for error in outcomes.iter().filter_map(|o| o.as_ref().err()) {
                histogram.observe(seconds);
                self.kafka_errors
                    .with_label_values(&[topic, error.kind()])
                    .inc();
            }
        }
    }

    pub fn response(&self, outcome: ResponseOutcome) {
        self.responses.with_label_values(&[outcome.label()]).inc();
    }

    /// Counts `n` responses with the same outcome.
    pub fn responses(&self, outcome: ResponseOutcome, n: usize) {
        if n > 0 {
            self.responses
                .with_label_values(&[outcome.label()])
                .inc_by(n as u64);
        }
    }

    pub fn flags_view(&self, ready: bool, responses: usize, open: usize) {
        self.flags_view_ready.set(i64::from(ready));
        self.flags_view_responses.set(responses as i64);
        self.flags_view_open.set(open as i64);
    }

    pub fn flags_view_decode_error(&self, topic: &str) {
        self.flags_view_decode_errors
            .with_label_values(&[topic])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "Could not encode metrics.");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The gateway's forms view reports into its metrics.
impl FormsObserver for Metrics {
    fn decode_error(&self, topic: &str) {
        self.forms_view_decode_errors
            .with_label_values(&[topic])
            .inc();
    }

    fn view_changed(&self, ready: bool, forms: usize) {
        self.forms_view_ready.set(i64::from(ready));
        self.forms_view_forms.set(forms as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ResponseOutcome {
    Accepted,
    Duplicate,
    Invalid,
    Unavailable,
}

impl ResponseOutcome {
    fn label(self) -> &'static str {
        match self {
            ResponseOutcome::Accepted => "accepted",
            ResponseOutcome::Duplicate => "duplicate",
            ResponseOutcome::Invalid => "invalid",
            ResponseOutcome::Unavailable => "unavailable",
        }
    }
}

/// Status codes as static strings, so that hot paths do not allocate a label.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        207 => "207",
        400 => "400",
        401 => "401",
        404 => "404",
        409 => "409",
        412 => "412",
        413 => "413",
        415 => "415",
        422 => "422",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
