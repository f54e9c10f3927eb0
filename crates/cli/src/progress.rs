//! Progress reporting for long commands: an indicatif bar on a terminal, and plain timestamped
//! lines every [`PLAIN_EVERY`] when stderr is a file or a pipe (background jobs, CI logs), where
//! indicatif would draw nothing.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// A progress display counting `unit`s (steps, images) towards a length.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<RefCell<Plain>>,
    started: std::cell::Cell<bool>,
}

/// State of the plain-line fallback.
struct Plain {
    unit: &'static str,
    start: Instant,
    last: Instant,
    len: u64,
    pos: u64,
    /// Where this process started counting (a resumed run starts past 0), for the ETA.
    origin: Option<u64>,
    msg: String,
}

impl Progress {
    /// A bar of `len` `unit`s; `len` may be 0 and set later with [`Progress::set_length`].
    pub fn new(len: u64, unit: &'static str) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}} < {{eta_precise}}]"
            ))
            .expect("valid template"),
        );
        let plain = (!std::io::stderr().is_terminal()).then(|| {
            let now = Instant::now();
            RefCell::new(Plain {
                unit,
                start: now,
                last: now,
                len,
                pos: 0,
                origin: None,
                msg: String::new(),
            })
        });
        Self {
            bar,
            plain,
            started: std::cell::Cell::new(false),
        }
    }

    /// Sets the total.
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
        if let Some(p) = &self.plain {
            p.borrow_mut().len = len;
        }
    }

    /// Sets the position; writes a plain line when one is due. The first position seen is where
    /// this process started (a resumed run's checkpoint), so the ETA counts only its own work.
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if !self.started.replace(true) {
            self.bar.reset_eta();
        }
        if let Some(p) = &self.plain {
            let mut p = p.borrow_mut();
            // the first report comes after one unit of work
            p.origin.get_or_insert(pos.saturating_sub(1));
            p.pos = pos;
            if p.last.elapsed() >= PLAIN_EVERY {
                p.last = Instant::now();
                eprintln!("{}", p.line());
            }
        }
    }

    /// Sets the message shown after the counts (loss, ε, throughput).
    pub fn set_message(&self, msg: String) {
        if let Some(p) = &self.plain {
            p.borrow_mut().msg.clone_from(&msg);
        }
        self.bar.set_message(msg);
    }

    /// Finishes the bar; in plain mode writes a last line.
    pub fn finish(&self) {
        self.bar.finish();
        if let Some(p) = &self.plain {
            eprintln!("{}", p.borrow().line());
        }
    }
}

impl Plain {
    /// `[elapsed] pos/len unit  msg  (eta …)`.
    fn line(&self) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let done = self.pos - self.origin.unwrap_or(0).min(self.pos);
        let eta = if done > 0 && self.len > self.pos {
            let left = elapsed / done as f64 * (self.len - self.pos) as f64;
            format!("  eta {}", clock(left))
        } else {
            String::new()
        };
        let msg = if self.msg.is_empty() {
            String::new()
        } else {
            format!("  {}", self.msg)
        };
        format!(
            "[{}] {}/{} {}{msg}{eta}",
            clock(elapsed),
            self.pos,
            self.len,
            self.unit
        )
    }
}

/// Seconds as `h:mm:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Whether progress lines of DP training show statistics of the private data that carry no
/// noise (the training loss). They are outside the privacy guarantee: `off` (the default)
/// prints only the step, ε and time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateLog {
    /// Step, ε and time only.
    #[default]
    Off,
    /// Also the training loss, a non-private statistic of the private data.
    On,
}

/// The message of a DP training step's progress line.
pub fn dp_step_message(loss: f64, epsilon: f64, log: PrivateLog) -> String {
    match log {
        PrivateLog::Off => format!("eps {epsilon:.3}"),
        PrivateLog::On => format!("eps {epsilon:.3}  loss {loss:.4} (not private)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_hours_minutes_seconds() {
        assert_eq!(clock(0.0), "0:00:00");
        assert_eq!(clock(59.6), "0:01:00");
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn plain_line_has_counts_message_and_eta() {
        let start = Instant::now() - Duration::from_secs(10);
        let p = Plain {
            unit: "steps",
            start,
            last: start,
            len: 100,
            pos: 50,
            origin: None,
            msg: "loss 0.1".into(),
        };
        let line = p.line();
        assert!(
            line.starts_with("[0:00:10] 50/100 steps  loss 0.1  eta 0:00:1"),
            "{line}"
        );
        // resumed at step 40: 10 steps in 10 s, so 50 left take about 50 s
        let resumed = Plain {
            origin: Some(40),
            ..p
        };
        let line = resumed.line();
        assert!(line.contains("eta 0:00:5"), "{line}");
    }
}
