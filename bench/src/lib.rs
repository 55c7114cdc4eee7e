//! `formstream load`: the gateway's load generator, and the no-op server it is compared with.
//!
//! A run creates (or reuses) hundreds of forms with skewed popularity, pre-generates request bodies,
//! then keeps a fixed number of keep-alive connections busy for a duration, singly or in batches,
//! and reports throughput, HdrHistogram latencies, every status seen, and the memory and CPU of the
//! gateway, the broker and itself.
//!
//! Modules: `workload` (forms, popularity and pre-generated bodies), `client` (the timed phase),
//! `noop` (the no-op server), `procfs` (memory and CPU of the processes involved).
//!
//! Invariant: the report never hides a failure (every non-2xx and transport error is counted and
//! shown) and never invents a figure (what could not be measured is reported as absent).

mod client;
mod noop;
mod procfs;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use formstream_core::config::parse_duration;
use futures::StreamExt;
use hyper::header::HeaderValue;
use serde::Serialize;

use crate::client::{Outcome, Plan};
use crate::procfs::{Usage, Watch};
use crate::workload::{SampleSizes, Zipf};

/// What `formstream load` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One `POST /v1/forms/{id}/responses` per response.
    Single,
    /// `POST /v1/responses/batch` with --batch-size items, across forms.
    Batch,
    /// Serve the no-op HTTP ceiling on --listen (parses each JSON body, answers 202/207).
    NoopServer,
}

