//! Progress reporting for long commands: an indicatif bar on a terminal, and plain timestamped
//! lines every [`PLAIN_EVERY`] when stderr is a file or a pipe (background jobs, CI logs), where
//! indicatif would draw nothing; [`Reporter`] shows the library pipeline's events with them.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use dpsynth::pipeline::{config, Event, Stage, BASE_MODE};
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
    /// Where this process started counting (a resumed run starts past 0), for the ETA; set by
    /// the first position seen.
    origin: Option<u64>,
    msg: String,
}

impl Progress {
    /// A bar of `len` `unit`s; `len` may be 0 and set later with [`Progress::set_length`].
    pub fn new(len: u64, unit: &'static str) -> Self {
        Self::with_plain(len, unit, !std::io::stderr().is_terminal())
    }

    /// A bar that also writes plain lines when `plain` is set.
    fn with_plain(len: u64, unit: &'static str, plain: bool) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}} < {{eta_precise}}]"
            ))
            .expect("valid template"),
        );
        let plain = plain.then(|| {
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

    /// Sets the count of work done in this process, which started at 0 (images, batch by
    /// batch); writes a plain line when one is due.
    pub fn set_position(&self, pos: u64) {
        self.advance(pos, 0);
    }

    /// Starts the count at `pos`, work an earlier run did (the images a resumed sampling read
    /// from its progress file): shown as done, while the ETA counts only the work of this
    /// process from there. Call it before the first position.
    pub fn start_at(&self, pos: u64) {
        self.bar.set_position(pos);
        // indicatif rates the position changes it records: record `pos` now, then forget the
        // time so far, so the rate starts from the resumed count
        self.bar.tick();
        self.bar.reset_eta();
        self.started.set(true);
        if let Some(p) = &self.plain {
            let mut p = p.borrow_mut();
            p.origin = Some(pos);
            p.pos = pos;
        }
    }

    /// Sets the step reached, counted one step at a time; writes a plain line when one is due.
    /// The first step seen is one past where this process started (a resumed run starts past
    /// its checkpoint), so the ETA counts only this process's own work.
    pub fn set_step(&self, step: u64) {
        self.advance(step, step.saturating_sub(1));
    }

    /// Moves to `pos`; `origin` is where this process started, used the first time.
    fn advance(&self, pos: u64, origin: u64) {
        self.bar.set_position(pos);
        if !self.started.replace(true) {
            self.bar.reset_eta();
        }
        if let Some(p) = &self.plain {
            let mut p = p.borrow_mut();
            p.origin.get_or_insert(origin);
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
/// prints only the step, ε and time. The value of `--private-log`; a run config's
/// `[finetune] private_log` is the library's [`config::PrivateLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PrivateLog {
    /// Step, ε and time only.
    #[default]
    Off,
    /// Also the training loss, a non-private statistic of the private data.
    On,
}

impl From<config::PrivateLog> for PrivateLog {
    fn from(p: config::PrivateLog) -> Self {
        match p {
            config::PrivateLog::Off => Self::Off,
            config::PrivateLog::On => Self::On,
        }
    }
}

/// The message of a DP training step's progress line.
pub fn dp_step_message(loss: f64, epsilon: f64, log: PrivateLog) -> String {
    match log {
        PrivateLog::Off => format!("eps {epsilon:.3}"),
        PrivateLog::On => format!("eps {epsilon:.3}  loss {loss:.4} (not private)"),
    }
}

/// Shows the library's [`Event`]s: stage lines and notes on stderr, a [`Progress`] bar for
/// each counted task, and result lines on stdout.
pub struct Reporter {
    bar: Option<Progress>,
    private_log: PrivateLog,
    /// The last ε a DP step reported (it is computed only now and then).
    epsilon: f64,
}

impl Reporter {
    /// A reporter whose DP step lines show the training loss when `private_log` is on.
    pub fn new(private_log: PrivateLog) -> Self {
        Self {
            bar: None,
            private_log,
            epsilon: 0.0,
        }
    }

    /// Shows one event.
    pub fn on(&mut self, event: Event) {
        match event {
            Event::Stage(stage) => eprintln!("{}", stage_line(&stage)),
            Event::Converted { spec, how } => eprintln!("{spec}: {how}"),
            Event::Begin { unit, total } => {
                self.epsilon = 0.0;
                self.bar = Some(Progress::new(total, unit));
            }
            Event::Step(s) => {
                if let Some(bar) = &self.bar {
                    bar.set_length(s.total_steps);
                    bar.set_step(s.step);
                    if let Some(e) = s.epsilon {
                        self.epsilon = e;
                    }
                    bar.set_message(dp_step_message(s.loss, self.epsilon, self.private_log));
                }
            }
            Event::Done(n) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(n);
                }
            }
            Event::SamplingResumed { done, total, file } => {
                eprintln!("{}", resumed_line(done, total, file));
                if let Some(bar) = &self.bar {
                    bar.start_at(done);
                }
            }
            Event::End => {
                if let Some(bar) = self.bar.take() {
                    bar.finish();
                }
            }
            Event::Epoch {
                epoch,
                val_accuracy,
            } => eprintln!(
                "epoch {epoch}: held-out synthetic accuracy {:.2}%",
                100.0 * val_accuracy
            ),
            Event::Finetuned { job, done } => {
                let cfg = &job.config;
                println!(
                    "mode {}: {} trainable of {} parameters, epsilon {:.3} at delta {:e} ({}), sigma {:.3}, {} steps in {:.0}s{}",
                    cfg.mode,
                    done.trainable_parameters,
                    done.base_parameters,
                    done.epsilon,
                    cfg.delta,
                    cfg.accountant,
                    done.state.noise_multiplier,
                    done.state.step,
                    done.state.seconds,
                    if done.secure_noise { "" } else { " (seeded: noise not secure)" }
                );
                println!(
                    "model: {}  grid: {}",
                    done.model_dir.display(),
                    job.out.join("grid.png").display()
                );
            }
            Event::Fidelity(f) => println!("{}", crate::evaluate_cmd::fidelity_line(f)),
        }
    }
}

/// The line that says a sampling resumes after `done` of `total` images, from `file`.
pub fn resumed_line(done: u64, total: u64, file: &std::path::Path) -> String {
    use crate::size_plot::thousands;
    format!(
        "== sampling: resuming after {} of {} images ({})",
        thousands(done),
        thousands(total),
        file.display()
    )
}

/// The line that announces a stage of a run.
fn stage_line(stage: &Stage) -> String {
    match stage {
        Stage::Finetune { mode, epsilon } => {
            format!("== DP fine-tuning ({mode} mode, epsilon {epsilon})")
        }
        Stage::BaseAlone => {
            format!("== no fine-tuning (mode \"{BASE_MODE}\"): sampling the base as it is")
        }
        Stage::Sample { per_class } => format!("== sampling {per_class} images per class"),
        Stage::Downstream { test } => {
            format!("== downstream classifier on synthetic data, tested on {test}")
        }
        Stage::Fidelity { images, per_set } => {
            format!("== FID/KID: Inception features of {images} images (at most {per_set} per set)")
        }
        Stage::NoFidelity => crate::evaluate_cmd::NO_INCEPTION.to_string(),
        Stage::Memorization => {
            "== memorization report: nearest training and held-out images".to_string()
        }
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
    fn eta_counts_from_zero_for_batches_and_from_the_first_step_for_steps() {
        let origin = |p: &Progress| p.plain.as_ref().unwrap().borrow().origin;
        // images come in batches: the first report, 250 of 3,000, is 250 images of work
        let images = Progress::with_plain(3000, "images", true);
        images.set_position(250);
        assert_eq!(origin(&images), Some(0));
        // steps come one at a time: a run resumed at step 40 first reports step 41
        let steps = Progress::with_plain(100, "steps", true);
        steps.set_step(41);
        steps.set_step(42);
        assert_eq!(origin(&steps), Some(40));
    }

    #[test]
    fn a_resumed_count_starts_the_eta_at_the_resumed_images() {
        let origin = |p: &Progress| p.plain.as_ref().unwrap().borrow().origin;
        // 3,000 images read from the progress file: the first batch sampled is 250 images
        let images = Progress::with_plain(10_000, "images", true);
        images.start_at(3000);
        images.set_position(3250);
        assert_eq!(origin(&images), Some(3000));
        assert_eq!(images.plain.as_ref().unwrap().borrow().pos, 3250);
        assert_eq!(
            resumed_line(3000, 10_000, std::path::Path::new("out/p")),
            "== sampling: resuming after 3,000 of 10,000 images (out/p)"
        );
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
