//! The scenario's report: bench/E2E.md-style Markdown with every figure and check, the sampled
//! series as CSV, and PNG plots drawn here (plotters) of lag in records and in seconds per
//! processor, throughput, CPU and memory per process, with the faults marked.
//!
//! Invariant: every number in the report comes from the run's outcome; a figure that was not
//! measured is written as "not measured", never estimated.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::{Outcome, Scenario};

/// What the report compares each figure with.
pub struct Targets {
    pub run_seconds: f64,
    pub first_effect_seconds: f64,
    pub bound_factor: f64,
}

pub const TARGETS: Targets = Targets {
    run_seconds: 720.0,
    first_effect_seconds: 5.0,
    bound_factor: 1.25,
};

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Seconds each processor took to drain after each fault: from the fault's end until its lag in
/// seconds is back under its median lag of the 30 s before the fault (plus 2 s).
pub fn drain_times(outcome: &Outcome) -> Vec<(String, String, Option<f64>)> {
    let mut rows = Vec::new();
    for fault in &outcome.faults {
        for processor in super::PROCESSORS {
            if fault.target.as_deref().is_some_and(|t| t != *processor) {
                continue;
            }
            let mut before: Vec<f64> = outcome
                .samples
                .iter()
                .filter(|s| s.t >= fault.start - 30.0 && s.t < fault.start)
                .filter_map(|s| {
                    s.processors
                        .get(*processor)
                        .filter(|p| p.up)
                        .map(|p| p.lag_seconds)
                })
                .collect();
            before.sort_by(f64::total_cmp);
            let baseline = before.get(before.len() / 2).copied().unwrap_or(0.0) + 2.0;
            let back = outcome
                .samples
                .iter()
                .filter(|s| s.t >= fault.end)
                .find(|s| {
                    s.processors
                        .get(*processor)
                        .is_some_and(|p| p.up && p.lag_seconds <= baseline)
                })
                .map(|s| s.t - fault.end);
            let what = match &fault.target {
                Some(target) => format!("{} {target} at {:.0} s", fault.what, fault.start),
                None => format!("{} at {:.0}-{:.0} s", fault.what, fault.start, fault.end),
            };
            rows.push((what, (*processor).to_owned(), back));
        }
    }
    rows
}

