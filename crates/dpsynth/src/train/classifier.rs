//! Training a classifier (the CNN or the ResNet), privately (DP-SGD on private data: the baseline) or not (on
//! synthetic data: downstream evaluation), and measuring it.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use privacy::{calibrate_noise, Accountant, Ledger};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::{checkpoint, shallow, shallow_named, sorted_by_name};
use crate::data::Dataset;
use crate::dp::engine::{DpSgd, DpSgdConfig};
use crate::dp::optim::{Optimizer, OptimizerConfig};
use crate::dp::rng::StreamPositions;
use crate::dp::sampling::PoissonSampler;
use crate::metrics::Metrics;
use crate::nn::arch::NetSpec;
use crate::nn::classifier::{cross_entropy_per_example, ImageClassifier};

/// The privacy target of a DP-SGD run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrivacyTarget {
    /// Target ε.
    pub epsilon: f64,
    /// Target δ.
    pub delta: f64,
    /// Accountant used to calibrate σ and report ε.
    pub accountant: Accountant,
    /// Accept δ ≥ 1/n (experiments only: such a δ guarantees nothing).
    #[serde(default)]
    pub allow_large_delta: bool,
}

/// Hyper-parameters of classifier training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data (with Poisson sampling: steps = epochs · N / batch).
    pub epochs: usize,
    /// Expected logical batch size (q · N).
    pub batch_size: usize,
    /// Largest micro-batch put through the model at once (memory bound).
    pub physical_batch: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Per-example clipping norm C (DP only).
    pub max_grad_norm: f64,
    /// DP-SGD target; `None` trains without privacy.
    pub privacy: Option<PrivacyTarget>,
    /// Seed for initialisation, sampling and noise. A seeded DP run is repeatable but its noise
    /// is not cryptographically secure; reports say so.
    pub seed: Option<u64>,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    #[serde(default = "checkpoint::default_checkpoint_seconds")]
    pub checkpoint_seconds: f64,
}

/// Progress of one training step, for a progress bar.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// Steps done.
    pub step: u64,
    /// Total steps.
    pub total_steps: u64,
    /// Mean loss over the step's examples.
    pub loss: f64,
    /// ε spent so far, when computed (every few steps; it is not free).
    pub epsilon: Option<f64>,
}

/// The state saved in a checkpoint beside the model tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps done.
    pub step: u64,
    /// Total steps planned.
    pub total_steps: u64,
    /// Noise multiplier in use (0 without privacy).
    pub noise_multiplier: f64,
    /// Poisson sampling rate.
    pub sample_rate: f64,
    /// Every DP-SGD step taken so far, across resumes.
    pub ledger: Ledger,
    /// The settings of the run.
    pub config: TrainConfig,
    /// Where a seeded run's sampling and noise streams stopped (`None` when OS-seeded).
    #[serde(default)]
    pub streams: Option<StreamPositions>,
}

/// A trained classifier with its record.
pub struct Trained {
    /// Holds the parameters.
    pub vs: nn::VarStore,
    /// The model.
    pub model: Box<dyn ImageClassifier>,
    /// Final training state (with the full ledger).
    pub state: TrainState,
    /// True when all randomness came from the OS-seeded secure generator.
    pub secure_noise: bool,
    /// Wall-clock seconds spent training in this process.
    pub train_seconds: f64,
}

