//! The scenario's processes: the gateway and the five processors as separate `formstream`
//! processes, and the two fakes as standalone servers. A processor is killed with SIGKILL and
//! started again with the same command line (so the same `--instance-id`).
//!
//! Invariant: every process this module starts is killed when its handle is dropped, so a failed
//! run leaves nothing behind; each one's output goes to its own log file under the run directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::poll_until;
use crate::standalone::Announce;

/// The processors of the scenario, in the order they are started.
pub const PROCESSORS: &[&str] = &[
    "validate",
    "notify-collectors",
    "receipts",
    "sheets",
    "slang",
];

/// A process of the scenario, with what it takes to start it again.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    logs: PathBuf,
    child: Child,
    /// When the current incarnation was spawned.
    pub started: Instant,
    /// How many times it was started.
    pub lives: usize,
    /// `http://127.0.0.1:<port>` of its /metrics (and /readyz).
    pub metrics: Option<String>,
    /// When it exited by itself, and why (each time it was started again).
    pub exits: Vec<(Instant, String)>,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: Vec<String>,
        logs: &Path,
        metrics: Option<String>,
    ) -> anyhow::Result<Self> {
        let child = start(name, program, &args, logs, 1)?;
        Ok(Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            logs: logs.to_owned(),
            child,
            started: Instant::now(),
            lives: 1,
            metrics,
            exits: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL and start again with the same command line (its next log file).
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.lives += 1;
        self.child = start(
            &self.name,
            &self.program,
            &self.args,
            &self.logs,
            self.lives,
        )?;
        self.started = Instant::now();
        Ok(())
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = log_path(&self.logs, &self.name, self.lives);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "{} exited ({status}); {}:\n{}",
                self.name,
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Starts the process again, with the same command line, if it exited by itself (as a
    /// supervisor such as Kubernetes would), and records when and why: the end of its log.
    pub fn restart_if_exited(&mut self) -> anyhow::Result<()> {
        let Ok(Some(status)) = self.child.try_wait() else {
            return Ok(());
        };
        let log = log_path(&self.logs, &self.name, self.lives);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|line| line.contains("ERROR") || line.contains("Error"))
            .unwrap_or_default();
        let why = format!(
            "exited by itself ({status}); {}: {}",
            log.display(),
            plain(last)
        );
        eprintln!("e2e: {} {why}; restarted", self.name);
        self.exits.push((Instant::now(), why));
        self.lives += 1;
        self.child = start(
            &self.name,
            &self.program,
            &self.args,
            &self.logs,
            self.lives,
        )?;
        self.started = Instant::now();
        Ok(())
    }

    /// Waits until its /readyz answers 200.
    pub async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let Some(base) = self.metrics.clone() else {
            return Ok(());
        };
        let client = reqwest::Client::new();
        let attempt = || {
            let running = self.check_running();
            let probe = client
                .get(format!("{base}/readyz"))
                .timeout(Duration::from_secs(2))
                .send();
            async move {
                running?;
                Ok(probe.await.is_ok_and(|r| r.status().is_success()))
            }
        };
        let ready = poll_until(deadline, Duration::from_millis(100), attempt, |ready| {
            *ready
        })
        .await?;
        anyhow::ensure!(ready, "{} not ready within {deadline:?}", self.name);
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_path(logs: &Path, name: &str, life: usize) -> PathBuf {
    logs.join(format!("{name}.{life}.log"))
}

fn start(
    name: &str,
    program: &Path,
    args: &[String],
    logs: &Path,
    life: usize,
) -> anyhow::Result<Child> {
    let log = log_path(logs, name, life);
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(program);
    die_with_parent(&mut command);
    command
        .args(args)
        // BENCH_LOG (bench/e2e.sh) sets every process's log filter, e.g. for a post-mortem.
        .env(
            "FORMSTREAM_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

/// A standalone fake: its process and what it announced.
pub struct Fake {
    child: Child,
    pub announce: Announce,
}

impl Fake {
    /// Starts `program` with `args` and reads its announcement (its first line on stdout).
    pub fn spawn(name: &str, program: &Path, args: &[String], logs: &Path) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(program);
        die_with_parent(&mut command);
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let stdout = child.stdout.take().context("the fake's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading {name}'s announcement"))?;
        let announce: Announce = serde_json::from_str(line.trim())
            .with_context(|| format!("{name} announced {line:?} (log: {})", log.display()))?;
        Ok(Fake { child, announce })
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child gets SIGKILL when the thread that started it ends (Linux `PR_SET_PDEATHSIG`): a run
/// that is itself killed (a CI timeout, Ctrl-C) leaves no process behind. The scenario starts its
/// processes from its runtime's worker threads, which live as long as the run.
pub(super) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// CPU seconds (user + system) and resident bytes of a process, from /proc.
pub fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((cpu, rss_kib * 1024))
}

/// A log line without its terminal colours, and without the `|` a Markdown table cannot hold.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(if c == '|' { '/' } else { c });
        }
    }
    out
}
