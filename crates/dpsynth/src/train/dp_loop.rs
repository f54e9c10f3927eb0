//! The one DP-SGD training loop, shared by DP fine-tuning ([`super::finetune`]) and the DP-SGD
//! classifier ([`super::classifier`]).
//!
//! It owns everything the privacy guarantee rests on: the noise calibration, Poisson sampling,
//! the per-example clipping and noise of [`DpSgd`], the secure (OS-seeded) or seeded random
//! streams, the ledger of every step, and checkpoints that carry the ledger and the streams'
//! positions so that a resumed run is accounted, and (when seeded) computed, as one run. A
//! training task gives it only what differs: its settings ([`DpConfig`]), its trainable tensors
//! and optimizer, and the per-example losses of a micro-batch ([`MicroBatchLoss`]).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use privacy::{calibrate_noise, Accountant, Ledger};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::gradient_canaries::{CanaryScores, GradientCanaries};
use super::{checkpoint, shallow, shallow_named};
use crate::dp::engine::{DpSgd, DpSgdConfig};
use crate::dp::optim::Optimizer;
use crate::dp::rng::StreamPositions;
use crate::dp::sampling::PoissonSampler;

/// The settings the loop reads from a task's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSettings {
    /// Target ε.
    pub epsilon: f64,
    /// Target δ.
    pub delta: f64,
    /// Accountant that calibrates σ and reports ε.
    pub accountant: Accountant,
    /// Accept δ ≥ 1/n (experiments only: such a δ guarantees nothing).
    pub allow_large_delta: bool,
    /// A fixed σ instead of the one ε calls for (audits and tests; 0: no privacy, ε = ∞).
    pub noise_multiplier: Option<f64>,
    /// Passes over the private data (steps = epochs · N / batch, rounded up).
    pub epochs: f64,
    /// Expected logical batch size (q = batch / N).
    pub batch_size: usize,
    /// Largest micro-batch (examples) put through the model at once.
    pub physical_batch: usize,
    /// Per-example clipping norm C.
    pub clip: f64,
    /// Loss rows per example (K draws averaged before clipping; 1 for a classifier).
    pub rows_per_example: i64,
    /// Seed: repeatable, but the noise is then not cryptographically secure.
    pub seed: Option<u64>,
    /// Steps between checkpoints (0: by time and at the end only).
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    pub checkpoint_seconds: f64,
    /// Gradient canaries planted for a white-box audit (0: none; see [`GradientCanaries`]).
    pub gradient_canaries: usize,
}

/// A task's configuration: saved in its checkpoints (a resume must present the same one) and
/// the source of its [`DpSettings`].
pub trait DpConfig: Clone + Serialize + DeserializeOwned {
    /// The settings of the loop.
    fn dp(&self) -> DpSettings;
}

/// The per-example losses of a training task.
pub trait MicroBatchLoss {
    /// A micro-batch made ready for the forward pass (images, labels, random draws).
    type Prepared;
    /// Loads the examples `indices` of the private set and draws what the loss needs. Runs
    /// outside gradient recording; anything fallible happens here.
    fn prepare(&mut self, indices: &[usize]) -> Result<Self::Prepared>;
    /// The per-row losses `[B·K]` of a prepared micro-batch, rows ordered example-major; run
    /// with the engine's recording on.
    fn losses(&self, batch: &Self::Prepared) -> Tensor;
}

/// Noise calibration of a run: what the settings and the private set's size give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Poisson sampling rate q = batch / N (at most 1).
    pub sample_rate: f64,
    /// Steps of the run.
    pub total_steps: u64,
    /// Noise multiplier σ that spends the target ε over `total_steps` steps.
    pub noise_multiplier: f64,
}

impl DpSettings {
    /// Checks the settings against `n` private examples (so a task can fail before it loads
    /// its model; [`Calibration::new`] checks them too).
    pub fn check(&self, n: usize) -> Result<()> {
        let s = self;
        ensure!(n > 0, "the private training set is empty");
        ensure!(
            s.epochs > 0.0 && s.epochs.is_finite(),
            "--epochs must be positive, got {}",
            s.epochs
        );
        ensure!(s.batch_size > 0, "--batch must be at least 1");
        ensure!(s.physical_batch > 0, "--physical-batch must be at least 1");
        ensure!(
            s.rows_per_example >= 1,
            "--noise-multiplicity must be at least 1, got {}",
            s.rows_per_example
        );
        super::ensure_meaningful_delta(s.delta, n, s.allow_large_delta)
    }
}

