//! Helpers shared by the benchmarks in `bench/`: process CPU time, medians, and the peak
//! resident set of child processes that each run only one kind of step.
//!
//! Included by each benchmark with `mod common;` (the benchmarks are single-file examples).

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// CPU time consumed by all threads of this process, in ms (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Runs `f` once; returns (wall ms, CPU ms).
pub fn timed(f: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    let (t, c) = (Instant::now(), process_cpu_ms());
    f()?;
    Ok((t.elapsed().as_secs_f64() * 1e3, process_cpu_ms() - c))
}

/// Median of `v` (mean of the two middle values for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Wall and CPU times of repeated runs of one kind of step.
#[derive(Debug, Default)]
pub struct Samples {
    /// Wall-clock ms per run.
    pub wall: Vec<f64>,
    /// Process CPU ms per run.
    pub cpu: Vec<f64>,
}

impl Samples {
    /// Times `f` once and keeps the result.
    pub fn time(&mut self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let (w, c) = timed(f)?;
        self.wall.push(w);
        self.cpu.push(c);
        Ok(())
    }

    /// (median wall ms, median CPU ms).
    pub fn medians(&self) -> (f64, f64) {
        (median(self.wall.clone()), median(self.cpu.clone()))
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` of `/proc/self/status`).
pub fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?)
}

/// What a `--peak` child prints on stdout: its `VmHWM`, read by [`child_peak_mib`].
pub fn print_vm_hwm() -> Result<()> {
    println!("vmhwm_kib={}", vm_hwm_kib()?);
    Ok(())
}

/// Re-runs this benchmark binary as a child with `args` (which should select one kind of step
/// with `--peak`); returns the child's `VmHWM` in MiB.
pub fn child_peak_mib(args: &[String]) -> Result<f64> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    if !out.status.success() {
        bail!(
            "peak child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("vmhwm_kib="))
        .context("unexpected child output")?
        .parse()?;
    Ok(kib / 1024.0)
}