/// Writes `E2E.md`-style Markdown, `series.csv` and the PNG plots into `dir`; returns the Markdown.
pub fn write(
    outcome: &Outcome,
    scenario: &Scenario,
    dir: &Path,
    command: &str,
    commit: &str,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    write_csv(outcome, &dir.join("series.csv"))?;
    let plots = plot_all(outcome, dir)?;
    let mut md = String::new();
    let passed = outcome.passed();
    writeln!(
        md,
        "# End-to-end run {} ({})\n",
        outcome.run,
        if passed {
            "all checks passed"
        } else {
            "CHECKS FAILED"
        }
    )?;
    writeln!(
        md,
        "Command: `{command}` on commit {commit}. Machine: {} cores, load average {} at the start and {} at the end (1, 5, 15 min).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        outcome.loadavg_start,
        outcome.loadavg_end
    )?;
    writeln!(
        md,
        "Load: {} responses to {} forms (Zipf {}), offered at {:.0}/s in batches of {}; {} partitions. Twilio fake {} ms per create, receipts at {} segments/s; receipts and notify-collectors probe Twilio at most every 5 s (`--probe-max 5s`) while their circuit is open; Sheets fake {} ms per call, {} writes per minute.\n",
        outcome.responses,
        outcome.forms,
        scenario.zipf,
        outcome.rate,
        scenario.batch,
        scenario.partitions,
        scenario.twilio_latency.as_millis(),
        scenario.receipts_rate,
        scenario.sheets_latency.as_millis(),
        scenario.sheets_writes_per_minute
    )?;

    writeln!(
        md,
        "## Checks\n\n| check | result | figures |\n|---|---|---|"
    )?;
    for check in &outcome.checks {
        writeln!(
            md,
            "| {} | {} | {} |",
            check.name,
            if check.passed { "pass" } else { "FAIL" },
            check.figures.replace('|', "/")
        )?;
    }

    writeln!(md, "\n## Targets\n\n| target | measured | |\n|---|---|---|")?;
    writeln!(
        md,
        "| whole run, first POST to last effect, <= {:.0} s | {:.0} s (ingest ended at {:.0} s) | {} |",
        TARGETS.run_seconds,
        outcome.last_effect_seconds,
        outcome.ingest_seconds,
        mark(outcome.last_effect_seconds <= TARGETS.run_seconds)
    )?;
    for restart in &outcome.restarts {
        let (figure, ok) = match restart.first_effect {
            Some(s) => (format!("{s:.1} s"), s <= TARGETS.first_effect_seconds),
            None => ("none within 60 s".to_owned(), false),
        };
        writeln!(
            md,
            "| {} restarted at {:.0} s: first effect <= {:.0} s after its start | {figure} | {} |",
            restart.processor,
            restart.at,
            TARGETS.first_effect_seconds,
            mark(ok)
        )?;
    }
    for (processor, bound) in bounds(outcome, scenario) {
        let finished = outcome.finished.get(&processor).copied();
        match (finished, bound) {
            (Some(f), Some((seconds, why))) => writeln!(
                md,
                "| {processor} finishes within {} x its bound ({why}: {seconds:.0} s) | {f:.0} s, {:.2} x | {} |",
                TARGETS.bound_factor,
                f / seconds,
                mark(f <= TARGETS.bound_factor * seconds)
            )?,
            (Some(f), None) => writeln!(
                md,
                "| {processor} finishes within {} x its solo throughput | {f:.0} s; solo throughput not measured in this run | not measured |",
                TARGETS.bound_factor
            )?,
            (None, _) => writeln!(
                md,
                "| {processor} finishes | no finished record seen | MISSED |"
            )?,
        }
    }

    if !outcome.solo.is_empty() {
        writeln!(
            md,
            "\nSolo throughput: each processor alone on the machine after the checks (every other process stopped), a new consumer group over this run's records from the start, from its process start (startup and group join included) to its last counted record:\n"
        )?;
        for (processor, solo) in &outcome.solo {
            writeln!(
                md,
                "- {processor}: {:.0} records in {:.1} s, {:.0} per second",
                solo.records,
                solo.seconds,
                solo.rate()
            )?;
        }
    }

    writeln!(
        md,
        "\n## Ingest\n\nAcknowledged {} (response, revision) pairs by {:.0} s; items refused {}; items or corrections sent again after a 5xx or a refused connection {}; whole requests answered 5xx or failed {}. Twilio received {} creates; Sheets {} writes, {} answered 429.",
        outcome.acked,
        outcome.ingest_seconds,
        outcome.refused,
        outcome.retried,
        outcome.unavailable,
        outcome.twilio_writes,
        outcome.sheets_writes,
        outcome.sheets_throttled
    )?;
    for refusal in &outcome.refusals {
        writeln!(
            md,
            "- refused: `{}`",
            refusal.chars().take(300).collect::<String>()
        )?;
    }

    writeln!(
        md,
        "\n## Faults and drains\n\n| fault | processor | drained after |\n|---|---|---|"
    )?;
    for (fault, processor, back) in drain_times(outcome) {
        writeln!(
            md,
            "| {fault} | {processor} | {} |",
            back.map_or("not within the run".to_owned(), |s| format!("{s:.0} s"))
        )?;
    }

    writeln!(
        md,
        "\n## Alerts (Prometheus, scraping every second, deploy/prometheus/alerts.yml)\n"
    )?;
    match &outcome.firings {
        None => writeln!(md, "Prometheus did not run.")?,
        Some(firings) if firings.is_empty() => writeln!(md, "No alert fired.")?,
        Some(firings) => {
            // One line per (alert, processor): its partitions' firings merged.
            let mut merged: BTreeMap<(String, String), (f64, f64, usize)> = BTreeMap::new();
            for f in firings {
                let entry = merged
                    .entry((f.alert.clone(), f.processor.clone().unwrap_or_default()))
                    .or_insert((f.from, f.to, 0));
                entry.0 = entry.0.min(f.from);
                entry.1 = entry.1.max(f.to);
                entry.2 += 1;
            }
            writeln!(
                md,
                "| alert | processor | first fired | last resolved | firings (series x intervals) |\n|---|---|---|---|---|"
            )?;
            for ((alert, processor), (from, to, n)) in merged {
                writeln!(
                    md,
                    "| {alert} | {processor} | {from:.0} s | {to:.0} s | {n} |"
                )?;
            }
        }
    }

    writeln!(md, "\n## Plots\n")?;
    for (title, file) in plots {
        writeln!(md, "![{title}]({file})\n")?;
    }
    std::fs::write(dir.join("E2E.md"), &md)?;
    Ok(md)
}

/// Each processor's bound in seconds, when this run measures one: receipts at its rate limit,
/// sheets at the write quota (the writes it made, one per quota slot), validate, slang and
/// notify-collectors at their solo throughput over the records they finished in the run. None
/// can finish before the load that feeds it ends, so a bound is never below the ingest time.
fn bounds(outcome: &Outcome, scenario: &Scenario) -> Vec<(String, Option<(f64, String)>)> {
    let not_before_ingest = |(seconds, why): (f64, String)| {
        if seconds >= outcome.ingest_seconds {
            (seconds, why)
        } else {
            (
                outcome.ingest_seconds,
                format!("{why}: {seconds:.0} s, below the ingest time, so the ingest time"),
            )
        }
    };
    super::PROCESSORS
        .iter()
        .map(|p| {
            let bound = match *p {
                "receipts" => Some((
                    outcome.receipts as f64 / scenario.receipts_rate,
                    format!(
                        "{} receipts at {} per second",
                        outcome.receipts, scenario.receipts_rate
                    ),
                )),
                "sheets" => Some((
                    outcome.sheets_writes as f64 * 60.0 / scenario.sheets_writes_per_minute as f64,
                    format!(
                        "{} writes at {} per minute",
                        outcome.sheets_writes, scenario.sheets_writes_per_minute
                    ),
                )),
                _ => match (outcome.solo.get(*p), outcome.processed.get(*p)) {
                    (Some(solo), Some(processed)) => Some((
                        processed / solo.rate(),
                        format!(
                            "{processed:.0} records at its solo {:.0} per second",
                            solo.rate()
                        ),
                    )),
                    _ => None,
                },
            };
            ((*p).to_owned(), bound.map(not_before_ingest))
        })
        .collect()
}