impl Calibration {
    /// Checks the settings against `n` private examples and calibrates σ.
    pub fn new(s: &DpSettings, n: usize) -> Result<Self> {
        s.check(n)?;
        let sample_rate = (s.batch_size as f64 / n as f64).min(1.0);
        let total_steps = (s.epochs * n as f64 / s.batch_size as f64).ceil() as u64;
        let noise_multiplier = match s.noise_multiplier {
            Some(sigma) => {
                ensure!(
                    sigma >= 0.0 && sigma.is_finite(),
                    "noise_multiplier must be a non-negative number, got {sigma}"
                );
                sigma
            }
            None => calibrate_noise(s.accountant, s.epsilon, s.delta, sample_rate, total_steps)
                .context("calibrating the noise multiplier")?,
        };
        Ok(Self {
            sample_rate,
            total_steps,
            noise_multiplier,
        })
    }
}

/// The state a DP run checkpoints beside its tensors (one type for every task).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpState<C> {
    /// Steps done.
    pub step: u64,
    /// Planned steps.
    pub total_steps: u64,
    /// σ in use.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q.
    pub sample_rate: f64,
    /// Every DP-SGD step so far, across resumes.
    pub ledger: Ledger,
    /// Training seconds summed over sessions.
    #[serde(default)]
    pub seconds: f64,
    /// The run's settings.
    pub config: C,
    /// Where a seeded run's sampling and noise streams stopped (`None` when OS-seeded).
    #[serde(default)]
    pub streams: Option<StreamPositions>,
}

/// Progress of one step, for a progress line.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// Steps done.
    pub step: u64,
    /// Total steps.
    pub total_steps: u64,
    /// Mean loss per row of the step: a statistic of the private data with no noise.
    pub loss: f64,
    /// ε spent so far, when computed (every ~2% of the run and at the end; it is not free).
    pub epsilon: Option<f64>,
}

/// What a finished DP run returns besides its trained tensors.
#[derive(Debug, Clone)]
pub struct DpRun<C> {
    /// Final state with the full ledger.
    pub state: DpState<C>,
    /// ε spent, by the configured accountant.
    pub epsilon: f64,
    /// Whether all privacy randomness (sampling and noise) came from the OS-seeded generator.
    pub secure_noise: bool,
    /// Wall-clock seconds spent training in this process.
    pub seconds_this_process: f64,
    /// Training seconds of the earlier processes a resumed run continues (0 for a fresh run).
    pub seconds_earlier: f64,
    /// The gradient canaries' membership and scores, when the run planted some.
    pub canaries: Option<CanaryScores>,
}

/// Where a run checkpoints, and whether it continues the checkpoint there.
#[derive(Debug, Clone, Copy)]
pub struct Checkpointing<'a> {
    /// Checkpoint folder.
    pub dir: &'a Path,
    /// Continue the checkpoint in `dir` (it must exist); without it, `dir` must hold none.
    pub resume: bool,
}

impl Checkpointing<'_> {
    /// Refuses a resume without a checkpoint, and a fresh run over one.
    pub fn check(&self) -> Result<()> {
        let exists = checkpoint::exists(self.dir);
        ensure!(
            !self.resume || exists,
            "{}: no checkpoint to resume (--resume continues a run in the same --out)",
            self.dir.display()
        );
        ensure!(
            self.resume || !exists,
            "{}: holds a checkpoint; pass --resume to continue it or choose another --out",
            self.dir.display()
        );
        Ok(())
    }
}

/// ε spent by `ledger`; ∞ for a run without noise (σ = 0), which no accountant bounds.
fn spent(ledger: &Ledger, s: &DpSettings, sigma: f64) -> Result<f64> {
    if sigma == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(ledger.epsilon(s.accountant, s.delta)?)
}

