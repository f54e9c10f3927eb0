//! DP fine-tuning of a pretrained U-Net on private data, in one of five modes:
//! `loda`/`lora` (adapters only, base frozen), `attention` (attention blocks only, as DP-LDM),
//! `full` (every weight, as DP-Diffusion) and `scratch` (random initialisation, as DPDM).
//!
//! DP-SGD with Poisson sampling, per-example clipping of the mean loss over K (timestep, noise)
//! draws (noise multiplicity), Gaussian noise calibrated with the chosen accountant, and atomic
//! checkpoints that carry the privacy ledger so a resumed run is accounted as one run.
//!
//! The base model's classes need not be the private data's, in name or in number: the fine-tuned
//! model gets a class table of its own, each row started from the base's row of the same class,
//! from the mean of the rows of related public classes (a class-init table), or from the null
//! row ([`super::class_table`]; it reads only the base, so it costs no privacy). The class
//! embedding is then learned here, under DP (it is trained by default in every mode; its
//! per-example gradients come from the Embedding rule of `dp::grad_sample`), and freezing it is
//! refused. The fine-tuned model folder carries the private data's class names. An unconditional
//! base (no `num_class_embeds`) is accepted in every mode: its class table starts at zero, so
//! the run starts from exactly the base, and the saved folder is a class-conditional
//! `UNet2DModel`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use privacy::Accountant;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::class_table::{self, ClassInit, InitRows, RowStart};
pub use super::dp_loop::StepInfo;
use super::dp_loop::{self, Checkpointing, DpConfig, DpSettings, DpState, MicroBatchLoss};
use super::gradient_canaries::CanaryScores;
use super::{checkpoint, sorted_by_name};
use crate::data::Dataset;
use crate::diffusion::loss::{draw, eps_loss_with, Draws, LossConfig};
use crate::diffusion::schedule::NoiseSchedule;
use crate::dp::optim::{Optimizer, OptimizerConfig};
use crate::nn::adapter::{attach, AdapterConfig, AdapterKind};
use crate::nn::unet::UNet;
use crate::synth::{load_base_dir, ModelDir};

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// LoDA adapters (non-linear low-dimensional), base frozen.
    Loda,
    /// LoRA adapters, base frozen.
    Lora,
    /// Attention blocks only (DP-LDM).
    Attention,
    /// Every weight (DP-Diffusion).
    Full,
    /// Every weight of a randomly initialised model (DPDM).
    Scratch,
}

impl Mode {
    /// Every mode, in the order help texts list them.
    pub const ALL: [Mode; 5] = [
        Self::Loda,
        Self::Lora,
        Self::Attention,
        Self::Full,
        Self::Scratch,
    ];

    /// The default clipping bound C: the largest bound within about 2% of the most signal per
    /// unit of noise that `dpsynth clip-scan` found on the shipped MNIST base with public
    /// handwriting-like digits (docs/SELECTION.md, "Public pretraining data"); scratch keeps 1,
    /// where a random-init U-Net's norms lie. Per-example gradient norms depend on the model and
    /// the data, so scan another base before trusting these.
    pub fn default_clip(self) -> f64 {
        match self {
            Self::Loda | Self::Lora => 0.003,
            Self::Attention => 0.0005,
            Self::Full => 0.03,
            Self::Scratch => 1.0,
        }
    }

    /// The default Adam learning rate: for loda, the best of 3e-3, 1e-2 and 3e-2 on the public
    /// stand-in task at 60,000 images (results/handwriting-digits, docs/SELECTION.md); the other
    /// modes keep the recipe's 2e-3, which was not tuned.
    pub fn default_lr(self) -> f64 {
        match self {
            Self::Loda => 3e-3,
            Self::Lora | Self::Attention | Self::Full | Self::Scratch => 2e-3,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "loda" => Self::Loda,
            "lora" => Self::Lora,
            "attention" => Self::Attention,
            "full" => Self::Full,
            "scratch" => Self::Scratch,
            other => {
                bail!("unknown mode '{other}': expected loda, lora, attention, full or scratch")
            }
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Loda => "loda",
            Self::Lora => "lora",
            Self::Attention => "attention",
            Self::Full => "full",
            Self::Scratch => "scratch",
        };
        f.write_str(s)
    }
}