/// The `formstream load` command.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// What to do: load the gateway singly or in batches, or serve the no-op ceiling.
    #[arg(long, env = "FORMSTREAM_LOAD_MODE", value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,

    /// Gateway (or no-op server) base URL; plain http only.
    // The gateway's default listen address.
    #[arg(
        long,
        env = "FORMSTREAM_LOAD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// API key sent as `Authorization: Bearer <key>`.
    // The published local development key of organisation acme (deploy/local/api-keys.toml).
    #[arg(
        long,
        env = "FORMSTREAM_LOAD_API_KEY",
        default_value = "dev-acme-key",
        hide_env_values = true
    )]
    pub api_key: String,

    /// Organisation of the API key; only used to size the Avro records exactly.
    #[arg(long, env = "FORMSTREAM_LOAD_ORGANISATION", default_value = "acme")]
    pub organisation: String,

    /// Number of forms to create (or reuse, if they already exist).
    // "Hundreds of forms" in the issue.
    #[arg(long, env = "FORMSTREAM_LOAD_FORMS", default_value_t = 300)]
    pub forms: usize,

    /// Business rules per generated form (CEL, over its questions), for the validate benchmark.
    #[arg(long, env = "FORMSTREAM_LOAD_RULES_PER_FORM", default_value_t = 0)]
    pub rules_per_form: usize,

    /// Zipf exponent of form popularity: the k-th form gets weight 1/k^s. 0 is uniform.
    // 1.1: with 300 forms the hottest gets ~20% of the responses, the top 10 ~54%.
    #[arg(long, env = "FORMSTREAM_LOAD_ZIPF", default_value_t = 1.1)]
    pub zipf_exponent: f64,

    /// Form ids are `<prefix>-0000`, `<prefix>-0001`, ...; runs with the same prefix and seed
    /// reuse the same forms.
    #[arg(long, env = "FORMSTREAM_LOAD_FORM_PREFIX", default_value = "bench")]
    pub form_prefix: String,

    /// Seed of every random choice, so runs are repeatable.
    #[arg(long, env = "FORMSTREAM_LOAD_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Keep-alive connections, each with one request in flight.
    // 64, as in the issue's `wrk -t1 -c64` ceiling.
    #[arg(
        long,
        short = 'c',
        env = "FORMSTREAM_LOAD_CONNECTIONS",
        default_value_t = 64
    )]
    pub connections: usize,

    /// Runtime threads of the load generator.
    // 1, like `wrk -t1`: the load generator shares the machine with the gateway and the broker.
    #[arg(long, env = "FORMSTREAM_LOAD_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// Length of the measured phase, e.g. 20s.
    #[arg(long, short = 'd', env = "FORMSTREAM_LOAD_DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after this many measured requests (and after --duration at the latest).
    #[arg(long, env = "FORMSTREAM_LOAD_REQUESTS")]
    pub requests: Option<u64>,

    /// Load sent before the measured phase and not counted (connections, caches, JIT of the broker).
    #[arg(long, env = "FORMSTREAM_LOAD_WARMUP", default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Items per batch request (batch mode).
    // Half the gateway's default limit of 1,000 items; about 200 KB of JSON.
    #[arg(long, env = "FORMSTREAM_LOAD_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// Distinct request bodies generated before the timed phase and sent in rotation.
    #[arg(long, env = "FORMSTREAM_LOAD_BODIES", default_value_t = 8192)]
    pub bodies: usize,

    /// Give every response a fresh client-side response id (as real collectors do), written into
    /// the pre-generated body just before it is sent. Off: the gateway generates the ids.
    #[arg(long, env = "FORMSTREAM_LOAD_RESPONSE_IDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub response_ids: bool,

    /// Generated responses validated with the gateway's validator and Avro-encoded, to report the
    /// record size the gateway publishes.
    #[arg(long, env = "FORMSTREAM_LOAD_SIZE_SAMPLE", default_value_t = 2000)]
    pub size_sample: usize,

    /// Gateway process id: its peak RSS (VmHWM) and CPU use are reported.
    #[arg(long, env = "FORMSTREAM_LOAD_GATEWAY_PID")]
    pub gateway_pid: Option<u32>,

    /// Broker process id: its CPU use is reported.
    #[arg(long, env = "FORMSTREAM_LOAD_BROKER_PID")]
    pub broker_pid: Option<u32>,

    /// Longest wait for one answer before it counts as a transport error.
    #[arg(long, env = "FORMSTREAM_LOAD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Skip creating the forms (the server already has them, or is the no-op server).
    #[arg(long, env = "FORMSTREAM_LOAD_SKIP_SETUP")]
    pub skip_setup: bool,

    /// Write one single-response body to this file (for wrk), then run as usual.
    #[arg(long, env = "FORMSTREAM_LOAD_WRITE_BODY")]
    pub write_body: Option<PathBuf>,

    /// Print one JSON summary line on stdout (the human report goes to stderr).
    #[arg(long, env = "FORMSTREAM_LOAD_JSON")]
    pub json: bool,

    /// Address the no-op server listens on (noop-server mode).
    #[arg(long, env = "FORMSTREAM_LOAD_LISTEN", default_value = "127.0.0.1:8099")]
    pub listen: SocketAddr,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.mode == Mode::NoopServer {
        return noop::serve(args.listen).await;
    }
    if args.connections == 0 || args.threads == 0 || args.bodies == 0 {
        bail!("--connections, --threads and --bodies must be at least 1");
    }
    if args.mode == Mode::Batch && args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let target = Target::parse(&args.url)?;

    // Everything the timed phase needs is made first, so it costs no CPU while measuring.
    let prep = Instant::now();
    let forms = workload::generate_forms(
        &args.form_prefix,
        args.forms.max(1),
        args.rules_per_form,
        args.seed,
    )?;
    let zipf = Zipf::new(forms.len(), args.zipf_exponent);
    let sizes = workload::check_sample(
        &forms,
        &zipf,
        args.size_sample,
        &args.organisation,
        args.seed,
    )
    .await?;
    let templates = match args.mode {
        Mode::Single => {
            workload::single_templates(&forms, &zipf, args.bodies, args.response_ids, args.seed)?
        }
        _ => {
            // Enough batches to rotate through, within roughly --bodies items.
            let count = (args.bodies / args.batch_size).clamp(4, 64);
            workload::batch_templates(
                &forms,
                &zipf,
                count,
                args.batch_size,
                args.response_ids,
                args.seed,
            )?
        }
    };
    if let Some(path) = &args.write_body {
        let single = workload::single_templates(&forms, &zipf, 1, args.response_ids, args.seed)?;
        let body = single.first().map(|t| t.body.clone()).unwrap_or_default();
        std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
    }
    let avg_request_bytes = templates.iter().map(|t| t.body.len()).sum::<usize>() as f64
        / templates.len().max(1) as f64;
    tracing::info!(elapsed = ?prep.elapsed(), bodies = templates.len(), "Workload generated.");

    if !args.skip_setup {
        wait_ready(&args.url, Duration::from_secs(60)).await?;
        create_forms(&args, &forms).await?;
    }

    let plan = Plan {
        addr: target.addr.clone(),
        host: HeaderValue::from_str(&target.addr).context("host header")?,
        auth: Some(
            HeaderValue::from_str(&format!("Bearer {}", args.api_key)).context("API key header")?,
        ),
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        max_requests: args.requests,
        templates: Arc::new(templates),
        fresh_ids: args.response_ids,
        request_timeout: args.request_timeout,
        seed: args.seed,
    };

    let mut watches: Vec<Watch> = Vec::new();
    let threads = args.threads;
    // The load runs on a runtime of its own, sized by --threads, so that its CPU is bounded and
    // does not mix with the runtime of this binary.
    let load = tokio::task::spawn_blocking(move || -> anyhow::Result<Outcome> {
        let runtime = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
        };
        runtime.block_on(client::drive(plan))
    });
    // Watch the measured window only.
    tokio::time::sleep(args.warmup).await;
    let mut pids = vec![("loadgen", std::process::id().to_string())];
    if let Some(pid) = args.gateway_pid {
        pids.push(("gateway", pid.to_string()));
    }
    if let Some(pid) = args.broker_pid {
        pids.push(("broker", pid.to_string()));
    }
    for (name, pid) in pids {
        watches.push(Watch::start(name, pid));
    }
    let machine = procfs::MachineWatch::start();
    tokio::pin!(load);
    let outcome = loop {
        tokio::select! {
            done = &mut load => break done.context("the load runtime panicked")??,
            _ = tokio::time::sleep(Duration::from_millis(250)) => watches.iter_mut().for_each(Watch::sample),
        }
    };
    let usage: Vec<Usage> = watches.into_iter().map(Watch::finish).collect();
    let machine_busy_cores = machine.busy_cores();

    let mut summary = Summary::new(&args, &zipf, sizes, avg_request_bytes, &outcome, usage);
    summary.machine_busy_cores = machine_busy_cores;
    summary.machine_cores = std::thread::available_parallelism().map(|n| n.get()).ok();
    eprintln!("{}", summary.human());
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Host and port of a plain-http base URL.
struct Target {
    addr: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must be http://host:port (got {url:?})");
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            bail!("--url has no host: {url:?}");
        }
        let addr = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target { addr })
    }
}