/// Trains a classifier on `train`, with DP-SGD when `cfg.privacy` is set. Resumes from
/// `ckpt_dir` when it holds a checkpoint, continuing both the schedule and the privacy ledger.
pub fn train_classifier(
    train: &Dataset,
    model_cfg: impl Into<NetSpec>,
    cfg: &TrainConfig,
    ckpt_dir: Option<&Path>,
    device: Device,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Trained> {
    ensure!(!train.is_empty(), "the training set is empty");
    ensure!(cfg.batch_size > 0, "--batch must be at least 1");
    ensure!(
        cfg.physical_batch > 0,
        "--physical-batch must be at least 1"
    );
    ensure!(cfg.epochs > 0, "--epochs must be at least 1");
    if let Some(seed) = cfg.seed {
        tch::manual_seed(seed as i64);
    }
    let n = train.len();
    if let Some(p) = &cfg.privacy {
        super::ensure_meaningful_delta(p.delta, n, p.allow_large_delta)?;
    }
    let q = (cfg.batch_size as f64 / n as f64).min(1.0);
    let total_steps = ((cfg.epochs * n) as f64 / cfg.batch_size as f64).ceil() as u64;
    let sigma = match cfg.privacy {
        Some(p) => calibrate_noise(p.accountant, p.epsilon, p.delta, q, total_steps)
            .context("calibrating the noise multiplier")?,
        None => 0.0,
    };

    // a resumed run continues with its checkpoint's calibration
    let saved: Option<(TrainState, _)> = match ckpt_dir.filter(|d| checkpoint::exists(d)) {
        Some(dir) => Some(checkpoint::load(dir)?),
        None => None,
    };
    let sigma = match (&saved, ckpt_dir) {
        (Some((saved, _)), Some(dir)) => {
            checkpoint::ensure_same_settings(&saved.config, cfg, dir)?;
            checkpoint::ensure_same_noise(
                (saved.noise_multiplier, saved.sample_rate),
                (sigma, q),
                dir,
            )?
        }
        _ => sigma,
    };

    let vs = nn::VarStore::new(device);
    let model = model_cfg.into().build(&vs.root())?;
    let params = sorted_by_name(vs.variables());
    let mut state = TrainState {
        step: 0,
        total_steps,
        noise_multiplier: sigma,
        sample_rate: q,
        ledger: Ledger::new(),
        config: cfg.clone(),
        streams: None,
    };
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt = Optimizer::new(
        shallow(&tensors),
        OptimizerConfig::Sgd {
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: 0.0,
        },
    )?;
    let mut sampler = PoissonSampler::new(n, q, cfg.seed)?;
    let mut engine = match cfg.privacy {
        Some(_) => Some(DpSgd::new(
            shallow(&tensors),
            DpSgdConfig::new(cfg.max_grad_norm, sigma, q * n as f64),
            cfg.seed,
        )?),
        None => None,
    };
    if let (Some((saved, tensors)), Some(dir)) = (saved, ckpt_dir) {
        checkpoint::restore(&params, &tensors, dir)?;
        opt.restore(&tensors, "opt.")?;
        StreamPositions::restore(
            saved.streams.as_ref(),
            sampler.rng_mut(),
            engine.as_mut().map(DpSgd::rng_mut),
        )
        .with_context(|| format!("{}: cannot resume", dir.display()))?;
        state.step = saved.step;
        state.ledger = saved.ledger;
    }
    let secure_noise = cfg.seed.is_none();
    let start = Instant::now();
    let mut checkpoints =
        checkpoint::CheckpointSchedule::new(cfg.checkpoint_every, cfg.checkpoint_seconds);
    let report_every = (total_steps / 50).max(1);
    while state.step < total_steps {
        let batch = sampler.sample();
        let mut loss_sum = 0.0;
        let grads = match engine.as_mut() {
            Some(engine) => {
                for micro in batch.micro_batches(cfg.physical_batch)? {
                    let (x, y) = train.batch(micro, device);
                    let mut l = 0.0;
                    engine.accumulate(1, || {
                        let losses = cross_entropy_per_example(&model.forward(&x), &y)
                            .expect("logits and labels agree");
                        l = losses.sum(Kind::Float).double_value(&[]);
                        losses
                    })?;
                    loss_sum += l;
                }
                engine.finish_step()?
            }
            None => non_private_grads(
                model.as_ref(),
                train,
                &batch.indices,
                cfg,
                &tensors,
                device,
                &mut loss_sum,
            )?,
        };
        opt.step(&grads)?;
        state.step += 1;
        if cfg.privacy.is_some() {
            state.ledger.record(q, sigma, 1);
        }
        let epsilon = match cfg.privacy {
            Some(p) if state.step.is_multiple_of(report_every) || state.step == total_steps => {
                Some(state.ledger.epsilon(p.accountant, p.delta)?)
            }
            _ => None,
        };
        on_step(&StepInfo {
            step: state.step,
            total_steps,
            loss: loss_sum / batch.len().max(1) as f64,
            epsilon,
        });
        let due = checkpoints.due(state.step, state.step == total_steps);
        if let Some(dir) = ckpt_dir.filter(|_| due) {
            let mut all = shallow_named(&params);
            all.extend(opt.named_state("opt."));
            state.streams = StreamPositions::of(sampler.rng(), engine.as_ref().map(DpSgd::rng));
            checkpoint::save(dir, state.step, &state, &all)?;
        }
    }
    Ok(Trained {
        vs,
        model,
        state,
        secure_noise,
        train_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Mean-loss gradients of one batch by ordinary backpropagation (no privacy).
fn non_private_grads(
    model: &dyn ImageClassifier,
    train: &Dataset,
    indices: &[usize],
    cfg: &TrainConfig,
    params: &[Tensor],
    device: Device,
    loss_sum: &mut f64,
) -> Result<Vec<Tensor>> {
    let mut grads: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
    for micro in indices.chunks(cfg.physical_batch) {
        let (x, y) = train.batch(micro, device);
        let losses = cross_entropy_per_example(&model.forward(&x), &y)?;
        *loss_sum += losses.sum(Kind::Float).double_value(&[]);
        let total = losses.sum(Kind::Float) / indices.len() as f64;
        let g = Tensor::run_backward(&[total], params, false, false);
        for (acc, gi) in grads.iter_mut().zip(g) {
            *acc += gi;
        }
    }
    Ok(grads)
}

/// Accuracy, per-class accuracy and confusion matrix of `model` on `data`.
pub fn evaluate(model: &dyn ImageClassifier, data: &Dataset, device: Device) -> Metrics {
    let _guard = tch::no_grad_guard();
    let mut preds = Vec::with_capacity(data.len());
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(1000) {
        let (x, _) = data.batch(chunk, device);
        let p = model.forward(&x).argmax(-1, false).to_device(Device::Cpu);
        preds.extend(
            Vec::<i64>::try_from(p)
                .expect("int64 predictions")
                .into_iter()
                .map(|v| v as usize),
        );
    }
    let labels: Vec<usize> = data.labels.iter().map(|&l| l as usize).collect();
    Metrics::from_predictions(&labels, &preds, data.num_classes())
}