/// Default steps between fine-tuning checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 20;

/// Default adapter rank r (loda, lora); the adapter scale α defaults to r.
pub const DEFAULT_RANK: i64 = 4;

/// Default noise multiplicity K: (timestep, noise) draws per example.
pub const DEFAULT_NOISE_MULTIPLICITY: i64 = 1;

/// Default passes over the private data.
pub const DEFAULT_EPOCHS: f64 = 1.0;

/// Default expected logical batch size.
pub const DEFAULT_BATCH: usize = 1000;

/// Default largest micro-batch put through the model at once.
pub const DEFAULT_PHYSICAL_BATCH: usize = 250;

/// Settings of a DP fine-tuning run (saved in checkpoints and reports).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// What is trained.
    pub mode: Mode,
    /// Adapter settings (loda and lora modes).
    pub adapter: AdapterConfig,
    /// Also train the class-embedding table (tiny; lets the classes move to the private data).
    /// Required when the base model's class names differ from the private data's.
    pub train_class_embedding: bool,
    /// Target ε.
    pub epsilon: f64,
    /// Target δ.
    pub delta: f64,
    /// Accountant for calibration and reporting.
    pub accountant: Accountant,
    /// Passes over the private data (steps = epochs · N / batch, rounded up).
    pub epochs: f64,
    /// Expected logical batch size (q = batch / N).
    pub batch_size: usize,
    /// Largest micro-batch (examples) put through the model at once.
    pub physical_batch: usize,
    /// Noise multiplicity K: (timestep, noise) draws per example, averaged before clipping.
    pub noise_multiplicity: i64,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam learning rate of the class-embedding table, when it differs from `lr`. Adam moves
    /// each coordinate by about lr per step whatever the gradient's size, so new classes that
    /// start from the null class need a larger step than the adapters to separate in a few
    /// hundred steps.
    #[serde(default)]
    pub class_lr: Option<f64>,
    /// Per-example clipping norm C (`max_grad_norm` in checkpoints and reports written before
    /// it was named `clip`, as in run configs and flags).
    #[serde(alias = "max_grad_norm")]
    pub clip: f64,
    /// Probability of training an example as the null class (for classifier-free guidance).
    pub class_dropout: f64,
    /// Where the rows of private classes that the base does not have start: private class name
    /// → public classes of the base whose mean row it starts from (others start from the null
    /// row). Public names only: no privacy cost.
    #[serde(default)]
    pub class_init: Option<ClassInit>,
    /// Whether a class the class-init table gives several public classes starts from their
    /// mean row (plain or rescaled) or with one row per public class (trained and sampled
    /// across them).
    #[serde(default)]
    pub class_init_rows: InitRows,
    /// Accept δ ≥ 1/n (experiments only: such a δ guarantees nothing).
    #[serde(default)]
    pub allow_large_delta: bool,
    /// A fixed noise multiplier σ instead of the one the target ε calls for: privacy audits and
    /// tests only. The run then reports the ε its σ spends (∞ at σ = 0: no privacy).
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// Gradient canaries planted for a white-box audit of the run's mechanism (`dpsynth audit`;
    /// 0: none). They touch no model weight.
    #[serde(default)]
    pub gradient_canaries: usize,
    /// Seed: repeatable, but the privacy noise is then not cryptographically secure.
    pub seed: Option<u64>,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    #[serde(default = "checkpoint::default_checkpoint_seconds")]
    pub checkpoint_seconds: f64,
}