async fn wait_ready(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        match client.get(format!("{url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if Instant::now() >= deadline => {
                bail!("{url}/readyz still answers {}", r.status())
            }
            Err(e) if Instant::now() >= deadline => bail!("{url}/readyz does not answer: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Creates every form; one that already exists (409, same prefix and seed) is reused.
async fn create_forms(args: &LoadArgs, forms: &[workload::BenchForm]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<bool>> = futures::stream::iter(forms)
        .map(|form| {
            let client = client.clone();
            async move {
                let response = client
                    .post(format!("{}/v1/forms", args.url))
                    .bearer_auth(&args.api_key)
                    .json(&form.create_body)
                    .send()
                    .await
                    .with_context(|| format!("creating form {}", form.id))?;
                match response.status().as_u16() {
                    201 => Ok(true),
                    409 => Ok(false),
                    status => {
                        let text = response.text().await.unwrap_or_default();
                        bail!("creating form {} got HTTP {status}: {text}", form.id)
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut created = 0;
    for result in results {
        created += usize::from(result?);
    }
    tracing::info!(created, reused = forms.len() - created, elapsed = ?started.elapsed(), "Forms ready.");
    Ok(())
}

#[derive(Serialize)]
struct Latency {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

/// The report: one JSON line with --json, and a human rendering on stderr.
#[derive(Serialize)]
struct Summary {
    mode: Mode,
    url: String,
    connections: usize,
    threads: usize,
    batch_size: Option<usize>,
    forms: usize,
    zipf_exponent: f64,
    /// Share of responses to the hottest form, and to the 10 hottest.
    top1_share: f64,
    top10_share: f64,
    response_ids: bool,
    seconds: f64,
    requests: u64,
    requests_per_s: f64,
    responses_accepted: u64,
    responses_per_s: f64,
    rejected_items: u64,
    transport_errors: u64,
    statuses: std::collections::BTreeMap<String, u64>,
    non_2xx: u64,
    latency: Latency,
    avg_request_bytes: f64,
    sizes: SampleSizes,
    processes: Vec<Usage>,
    /// Busy cores of the whole machine in the measured window, every process included.
    machine_busy_cores: Option<f64>,
    machine_cores: Option<usize>,
    errors: Vec<String>,
}

impl Summary {
    fn new(
        args: &LoadArgs,
        zipf: &Zipf,
        sizes: SampleSizes,
        avg_request_bytes: f64,
        outcome: &Outcome,
        processes: Vec<Usage>,
    ) -> Self {
        let t = &outcome.tally;
        let secs = outcome.elapsed.as_secs_f64().max(1e-9);
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &t.latency;
        let non_2xx = t
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        Summary {
            mode: args.mode,
            url: args.url.clone(),
            connections: args.connections,
            threads: args.threads,
            batch_size: (args.mode == Mode::Batch).then_some(args.batch_size),
            forms: args.forms,
            zipf_exponent: args.zipf_exponent,
            top1_share: zipf.share_of_top(1),
            top10_share: zipf.share_of_top(10),
            response_ids: args.response_ids,
            seconds: secs,
            requests: t.requests,
            requests_per_s: t.requests as f64 / secs,
            responses_accepted: t.accepted,
            responses_per_s: t.accepted as f64 / secs,
            rejected_items: t.rejected_items,
            transport_errors: t.transport_errors,
            statuses: t
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            non_2xx,
            latency: Latency {
                p50_ms: ms(h.value_at_quantile(0.5)),
                p90_ms: ms(h.value_at_quantile(0.9)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
                mean_ms: h.mean() / 1000.0,
            },
            avg_request_bytes,
            sizes,
            processes,
            machine_busy_cores: None,
            machine_cores: None,
            errors: t.errors.clone(),
        }
    }

    fn human(&self) -> String {
        let mut s = format!(
            "mode {:?} against {}: {} connections, {} thread(s){}\n\
             {:.1} s measured: {} requests ({:.0}/s), {} responses accepted ({:.0}/s)\n\
             latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}\n\
             statuses: {:?}  transport errors: {}  rejected batch items: {}\n\
             bodies: {:.0} B per request; per response {:.0} B JSON -> {:.0} B Avro (sample of {})\n\
             forms: {} (zipf s={}, hottest form {:.0}% of responses, top 10 {:.0}%)",
            self.mode,
            self.url,
            self.connections,
            self.threads,
            self.batch_size
                .map(|b| format!(", {b} items per batch"))
                .unwrap_or_default(),
            self.seconds,
            self.requests,
            self.requests_per_s,
            self.responses_accepted,
            self.responses_per_s,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
            self.latency.mean_ms,
            self.statuses,
            self.transport_errors,
            self.rejected_items,
            self.avg_request_bytes,
            self.sizes.avg_item_json_bytes,
            self.sizes.avg_avro_record_bytes,
            self.sizes.responses,
            self.forms,
            self.zipf_exponent,
            self.top1_share * 100.0,
            self.top10_share * 100.0,
        );
        for p in &self.processes {
            let fmt = |v: Option<f64>, unit: &str| {
                v.map(|v| format!("{v:.2}{unit}"))
                    .unwrap_or_else(|| "n/a".into())
            };
            s.push_str(&format!(
                "\n{} (pid {}): CPU {} cores, peak RSS in window {}, VmHWM {}",
                p.name,
                p.pid,
                fmt(p.cores, ""),
                fmt(p.peak_rss_mib, " MiB"),
                fmt(p.hwm_mib, " MiB")
            ));
        }
        if let (Some(busy), Some(cores)) = (self.machine_busy_cores, self.machine_cores) {
            s.push_str(&format!(
                "\nmachine: {busy:.2} of {cores} cores busy in the window"
            ));
        }
        if self.non_2xx > 0 || self.transport_errors > 0 || self.rejected_items > 0 {
            s.push_str(&format!(
                "\nWARNING: {} non-2xx answers, {} transport errors, {} rejected items; first errors: {:?}",
                self.non_2xx, self.transport_errors, self.rejected_items, self.errors
            ));
        }
        s
    }
}