/// The libtorch seed of step `step` in a run seeded with `seed` (timesteps, diffusion noise,
/// class dropout; the DP streams are ChaCha, see [`crate::dp::rng`]): a function of the seed and
/// the step, so a resumed seeded run repeats the uninterrupted one exactly.
fn step_seed(seed: u64, step: u64) -> i64 {
    (seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64
}

/// Trains `trainable` with DP-SGD on `n` private examples whose per-example losses `loss`
/// computes, stepping `optimizer`, and checkpointing as `checkpointing` says (resuming its
/// checkpoint's weights, optimizer moments, ledger and streams, after checking that the
/// settings and calibration are the checkpoint's).
pub fn train<C: DpConfig, L: MicroBatchLoss>(
    config: &C,
    n: usize,
    trainable: &[(String, Tensor)],
    optimizer: &mut Optimizer,
    loss: &mut L,
    checkpointing: Option<Checkpointing>,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<DpRun<C>> {
    let s = config.dp();
    let cal = Calibration::new(&s, n)?;
    if let Some(c) = &checkpointing {
        c.check()?;
    }
    let tensors: Vec<Tensor> = trainable.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut sampler = PoissonSampler::new(n, cal.sample_rate, s.seed)?;
    let mut state = DpState {
        step: 0,
        total_steps: cal.total_steps,
        noise_multiplier: cal.noise_multiplier,
        sample_rate: cal.sample_rate,
        ledger: Ledger::new(),
        seconds: 0.0,
        config: config.clone(),
        streams: None,
    };
    // a resumed run continues with its checkpoint's calibration and streams
    let mut saved = None;
    if let Some(c) = checkpointing.filter(|c| c.resume) {
        let (prev, by_name): (DpState<C>, _) = checkpoint::load(c.dir)?;
        checkpoint::ensure_same_settings(&prev.config, config, c.dir)?;
        state.noise_multiplier = checkpoint::ensure_same_noise(
            (prev.noise_multiplier, prev.sample_rate),
            (cal.noise_multiplier, cal.sample_rate),
            c.dir,
        )?;
        checkpoint::restore(trainable, &by_name, c.dir)?;
        optimizer.restore(&by_name, "opt.")?;
        state.step = prev.step;
        state.ledger = prev.ledger;
        state.seconds = prev.seconds;
        saved = Some(prev.streams);
    }
    let (q, sigma) = (state.sample_rate, state.noise_multiplier);
    ensure!(
        s.gradient_canaries == 0 || saved.is_none(),
        "a run with gradient canaries cannot resume: its canaries' scores are not checkpointed"
    );
    let device = tensors.first().map_or(tch::Device::Cpu, Tensor::device);
    let mut canaries = (s.gradient_canaries > 0)
        .then(|| GradientCanaries::new(s.gradient_canaries, q, s.seed, device))
        .transpose()?;
    let mut engine_params = shallow(&tensors);
    engine_params.extend(canaries.as_ref().map(GradientCanaries::tensor));
    let mut engine = DpSgd::new(
        engine_params,
        DpSgdConfig::new(s.clip, sigma, q * n as f64),
        s.seed,
    )?;
    if let (Some(streams), Some(c)) = (saved, &checkpointing) {
        StreamPositions::restore(streams.as_ref(), sampler.rng_mut(), Some(engine.rng_mut()))
            .with_context(|| format!("{}: cannot resume", c.dir.display()))?;
    }

    let total = state.total_steps;
    let report_every = (total / 50).max(1);
    let start = Instant::now();
    let seconds_before = state.seconds;
    let mut schedule =
        checkpoint::CheckpointSchedule::new(s.checkpoint_every, s.checkpoint_seconds);
    while state.step < total {
        if let Some(seed) = s.seed {
            tch::manual_seed(step_seed(seed, state.step));
        }
        let batch = sampler.sample();
        let (mut loss_sum, mut rows) = (0.0, 0i64);
        for micro in batch.micro_batches(s.physical_batch)? {
            let prepared = loss.prepare(micro)?;
            engine.accumulate(s.rows_per_example, || {
                let losses = loss.losses(&prepared);
                loss_sum += losses.sum(Kind::Float).double_value(&[]);
                rows += losses.size().first().copied().unwrap_or(0);
                losses
            })?;
        }
        if let Some(c) = canaries.as_mut() {
            c.plant(&mut engine, tensors.len(), s.clip)?;
        }
        let mut grads = engine.finish_step()?;
        if let Some(c) = canaries.as_mut() {
            let released = grads
                .pop()
                .context("the engine returned no canary gradient")?;
            c.observe(&released, q * n as f64);
        }
        optimizer.step(&grads)?;
        state.ledger.record(q, sigma, 1);
        state.step += 1;
        state.seconds = seconds_before + start.elapsed().as_secs_f64();
        let last = state.step == total;
        let epsilon = (state.step.is_multiple_of(report_every) || last)
            .then(|| spent(&state.ledger, &s, sigma))
            .transpose()?;
        on_step(&StepInfo {
            step: state.step,
            total_steps: total,
            loss: loss_sum / rows.max(1) as f64,
            epsilon,
        });
        if let Some(c) = checkpointing.filter(|_| schedule.due(state.step, last)) {
            let mut all = shallow_named(trainable);
            all.extend(optimizer.named_state("opt."));
            state.streams = StreamPositions::of(sampler.rng(), Some(engine.rng()));
            checkpoint::save(c.dir, state.step, &state, &all)?;
        }
    }
    Ok(DpRun {
        epsilon: spent(&state.ledger, &s, sigma)?,
        state,
        secure_noise: engine.is_secure() && sampler.is_secure(),
        seconds_this_process: start.elapsed().as_secs_f64(),
        seconds_earlier: seconds_before,
        canaries: canaries.map(GradientCanaries::finish).transpose()?,
    })
}