impl FinetuneConfig {
    /// The defaults for `mode` (the paper's LoDA recipe scaled to a 2-core CPU budget).
    pub fn new(mode: Mode, epsilon: f64, delta: f64) -> Self {
        Self {
            mode,
            adapter: AdapterConfig::new(
                if mode == Mode::Lora {
                    AdapterKind::Lora
                } else {
                    AdapterKind::Loda
                },
                DEFAULT_RANK,
            ),
            train_class_embedding: true,
            epsilon,
            delta,
            accountant: Accountant::Pld,
            epochs: DEFAULT_EPOCHS,
            batch_size: DEFAULT_BATCH,
            physical_batch: DEFAULT_PHYSICAL_BATCH,
            noise_multiplicity: DEFAULT_NOISE_MULTIPLICITY,
            lr: mode.default_lr(),
            class_lr: None,
            clip: mode.default_clip(),
            class_dropout: 0.1,
            class_init: None,
            class_init_rows: InitRows::Mean,
            allow_large_delta: false,
            noise_multiplier: None,
            gradient_canaries: 0,
            seed: None,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_seconds: checkpoint::DEFAULT_CHECKPOINT_SECONDS,
        }
    }

    /// These settings with the ones `o` sets (a run config's `[finetune]` keys, `dpsynth
    /// finetune`'s flags); what `o` leaves unset keeps its value. The adapter scale α follows
    /// the rank unless `o` sets it: α = r.
    pub fn with_overrides(mut self, o: &FinetuneOverrides) -> Self {
        if o.rank.is_some() || o.alpha.is_some() {
            self.adapter.rank = o.rank.unwrap_or(self.adapter.rank);
            self.adapter.alpha = o.alpha.unwrap_or(self.adapter.rank as f64);
        }
        self.epochs = o.epochs.unwrap_or(self.epochs);
        self.batch_size = o.batch_size.unwrap_or(self.batch_size);
        self.physical_batch = o.physical_batch.unwrap_or(self.physical_batch);
        self.lr = o.lr.unwrap_or(self.lr);
        self.class_lr = o.class_lr.or(self.class_lr);
        self.clip = o.clip.unwrap_or(self.clip);
        self.noise_multiplicity = o.noise_multiplicity.unwrap_or(self.noise_multiplicity);
        self.class_init_rows = o.class_init_rows;
        self.allow_large_delta |= o.allow_large_delta;
        self
    }

    /// Checks what the DP loop does not ([`DpSettings::check`] covers the rest).
    fn validate(&self) -> Result<()> {
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "--lr must be positive"
        );
        if let Some(c) = self.class_lr {
            ensure!(
                c > 0.0 && c.is_finite(),
                "--class-lr must be positive, got {c}"
            );
        }
        ensure!(
            self.checkpoint_every > 0,
            "checkpoint_every must be at least 1"
        );
        if matches!(self.mode, Mode::Loda | Mode::Lora) {
            self.adapter.validate()?;
        }
        Ok(())
    }
}

/// The settings a run config's `[finetune]` table and `dpsynth finetune`'s flags may change
/// from [`FinetuneConfig::new`]'s defaults for the mode, applied by
/// [`FinetuneConfig::with_overrides`] (`None`: the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinetuneOverrides {
    /// Adapter rank r ([`DEFAULT_RANK`]).
    pub rank: Option<i64>,
    /// Adapter scale α (default: the rank r).
    pub alpha: Option<f64>,
    /// Passes over the private data ([`DEFAULT_EPOCHS`]).
    pub epochs: Option<f64>,
    /// Expected logical batch size ([`DEFAULT_BATCH`]).
    pub batch_size: Option<usize>,
    /// Largest micro-batch ([`DEFAULT_PHYSICAL_BATCH`]).
    pub physical_batch: Option<usize>,
    /// Adam learning rate ([`Mode::default_lr`]).
    pub lr: Option<f64>,
    /// Learning rate of the class embedding (default: `lr`).
    pub class_lr: Option<f64>,
    /// Per-example clipping norm C ([`Mode::default_clip`]).
    pub clip: Option<f64>,
    /// Noise multiplicity K ([`DEFAULT_NOISE_MULTIPLICITY`]).
    pub noise_multiplicity: Option<i64>,
    /// Mean, scaled mean or each row per class-init class ([`InitRows::Mean`]).
    pub class_init_rows: InitRows,
    /// Accept a δ at or above 1/n (experiments only; `false`: the default, refused).
    pub allow_large_delta: bool,
}

