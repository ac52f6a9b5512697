//! Percentiles over recorded samples, and the figures a benchmark reads from `/proc`.

use std::time::Duration;

use serde::Serialize;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `samples` (milliseconds; sorted here).
    pub fn of_ms(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let pct = |p: f64| {
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            samples[rank.clamp(1, n) - 1]
        };
        Self {
            n,
            min_ms: round3(samples[0]),
            p50_ms: round3(pct(50.0)),
            p95_ms: round3(pct(95.0)),
            p99_ms: round3(pct(99.0)),
            max_ms: round3(samples[n - 1]),
            mean_ms: round3(samples.iter().sum::<f64>() / n as f64),
        }
    }

    pub fn of_durations(samples: &[Duration]) -> Self {
        Self::of_ms(samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  (min {:.2}, max {:.2}, n={})",
            self.p50_ms, self.p95_ms, self.p99_ms, self.min_ms, self.max_ms, self.n
        )
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`); 100 on every Linux we
/// run on, and the bench does not link libc just to ask.
pub const CLK_TCK: f64 = 100.0;

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    cpu_seconds_from_stat(&s)
}

pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn cpu_seconds_from_stat(s: &str) -> anyhow::Result<f64> {
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat format"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid(4) ... utime(14) stime(15) → indices 11 and 12 here.
    let utime: u64 = f
        .get(11)
        .ok_or_else(|| anyhow::anyhow!("no utime"))?
        .parse()?;
    let stime: u64 = f
        .get(12)
        .ok_or_else(|| anyhow::anyhow!("no stime"))?
        .parse()?;
    Ok((utime + stime) as f64 / CLK_TCK)
}

/// Busy CPU seconds of the whole machine (all cores) since boot, from `/proc/stat`.
pub fn system_busy_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum();
    busy as f64 / CLK_TCK
}

/// Resident set size of a process, in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb / 1024.0)
}

/// (CPU seconds, context switches) summed over every thread of a process, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU) and `…/status` (voluntary and
/// involuntary switches). A cross-check of the 10 ms-resolution figure of `/proc/<pid>/stat`.
/// Threads that exited during the window are missed, so only use it on long-lived workers.
pub fn thread_totals(pid: u32) -> anyhow::Result<(f64, u64)> {
    let mut ns = 0u64;
    let mut switches = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = e?.path();
        if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok((ns as f64 / 1e9, switches))
}

pub fn thread_totals_sum(pids: &[u32]) -> anyhow::Result<(f64, u64)> {
    let mut out = (0.0, 0);
    for p in pids {
        let (c, s) = thread_totals(*p)?;
        out.0 += c;
        out.1 += s;
    }
    Ok(out)
}

/// CPU seconds of a set of processes, summed.
pub fn cpu_seconds_sum(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

pub fn rss_mib_sum(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| rss_mib(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Summary::of_ms((1..=100).map(f64::from).collect());
        assert_eq!((s.p50_ms, s.p95_ms, s.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!((s.min_ms, s.max_ms, s.n), (1.0, 100.0, 100));
        assert_eq!(Summary::of_ms(vec![]).n, 0);
    }

    #[test]
    fn stat_parsing() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert!((cpu_seconds_from_stat(line).unwrap() - 3.0).abs() < 1e-9);
        assert!(self_cpu_seconds() >= 0.0);
    }
}
