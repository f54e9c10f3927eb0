//! The DP-SGD classifier trained directly on private data (the baseline; the CNN or the
//! ResNet), and measuring a classifier ([`evaluate`]; the downstream classifier trained on
//! synthetic data is [`super::downstream`]).

use std::path::Path;

use anyhow::Result;
use privacy::Accountant;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::dp_loop::{self, Checkpointing, DpConfig, DpSettings, DpState, MicroBatchLoss};
use super::{checkpoint, sorted_by_name};
use crate::data::Dataset;
use crate::dp::optim::{Optimizer, OptimizerConfig};
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
    /// Per-example clipping norm C (`max_grad_norm` in checkpoints and reports written before
    /// it was named `clip`, as in run configs and flags).
    #[serde(alias = "max_grad_norm")]
    pub clip: f64,
    /// DP-SGD target.
    pub privacy: PrivacyTarget,
    /// Seed for initialisation, sampling and noise. A seeded DP run is repeatable but its noise
    /// is not cryptographically secure; reports say so.
    pub seed: Option<u64>,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    #[serde(default = "checkpoint::default_checkpoint_seconds")]
    pub checkpoint_seconds: f64,
}

/// Progress of one training step.
pub use super::dp_loop::StepInfo;

/// The state saved in a checkpoint beside the model tensors.
pub type TrainState = DpState<TrainConfig>;

impl DpConfig for TrainConfig {
    fn dp(&self) -> DpSettings {
        let p = self.privacy;
        DpSettings {
            epsilon: p.epsilon,
            delta: p.delta,
            accountant: p.accountant,
            allow_large_delta: p.allow_large_delta,
            noise_multiplier: None,
            epochs: self.epochs as f64,
            batch_size: self.batch_size,
            physical_batch: self.physical_batch,
            clip: self.clip,
            rows_per_example: 1,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            checkpoint_seconds: self.checkpoint_seconds,
            gradient_canaries: 0,
        }
    }
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

/// The classifier's per-example loss: cross-entropy of each image.
struct CrossEntropy<'a> {
    model: &'a dyn ImageClassifier,
    train: &'a Dataset,
    device: Device,
}

impl MicroBatchLoss for CrossEntropy<'_> {
    type Prepared = (Tensor, Tensor);

    fn prepare(&mut self, indices: &[usize]) -> Result<Self::Prepared> {
        Ok(self.train.batch(indices, self.device))
    }

    fn losses(&self, (x, y): &Self::Prepared) -> Tensor {
        cross_entropy_per_example(&self.model.forward(x), y).expect("logits and labels agree")
    }
}

/// Trains a classifier on `train` with DP-SGD (the loop of [`super::dp_loop`]), SGD with
/// momentum. Resumes from `ckpt_dir` when it holds a checkpoint, continuing both the schedule
/// and the privacy ledger.
pub fn train_classifier(
    train: &Dataset,
    model_cfg: impl Into<NetSpec>,
    cfg: &TrainConfig,
    ckpt_dir: Option<&Path>,
    device: Device,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Trained> {
    cfg.dp().check(train.len())?;
    if let Some(seed) = cfg.seed {
        tch::manual_seed(seed as i64);
    }
    let vs = nn::VarStore::new(device);
    let model = model_cfg.into().build(&vs.root())?;
    let params = sorted_by_name(vs.variables());
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt = Optimizer::new(
        tensors,
        OptimizerConfig::Sgd {
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: 0.0,
        },
    )?;
    let checkpointing = ckpt_dir.map(|dir| Checkpointing {
        dir,
        resume: checkpoint::exists(dir),
    });
    let run = dp_loop::train(
        cfg,
        train.len(),
        &params,
        &mut opt,
        &mut CrossEntropy {
            model: model.as_ref(),
            train,
            device,
        },
        checkpointing,
        on_step,
    )?;
    Ok(Trained {
        vs,
        model,
        state: run.state,
        secure_noise: run.secure_noise,
        train_seconds: run.seconds_this_process,
    })
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