fn write_csv(outcome: &Outcome, path: &Path) -> anyhow::Result<()> {
    let mut csv = String::from(
        "t,process,lag_records,lag_seconds,ok,dead_lettered,paused,cpu_seconds,rss_bytes\n",
    );
    for s in &outcome.samples {
        let mut names: Vec<&String> = s.processors.keys().chain(s.usage.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let p = s.processors.get(name);
            let u = s.usage.get(name);
            writeln!(
                csv,
                "{:.1},{name},{},{},{},{},{},{},{}",
                s.t,
                p.map_or(String::new(), |p| p.lag_records.to_string()),
                p.map_or(String::new(), |p| format!("{:.3}", p.lag_seconds)),
                p.map_or(String::new(), |p| p.ok.to_string()),
                p.map_or(String::new(), |p| p.dead_lettered.to_string()),
                p.map_or(String::new(), |p| p.paused.to_string()),
                u.map_or(String::new(), |u| format!("{:.2}", u.0)),
                u.map_or(String::new(), |u| u.1.to_string()),
            )?;
        }
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// A series per process: (t, value).
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn plot_all(outcome: &Outcome, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    register_font()?;
    let mut lag_records = Series::new();
    let mut lag_seconds = Series::new();
    let mut throughput = Series::new();
    let mut cpu = Series::new();
    let mut rss = Series::new();
    let mut previous: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for s in &outcome.samples {
        for (name, p) in &s.processors {
            if !p.up {
                continue;
            }
            lag_records
                .entry(name.clone())
                .or_default()
                .push((s.t, p.lag_records));
            lag_seconds
                .entry(name.clone())
                .or_default()
                .push((s.t, p.lag_seconds));
        }
        for (name, (cpu_s, bytes)) in &s.usage {
            let ok = s.processors.get(name).map_or(0.0, |p| p.ok);
            if let Some((t0, cpu0, ok0)) = previous.get(name) {
                let dt = s.t - t0;
                if dt > 0.0 && *cpu_s >= *cpu0 {
                    cpu.entry(name.clone())
                        .or_default()
                        .push((s.t, (cpu_s - cpu0) / dt * 100.0));
                }
                if dt > 0.0 && s.processors.contains_key(name) && ok >= *ok0 {
                    throughput
                        .entry(name.clone())
                        .or_default()
                        .push((s.t, (ok - ok0) / dt));
                }
            }
            previous.insert(name.clone(), (s.t, *cpu_s, ok));
            rss.entry(name.clone())
                .or_default()
                .push((s.t, *bytes as f64 / 1_048_576.0));
        }
    }
    let mut acked = Vec::new();
    let mut last: Option<(f64, usize)> = None;
    for s in &outcome.samples {
        if let Some((t0, a0)) = last
            && s.t > t0
        {
            acked.push((s.t, (s.acked.saturating_sub(a0)) as f64 / (s.t - t0)));
        }
        last = Some((s.t, s.acked));
    }
    throughput.insert("gateway (acknowledged)".into(), acked);
    let plots = [
        (
            "Lag in records per processor",
            "e2e-lag-records.png",
            &lag_records,
            "records",
        ),
        (
            "Lag in seconds per processor",
            "e2e-lag-seconds.png",
            &lag_seconds,
            "seconds",
        ),
        (
            "Throughput (finished records per second)",
            "e2e-throughput.png",
            &throughput,
            "records/s",
        ),
        (
            "CPU per process (% of one core)",
            "e2e-cpu.png",
            &cpu,
            "% of a core",
        ),
        ("Resident memory per process", "e2e-rss.png", &rss, "MiB"),
    ];
    let mut written = Vec::new();
    for (title, file, series, unit) in plots {
        plot(outcome, &dir.join(file), title, series, unit)?;
        written.push((title.to_owned(), file.to_owned()));
    }
    Ok(written)
}

/// plotters draws text with a font it is given: DejaVu Sans, from the system.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    let bytes = candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context(
            "no DejaVu Sans font found for the plots (Debian: apt-get install fonts-dejavu-core)",
        )?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    let _ = REGISTERED.set(true);
    Ok(())
}

fn plot(
    outcome: &Outcome,
    path: &Path,
    title: &str,
    series: &Series,
    unit: &str,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_max = outcome.samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = series
        .values()
        .flat_map(|v| v.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first POST")
        .y_desc(unit)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The faults: a shaded band per outage, a line per kill.
    for fault in &outcome.faults {
        let colour = if fault.target.is_some() {
            RED.mix(0.5)
        } else {
            BLUE.mix(0.12)
        };
        let end = if fault.end - fault.start < 1.0 {
            fault.start + 0.6
        } else {
            fault.end
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(fault.start, 0.0), (end, y_max)],
                colour.filled(),
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (index, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