/// Checkpointed state besides the tensors.
pub type FinetuneState = DpState<FinetuneConfig>;

impl DpConfig for FinetuneConfig {
    fn dp(&self) -> DpSettings {
        DpSettings {
            epsilon: self.epsilon,
            delta: self.delta,
            accountant: self.accountant,
            allow_large_delta: self.allow_large_delta,
            noise_multiplier: self.noise_multiplier,
            epochs: self.epochs,
            batch_size: self.batch_size,
            physical_batch: self.physical_batch,
            clip: self.clip,
            rows_per_example: self.noise_multiplicity,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            checkpoint_seconds: self.checkpoint_seconds,
            gradient_canaries: self.gradient_canaries,
        }
    }
}

/// What a finished fine-tuning run produced.
pub struct Finetuned {
    /// The model folder written (loadable by `sample`).
    pub model_dir: PathBuf,
    /// Final state with the full ledger.
    pub state: FinetuneState,
    /// ε spent, by the configured accountant.
    pub epsilon: f64,
    /// Trainable parameters.
    pub trainable_parameters: usize,
    /// Parameters of the base U-Net.
    pub base_parameters: usize,
    /// Whether all privacy randomness came from the OS-seeded generator.
    pub secure_noise: bool,
    /// Where each private class's row started, when the base's classes were not the private
    /// data's (`None`: the base's table was kept).
    pub class_rows: Option<Vec<RowStart>>,
    /// How the private images were converted to the model's shape (`None`: they had it).
    pub conversion: Option<String>,
    /// The private images in the model's shape, as they were trained on, when they had to be
    /// converted (`None`: the caller's set had that shape), so a caller need not convert them
    /// again.
    pub converted: Option<Dataset>,
    /// The gradient canaries' membership and scores, when the run planted some.
    pub canaries: Option<CanaryScores>,
    /// Training seconds of the earlier processes a resumed run continues (0 for a fresh run).
    pub seconds_earlier: f64,
}

/// The model being fine-tuned: U-Net, optional adapter store, and the named trainable tensors.
pub struct Trainee {
    /// The loaded model folder (adapters attached for `loda`/`lora`).
    pub model: ModelDir,
    /// The adapters' parameters (`loda`/`lora` modes).
    pub adapters: Option<nn::VarStore>,
    /// What `cfg.mode` trains, sorted by name (base parameters first, then adapters).
    pub trainable: Vec<(String, Tensor)>,
    /// Where each private class's row started, when the base's class table was rebuilt for the
    /// private classes (`None`: kept as it was).
    pub class_rows: Option<Vec<RowStart>>,
}

impl Trainee {
    /// The trainable tensors (shallow copies sharing storage), in [`Trainee::trainable`] order.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.trainable
            .iter()
            .map(|(_, v)| v.shallow_clone())
            .collect()
    }

    /// The optimizer fine-tuning uses: Adam at `cfg.lr` over [`Trainee::tensors`], the class
    /// embedding at `cfg.class_lr` when set.
    pub fn optimizer(&self, cfg: &FinetuneConfig) -> Result<Optimizer> {
        let mut opt = Optimizer::new(
            self.tensors(),
            OptimizerConfig::Adam {
                lr: cfg.lr,
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )?;
        if let Some(class_lr) = cfg.class_lr {
            for (i, (name, _)) in self.trainable.iter().enumerate() {
                if name.starts_with("class_embedding.") {
                    opt.set_lr_scale(i, class_lr / cfg.lr)?;
                }
            }
        }
        Ok(opt)
    }
}

