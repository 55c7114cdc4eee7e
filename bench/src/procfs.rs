//! Reads memory and CPU use of other processes (the gateway, the broker) and of the load generator
//! itself from `/proc`, so that a report says where the machine's CPU went.
//!
//! Invariant: a process that cannot be read yields `None`, never a made-up figure.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Linux reports utime/stime in clock ticks; USER_HZ is 100 on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident memory, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the process's peak resident size since it started.
    pub hwm_kib: u64,
}

pub fn memory(pid: &str) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system, all threads) consumed so far, in seconds.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields count from after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0.0);
    Some((total - idle, total))
}

/// How busy the whole machine was over a window.
pub struct MachineWatch {
    at_start: Option<(f64, f64)>,
    started: Instant,
}

impl MachineWatch {
    pub fn start() -> Self {
        MachineWatch {
            at_start: machine_ticks(),
            started: Instant::now(),
        }
    }

    /// Busy cores (all processes) averaged over the window.
    pub fn busy_cores(&self) -> Option<f64> {
        let (busy0, _) = self.at_start?;
        let (busy1, _) = machine_ticks()?;
        let wall = self
            .started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        Some((busy1 - busy0) / TICKS_PER_SECOND / wall)
    }
}

/// A process watched during the measured window.
pub struct Watch {
    pub name: &'static str,
    pub pid: String,
    cpu_at_start: Option<f64>,
    started: Instant,
    peak_rss_kib: u64,
}

/// What a watch saw over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub name: &'static str,
    pub pid: String,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores: Option<f64>,
    /// Highest VmRSS sampled in the window.
    pub peak_rss_mib: Option<f64>,
    /// VmHWM at the end (peak since the process started, warm-ups and earlier runs included).
    pub hwm_mib: Option<f64>,
}

impl Watch {
    pub fn start(name: &'static str, pid: String) -> Self {
        Watch {
            name,
            cpu_at_start: cpu_seconds(&pid),
            started: Instant::now(),
            peak_rss_kib: memory(&pid).map(|m| m.rss_kib).unwrap_or(0),
            pid,
        }
    }

    pub fn sample(&mut self) {
        if let Some(m) = memory(&self.pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(m.rss_kib);
        }
    }

    pub fn finish(mut self) -> Usage {
        self.sample();
        let wall = self
            .started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let cores = match (self.cpu_at_start, cpu_seconds(&self.pid)) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let mem = memory(&self.pid);
        Usage {
            name: self.name,
            cores,
            peak_rss_mib: mem.map(|_| self.peak_rss_kib as f64 / 1024.0),
            hwm_mib: mem.map(|m| m.hwm_kib as f64 / 1024.0),
            pid: self.pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id().to_string();
        assert!(memory(&me).is_some_and(|m| m.hwm_kib >= m.rss_kib && m.rss_kib > 0));
        assert!(cpu_seconds(&me).is_some());
        assert!(memory("0").is_none());
    }
}
