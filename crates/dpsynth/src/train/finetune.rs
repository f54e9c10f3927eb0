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
//! refused. The fine-tuned model folder carries the private data's class names.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use privacy::{calibrate_noise, Accountant, Ledger};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::class_table::{self, ClassInit, RowStart};
use super::{checkpoint, shallow, shallow_named, sorted_by_name};
use crate::data::Dataset;
use crate::diffusion::loss::{draw, eps_loss_with, LossConfig};
use crate::dp::engine::{DpSgd, DpSgdConfig};
use crate::dp::optim::{Optimizer, OptimizerConfig};
use crate::dp::rng::StreamPositions;
use crate::dp::sampling::PoissonSampler;
use crate::nn::adapter::{attach, AdapterConfig, AdapterKind};
use crate::nn::unet::UNet;
use crate::synth::{load_model_dir, save_extras, ModelDir, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

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
    /// The default clipping bound C: where `dpsynth clip-scan` found the most signal per unit of
    /// noise on the shipped bases (docs/RESULTS.md; loda and lora within 2% of the best on both,
    /// attention measured on MNIST only). Per-example gradient norms depend on the model and the
    /// data, so scan another base before trusting these.
    pub fn default_clip(self) -> f64 {
        match self {
            Self::Loda | Self::Lora => 0.003,
            Self::Attention => 0.001,
            Self::Full => 0.1,
            Self::Scratch => 1.0,
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
    /// Per-example clipping norm C.
    pub max_grad_norm: f64,
    /// Probability of training an example as the null class (for classifier-free guidance).
    pub class_dropout: f64,
    /// Where the rows of private classes that the base does not have start: private class name
    /// → public classes of the base whose mean row it starts from (others start from the null
    /// row). Public names only: no privacy cost.
    #[serde(default)]
    pub class_init: Option<ClassInit>,
    /// Accept δ ≥ 1/n (experiments only: such a δ guarantees nothing).
    #[serde(default)]
    pub allow_large_delta: bool,
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
                4,
            ),
            train_class_embedding: true,
            epsilon,
            delta,
            accountant: Accountant::Pld,
            epochs: 2.0,
            batch_size: 1000,
            physical_batch: 250,
            noise_multiplicity: 1,
            lr: 2e-3,
            class_lr: None,
            max_grad_norm: mode.default_clip(),
            class_dropout: 0.1,
            class_init: None,
            allow_large_delta: false,
            seed: None,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_seconds: checkpoint::DEFAULT_CHECKPOINT_SECONDS,
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs > 0.0,
            "--epochs must be positive, got {}",
            self.epochs
        );
        ensure!(self.batch_size > 0, "--batch must be at least 1");
        ensure!(
            self.physical_batch > 0,
            "--physical-batch must be at least 1"
        );
        ensure!(
            self.noise_multiplicity >= 1,
            "--noise-multiplicity must be at least 1, got {}",
            self.noise_multiplicity
        );
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

/// Progress of one step.
#[derive(Debug, Clone)]
pub struct FinetuneStep {
    /// Steps done.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean per-row loss of the step.
    pub loss: f64,
    /// ε spent so far, when computed (every ~2% of the run).
    pub epsilon: Option<f64>,
}

/// Checkpointed state besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneState {
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
    pub seconds: f64,
    /// The run's settings.
    pub config: FinetuneConfig,
    /// Where a seeded run's sampling and noise streams stopped (`None` when OS-seeded).
    #[serde(default)]
    pub streams: Option<StreamPositions>,
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
/// does not depend on the table's size, since only the rows in use get one).
pub fn prepare(
    base: &Path,
    cfg: &FinetuneConfig,
    private_classes: Option<&[String]>,
    device: Device,
) -> Result<Trainee> {
    let mut model = load_model_dir(base, device)?;
    if model.adapter.is_some() {
        bail!(
            "{}: already carries adapters; fine-tune from the base model folder",
            base.display()
        );
    }
    let class_rows = match private_classes {
        Some(private) if private != model.classes.as_slice() => {
            let plan = class_table::plan_rows(&model.classes, private, cfg.class_init.as_ref())?;
            let frozen =
                !cfg.train_class_embedding && !matches!(cfg.mode, Mode::Full | Mode::Scratch);
            class_table::ensure_learnable(&plan, frozen, &base.join(crate::synth::CLASSES_FILE))?;
            model.unet = class_table::rebuild(&model.unet, &model.classes, &plan)?;
            model.classes = private.to_vec();
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

/// Fine-tunes the model in `base` on `train` with DP-SGD; writes `out/model` (a model folder),
/// `out/checkpoint`, and returns the record.
pub fn finetune(
    base: &Path,
    train: &Dataset,
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    device: Device,
    on_step: &mut dyn FnMut(&FinetuneStep),
) -> Result<Finetuned> {
    cfg.validate()?;
    if let Some(seed) = cfg.seed {
        tch::manual_seed(seed as i64);
    }
    ensure!(!train.is_empty(), "the private training set is empty");
    super::ensure_meaningful_delta(cfg.delta, train.len(), cfg.allow_large_delta)?;
    let ckpt = out.join("checkpoint");
    ensure!(
        !resume || checkpoint::exists(&ckpt),
        "{}: no checkpoint to resume (--resume continues a run in the same --out)",
        ckpt.display()
    );
    let t = prepare(base, cfg, Some(&train.class_names), device)?;
    let unet = &t.model.unet;
    let null = unet.null_class().context("the model has no null class")?;
    let [c, h, w] = unet
        .sample_shape()
        .context("the model config has no sample_size")?;
    // images of another shape are converted to the model's, image by image (a fixed public
    // transform, so it changes nothing in the privacy analysis)
    let shape = [c as usize, h as usize, w as usize];
    let conversion =
        crate::data::convert::describe([train.channels, train.height, train.width], shape);
    let converted;
    let train = if conversion.is_some() {
        converted = crate::data::convert::convert(train, shape);
        &converted
    } else {
        train
    };

    let n = train.len();
    let q = (cfg.batch_size as f64 / n as f64).min(1.0);
    let total_steps = (cfg.epochs * n as f64 / cfg.batch_size as f64).ceil() as u64;
    let sigma = calibrate_noise(cfg.accountant, cfg.epsilon, cfg.delta, q, total_steps)
        .context("calibrating the noise multiplier")?;
    // a resumed run continues with its checkpoint's calibration
    let saved: Option<(FinetuneState, _)> = if checkpoint::exists(&ckpt) {
        ensure!(
            resume,
            "{}: holds a checkpoint; pass --resume to continue it or choose another --out",
            ckpt.display()
        );
        Some(checkpoint::load(&ckpt)?)
    } else {
        None
    };
    let sigma = match &saved {
        Some((saved, _)) => {
            checkpoint::ensure_same_settings(&saved.config, cfg, &ckpt)?;
            checkpoint::ensure_same_noise(
                (saved.noise_multiplier, saved.sample_rate),
                (sigma, q),
                &ckpt,
            )?
        }
        None => sigma,
    };
    let tensors = t.tensors();
    let mut opt = t.optimizer(cfg)?;
    let mut engine = DpSgd::new(
        shallow(&tensors),
        DpSgdConfig::new(cfg.max_grad_norm, sigma, q * n as f64),
        cfg.seed,
    )?;
    let mut sampler = PoissonSampler::new(n, q, cfg.seed)?;
    let mut state = FinetuneState {
        step: 0,
        total_steps,
        noise_multiplier: sigma,
        sample_rate: q,
        ledger: Ledger::new(),
        seconds: 0.0,
        config: cfg.clone(),
        streams: None,
    };
    if let Some((saved, by_name)) = saved {
        checkpoint::restore(&t.trainable, &by_name, &ckpt)?;
        opt.restore(&by_name, "opt.")?;
        StreamPositions::restore(
            saved.streams.as_ref(),
            sampler.rng_mut(),
            Some(engine.rng_mut()),
        )
        .with_context(|| format!("{}: cannot resume", ckpt.display()))?;
        state.step = saved.step;
        state.ledger = saved.ledger;
        state.seconds = saved.seconds;
    }
    let loss_cfg = LossConfig {
        repeats: cfg.noise_multiplicity,
        class_dropout: cfg.class_dropout,
    };
    let schedule = &t.model.schedule;
    let report_every = (total_steps / 50).max(1);
    let start = Instant::now();
    let mut checkpoints =
        checkpoint::CheckpointSchedule::new(cfg.checkpoint_every, cfg.checkpoint_seconds);
    let seconds_before = state.seconds;
    while state.step < total_steps {
        if let Some(seed) = cfg.seed {
            // a function of the seed and the step, so a resumed seeded run repeats the
            // uninterrupted one exactly
            tch::manual_seed(step_seed(seed, state.step));
        }
        let batch = sampler.sample();
        let mut loss_sum = 0.0;
        let mut rows = 0usize;
        for micro in batch.micro_batches(cfg.physical_batch)? {
            let (x0, y) = train.batch(micro, device);
            let draws = draw(schedule, &x0, &y, &loss_cfg, Some(null))?;
            let mut l = 0.0;
            engine.accumulate(cfg.noise_multiplicity, || {
                let losses = eps_loss_with(unet, schedule, &x0, &draws);
                l = losses.sum(tch::Kind::Float).double_value(&[]);
                losses
            })?;
            loss_sum += l;
            rows += micro.len() * cfg.noise_multiplicity as usize;
        }
        opt.step(&engine.finish_step()?)?;
        state.ledger.record(q, sigma, 1);
        state.step += 1;
        state.seconds = seconds_before + start.elapsed().as_secs_f64();
        let epsilon = (state.step.is_multiple_of(report_every) || state.step == total_steps)
            .then(|| state.ledger.epsilon(cfg.accountant, cfg.delta))
            .transpose()?;
        on_step(&FinetuneStep {
            step: state.step,
            total: total_steps,
            loss: loss_sum / rows.max(1) as f64,
            epsilon,
        });
        if checkpoints.due(state.step, state.step == total_steps) {
            let mut all = shallow_named(&t.trainable);
            all.extend(opt.named_state("opt."));
            state.streams = StreamPositions::of(sampler.rng(), Some(engine.rng()));
            checkpoint::save(&ckpt, state.step, &state, &all)?;
        }
    }
    let model_dir = out.join("model");
    save_model(&t, &train.class_names, &model_dir)?;
    let epsilon = state.ledger.epsilon(cfg.accountant, cfg.delta)?;
    Ok(Finetuned {
        model_dir,
        epsilon,
        trainable_parameters: tensors.iter().map(Tensor::numel).sum(),
        base_parameters: unet.vs.variables().values().map(Tensor::numel).sum(),
        state,
        secure_noise: engine.is_secure() && sampler.is_secure(),
        class_rows: t.class_rows.clone(),
        conversion,
    })
}

/// The libtorch seed of step `step` in a run seeded with `seed` (timesteps, diffusion noise and
/// class dropout; the DP streams are ChaCha, see [`crate::dp::rng`]).
fn step_seed(seed: u64, step: u64) -> i64 {
    (seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64
}

/// Writes the fine-tuned model folder: the U-Net (base weights plus whatever was trained), the
/// scheduler and the private data's class names, and for adapter modes the adapter config and
/// weights.
fn save_model(t: &Trainee, classes: &[String], dir: &Path) -> Result<()> {
    t.model.unet.save(dir)?;
    save_extras(dir, &t.model.scheduler, classes)?;
    if let (Some(store), Some(acfg)) = (&t.adapters, &t.model.adapter) {
        crate::nn::unet::weights::save_safetensors(store, &dir.join(ADAPTER_WEIGHTS))?;
        let p = dir.join(ADAPTER_CONFIG);
        crate::fsutil::write_atomic(&p, serde_json::to_string_pretty(acfg)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