/// Loads the base model folder and sets up what `cfg.mode` trains exactly as [`finetune`] does
/// (class table for `private_classes`, frozen base, attached adapters, trainable class
/// embedding, ...). Public so that benchmarks and `clip-scan` use the very model a fine-tuning
/// run trains; they pass `None` to keep the base's classes (a class row's per-example gradient
/// does not depend on the table's size, since only the rows in use get one). The base may be an
/// unconditional `UNet2DModel`: it gets a zero class table ([`class_table`]; with `None`, the
/// null row alone), which is trained like any other.
pub fn prepare(
    base: &Path,
    cfg: &FinetuneConfig,
    private_classes: Option<&[String]>,
    device: Device,
) -> Result<Trainee> {
    let mut model = load_base_dir(base, device)?;
    if model.adapter.is_some() {
        bail!(
            "{}: already carries adapters; fine-tune from the base model folder",
            base.display()
        );
    }
    let unconditional = model.unet.class_embedding.is_none();
    let private_classes = match private_classes {
        None if unconditional => Some(&[][..]),
        other => other,
    };
    let class_rows = match private_classes {
        Some(private) if unconditional || private != model.classes.as_slice() => {
            let plan = class_table::plan_rows(
                &model.classes,
                private,
                cfg.class_init.as_ref(),
                cfg.class_init_rows,
            )?;
            let frozen =
                !cfg.train_class_embedding && !matches!(cfg.mode, Mode::Full | Mode::Scratch);
            class_table::ensure_learnable(&plan, frozen, unconditional, base)?;
            model.unet = class_table::rebuild(&model.unet, &model.classes, &plan)?;
            model.classes = private.to_vec();
            model.row_classes = class_table::row_classes(&plan);
            Some(plan)
        }
        _ => None,
    };
    if cfg.mode == Mode::Scratch {
        model.unet = UNet::new(model.unet.config().clone(), device)?;
    }
    let vars = model.unet.vs.variables();
    let set = |names: &dyn Fn(&str) -> bool| {
        for (k, v) in &vars {
            let _ = v.set_requires_grad(names(k));
        }
    };
    let class_embedding = |k: &str| cfg.train_class_embedding && k.starts_with("class_embedding.");
    let mut adapters = None;
    match cfg.mode {
        Mode::Full | Mode::Scratch => set(&|_| true),
        Mode::Attention => set(&|k| k.contains(".attentions.") || class_embedding(k)),
        Mode::Loda | Mode::Lora => {
            set(&class_embedding);
            let store = nn::VarStore::new(device);
            let kind = if cfg.mode == Mode::Loda {
                AdapterKind::Loda
            } else {
                AdapterKind::Lora
            };
            let acfg = AdapterConfig {
                kind,
                ..cfg.adapter.clone()
            };
            attach(&mut model.unet, &store, &acfg)?;
            model.adapter = Some(acfg);
            adapters = Some(store);
        }
    }
    let mut trainable: Vec<(String, Tensor)> = sorted_by_name(
        model
            .unet
            .vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad()),
    );
    if let Some(store) = &adapters {
        trainable.extend(sorted_by_name(store.variables()));
    }
    ensure!(
        !trainable.is_empty(),
        "mode {} leaves nothing to train",
        cfg.mode
    );
    Ok(Trainee {
        model,
        adapters,
        trainable,
        class_rows,
    })
}

/// The diffusion model's per-example loss: the ε-prediction error of K (timestep, noise) draws
/// per image, with class dropout to the null class. An image of a class with several rows
/// ([`InitRows::Each`]) is trained as one of them, drawn uniformly at each step: a choice that
/// does not look at the image, so it changes nothing in the privacy analysis.
struct EpsLoss<'a> {
    unet: &'a UNet,
    schedule: &'a NoiseSchedule,
    train: &'a Dataset,
    cfg: LossConfig,
    null: i64,
    /// Each class's rows, when some class has several (`None`: row = class).
    rows_of: Option<Vec<Vec<i64>>>,
    device: Device,
}

