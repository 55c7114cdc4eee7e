//! A Prometheus started for the scenario: it scrapes the gateway and every processor each second
//! with the project's alert rules (deploy/prometheus/alerts.yml) loaded, and says afterwards when
//! each alert was firing.
//!
//! Invariant: the alert intervals are Prometheus' own `ALERTS{alertstate="firing"}` series over
//! the scraped metrics, never recomputed here.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::poll_until;

/// When one alert (one label set) was firing, in seconds since the first POST.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    pub alert: String,
    pub processor: Option<String>,
    pub partition: Option<String>,
    pub from: f64,
    pub to: f64,
}

pub struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    /// Starts `binary` with a configuration scraping `targets` (job, address) every second.
    pub async fn start(
        binary: &Path,
        rules: &Path,
        dir: &Path,
        targets: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut jobs = String::new();
        for job in ["formstream-gateway", "formstream-processor"] {
            let addresses: Vec<String> = targets
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, a)| format!("'{a}'"))
                .collect();
            jobs.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                addresses.join(", ")
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n{jobs}",
            rules.canonicalize().context("the alert rules")?.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let listen = format!("127.0.0.1:{}", crate::deploy::free_port());
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut command = Command::new(binary);
        super::procs::die_with_parent(&mut command);
        let child = command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
        };
        let client = reqwest::Client::new();
        let attempt = || {
            let probe = client.get(format!("{}/-/ready", prometheus.url)).send();
            async move { anyhow::Ok(probe.await.is_ok_and(|r| r.status().is_success())) }
        };
        let ready = poll_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            attempt,
            |ready| *ready,
        )
        .await?;
        anyhow::ensure!(
            ready,
            "Prometheus not ready within 60 s (log in {})",
            dir.display()
        );
        Ok(prometheus)
    }

    /// Every firing interval between `first_post` and now, as offsets from `first_post`.
    pub async fn firings(&self, first_post: SystemTime) -> anyhow::Result<Vec<Firing>> {
        let origin = first_post.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let end = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query_range", self.url))
            .query(&[
                ("query", "ALERTS{alertstate=\"firing\"}".to_owned()),
                ("start", format!("{origin:.3}")),
                ("end", format!("{end:.3}")),
                ("step", "1".to_owned()),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut firings = Vec::new();
        for series in body["data"]["result"].as_array().into_iter().flatten() {
            let label = |name: &str| series["metric"][name].as_str().map(str::to_owned);
            let times: Vec<f64> = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v[0].as_f64())
                .map(|t| t - origin)
                .collect();
            let mut run: Option<(f64, f64)> = None;
            for t in times {
                run = match run {
                    Some((from, to)) if t - to <= 2.5 => Some((from, t)),
                    Some((from, to)) => {
                        firings.push(Firing {
                            alert: label("alertname").unwrap_or_default(),
                            processor: label("processor"),
                            partition: label("partition"),
                            from,
                            to,
                        });
                        Some((t, t))
                    }
                    None => Some((t, t)),
                };
            }
            if let Some((from, to)) = run {
                firings.push(Firing {
                    alert: label("alertname").unwrap_or_default(),
                    processor: label("processor"),
                    partition: label("partition"),
                    from,
                    to,
                });
            }
        }
        firings.sort_by(|a, b| a.from.total_cmp(&b.from));
        Ok(firings)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