impl MicroBatchLoss for EpsLoss<'_> {
    type Prepared = (Tensor, Draws);

    fn prepare(&mut self, indices: &[usize]) -> Result<Self::Prepared> {
        let (x0, mut y) = self.train.batch(indices, self.device);
        if let Some(rows_of) = &self.rows_of {
            let classes = Vec::<i64>::try_from(&y.to_device(Device::Cpu))?;
            let u = Vec::<f64>::try_from(&Tensor::rand(
                [classes.len() as i64],
                (tch::Kind::Double, Device::Cpu),
            ))?;
            let rows: Vec<i64> = classes
                .iter()
                .zip(&u)
                .map(|(&c, &u)| {
                    let rows = &rows_of[c as usize];
                    rows[((u * rows.len() as f64) as usize).min(rows.len() - 1)]
                })
                .collect();
            y = Tensor::from_slice(&rows).to_device(self.device);
        }
        let draws = draw(self.schedule, &x0, &y, &self.cfg, Some(self.null))?;
        Ok((x0, draws))
    }

    fn losses(&self, (x0, draws): &Self::Prepared) -> Tensor {
        eps_loss_with(self.unet, self.schedule, x0, draws)
    }
}

/// Fine-tunes the model in `base` on `train` with DP-SGD (the loop of [`super::dp_loop`]);
/// writes `out/model` (a model folder), `out/checkpoint`, and returns the record.
pub fn finetune(
    base: &Path,
    train: &Dataset,
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    device: Device,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Finetuned> {
    cfg.validate()?;
    if let Some(seed) = cfg.seed {
        tch::manual_seed(seed as i64);
    }
    cfg.dp().check(train.len())?; // before loading the model
    let checkpointing = Checkpointing {
        dir: &out.join("checkpoint"),
        resume,
    };
    checkpointing.check()?; // before loading the model: a wrong flag fails at once
    let t = prepare(base, cfg, Some(&train.class_names), device)?;
    let unet = &t.model.unet;
    let null = unet.null_class().context("the model has no null class")?;
    let [c, h, w] = unet
        .sample_shape()
        .context("the model config has no sample_size")?;
    // images of another shape are converted to the model's, image by image (a fixed public
    // transform, so it changes nothing in the privacy analysis)
    let shape = [c as usize, h as usize, w as usize];
    let (converted, conversion) = crate::data::convert::to_shape(train, shape);
    let train: &Dataset = &converted;
    let mut opt = t.optimizer(cfg)?;
    let run = dp_loop::train(
        cfg,
        train.len(),
        &t.trainable,
        &mut opt,
        &mut EpsLoss {
            unet,
            schedule: &t.model.schedule,
            train,
            cfg: LossConfig {
                repeats: cfg.noise_multiplicity,
                class_dropout: cfg.class_dropout,
            },
            null,
            rows_of: (!crate::synth::is_identity(&t.model.row_classes))
                .then(|| crate::synth::rows_of_classes(&t.model.row_classes)),
            device,
        },
        Some(checkpointing),
        on_step,
    )?;
    let model_dir = out.join("model");
    // the class table prepare() built is the private data's: its classes are train's
    t.model.save(
        &model_dir,
        t.model.adapter.as_ref().zip(t.adapters.as_ref()),
    )?;
    Ok(Finetuned {
        model_dir,
        epsilon: run.epsilon,
        trainable_parameters: t.trainable.iter().map(|(_, v)| v.numel()).sum(),
        base_parameters: unet.vs.variables().values().map(Tensor::numel).sum(),
        state: run.state,
        secure_noise: run.secure_noise,
        class_rows: t.class_rows.clone(),
        conversion,
        canaries: run.canaries,
        seconds_earlier: run.seconds_earlier,
        converted: match converted {
            std::borrow::Cow::Owned(ds) => Some(ds),
            std::borrow::Cow::Borrowed(_) => None,
        },
    })
}
