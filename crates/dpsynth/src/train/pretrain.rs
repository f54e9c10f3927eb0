//! Non-private pretraining of the class-conditional U-Net on public data.
//!
//! AdamW with linear warm-up, global gradient-norm clipping, class dropout for classifier-free
//! guidance, an EMA of the weights, atomic periodic checkpoints (weights, EMA, optimizer moments,
//! step and loss history) and resume. A run may start from the weights of an earlier model of the
//! same architecture (`train.init`) instead of a random initialisation, to train a shipped base
//! further. The result is a diffusers-style model folder holding the EMA weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::mixed_precision::StepPrecision;
use super::{checkpoint, shallow, shallow_named, sorted_by_name};
use crate::data::{self, Dataset};
use crate::diffusion::ema::Ema;
use crate::diffusion::loss::{eps_loss, LossConfig};
use crate::diffusion::precision::Precision;
use crate::diffusion::sampler::{sample, SamplerConfig};
use crate::diffusion::{BetaSchedule, NoiseSchedule};
use crate::dp::optim::{Optimizer, OptimizerConfig};
use crate::nn::unet::{UNet, UNetConfig};

/// How a pretraining source's labels are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelUse {
    /// Keep the dataset's labels (its classes must match the model's classes).
    #[default]
    Keep,
    /// Train on the images as the null class only: they teach the unconditional model.
    Null,
}

/// One public dataset in the pretraining mix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Dataset spec, e.g. `font-digits:train`.
    pub spec: String,
    /// Label handling.
    #[serde(default)]
    pub labels: LabelUse,
    /// Convert images of another shape to the model's (channels by luma or replication, size
    /// by an antialiased resize), e.g. 32×32 colour photographs for a 28×28 grey model.
    #[serde(default)]
    pub convert: bool,
}

/// How the learning rate moves after its linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Stays at `lr`.
    #[default]
    Constant,
    /// Falls from `lr` to zero along a half cosine, reaching zero at `steps`.
    Cosine,
}

/// Training hyper-parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSettings {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// The learning rate after warm-up.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// A model folder (diffusers layout, the same `[model]`) whose weights start the run, and its
    /// EMA, instead of a random initialisation: a base trained further. Optimizer moments start
    /// at zero.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// AdamW decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    #[serde(default)]
    pub grad_clip: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// Probability of replacing a label by the null class.
    pub class_dropout: f64,
    /// Seed for initialisation, batches and diffusion draws.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    #[serde(default = "checkpoint::default_checkpoint_seconds")]
    pub checkpoint_seconds: f64,
    /// Steps between sample grids (0: only at the end).
    #[serde(default)]
    pub sample_every: u64,
    /// The number format of the forward and backward passes: "float32" (default) or "bfloat16"
    /// (mixed precision: a bfloat16 copy of the float32 weights computes each step's gradients,
    /// and AdamW, the EMA and checkpoints keep float32; fast on CPUs with AVX512-BF16). A
    /// resumed run may change it.
    #[serde(default)]
    pub precision: Precision,
}

impl PretrainSettings {
    /// The learning rate of step `step` (0-based): linear warm-up to `lr`, then `lr_schedule`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let done = (step - self.warmup_steps) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())
            }
        }
    }
}

/// Noise schedule settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// `linear` or `cosine`.
    pub beta_schedule: String,
    /// Training timesteps T.
    pub num_train_timesteps: usize,
}

impl ScheduleSettings {
    fn kind(&self) -> Result<BetaSchedule> {
        Ok(match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::DDPM_LINEAR,
            "cosine" => BetaSchedule::Cosine,
            other => bail!("schedule.beta_schedule = '{other}': expected 'linear' or 'cosine'"),
        })
    }

    /// Builds the schedule, naming the bad key.
    pub fn build(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.kind()?, self.num_train_timesteps)
    }

    /// The diffusers scheduler config saved with the model.
    pub fn scheduler_config(&self) -> Result<crate::synth::SchedulerConfig> {
        Ok(crate::synth::SchedulerConfig::of(
            self.kind()?,
            self.num_train_timesteps,
        ))
    }
}

/// A pretraining config (`configs/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// The U-Net, with diffusers `UNet2DModel` config keys.
    pub model: UNetConfig,
    /// The noise schedule.
    pub schedule: ScheduleSettings,
    /// Public training data.
    pub data: Vec<DataSource>,
    /// Hyper-parameters.
    pub train: PretrainSettings,
}

impl PretrainConfig {
    /// Reads and checks a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        let cfg: Self =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        cfg.model
            .validate()
            .with_context(|| format!("{}: [model]", path.display()))?;
        ensure!(
            !cfg.data.is_empty(),
            "{}: no [[data]] source",
            path.display()
        );
        ensure!(
            cfg.train.steps > 0,
            "{}: train.steps must be > 0",
            path.display()
        );
        ensure!(
            cfg.train.batch_size > 0,
            "{}: train.batch_size must be > 0",
            path.display()
        );
        Ok(cfg)
    }
}

/// Progress of one step, for a progress bar.
#[derive(Debug, Clone)]
pub struct PretrainStep {
    /// Steps done.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// This step's mean loss.
    pub loss: f64,
    /// Images per second since the start of this process.
    pub images_per_sec: f64,
}

/// Checkpointed state besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainState {
    /// Steps done.
    pub step: u64,
    /// Mean loss of every step so far.
    pub losses: Vec<f32>,
    /// Training seconds summed over all sessions.
    pub seconds: f64,
    /// The config the run started with.
    pub config: PretrainConfig,
}

/// The training set: images in [-1, 1] via [`Dataset::batch`], and the label each image trains
/// with (its own, or the null class).
struct Mix {
    parts: Vec<(Dataset, LabelUse)>,
    offsets: Vec<usize>,
    len: usize,
}

impl Mix {
    fn load(sources: &[DataSource], data_dir: &Path, model: &UNet) -> Result<Self> {
        let [c, h, w] = model
            .sample_shape()
            .context("model config needs sample_size")?;
        let classes = model.null_class().unwrap_or(0);
        let mut parts = Vec::new();
        let mut offsets = Vec::new();
        let mut len = 0;
        for s in sources {
            let mut ds = data::load(&s.spec, data_dir)?;
            let (from, to) = (
                [ds.channels, ds.height, ds.width],
                [c as usize, h as usize, w as usize],
            );
            if let Some(what) = data::convert::describe(from, to) {
                ensure!(
                    s.convert,
                    "{}: images are {}x{}x{}, the model takes {c}x{h}x{w} (set convert = true \
                     on this source to convert them)",
                    s.spec,
                    from[0],
                    from[1],
                    from[2]
                );
                eprintln!("{}: {what}", s.spec);
                ds = data::convert::convert(&ds, to);
            }
            if s.labels == LabelUse::Keep {
                ensure!(
                    ds.num_classes() as i64 == classes,
                    "{}: {} classes, the model has {classes} (use labels = \"null\" to train it \
                     as unconditional data)",
                    s.spec,
                    ds.num_classes()
                );
            }
            offsets.push(len);
            len += ds.len();
            parts.push((ds, s.labels));
        }
        Ok(Self {
            parts,
            offsets,
            len,
        })
    }

    /// Class names of the first labelled source (the model's classes).
    fn class_names(&self) -> Vec<String> {
        self.parts
            .iter()
            .find(|(_, u)| *u == LabelUse::Keep)
            .map(|(ds, _)| ds.class_names.clone())
            .unwrap_or_default()
    }

    fn batch(&self, indices: &[usize], null: i64, device: Device) -> (Tensor, Tensor) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for &i in indices {
            let p = self.offsets.partition_point(|&o| o <= i) - 1;
            let (ds, use_) = &self.parts[p];
            let (x, y) = ds.batch(&[i - self.offsets[p]], device);
            xs.push(x);
            ys.push(match use_ {
                LabelUse::Keep => y,
                LabelUse::Null => Tensor::from_slice(&[null]).to_device(device),
            });
        }
        (Tensor::cat(&xs, 0), Tensor::cat(&ys, 0))
    }
}

/// The order in which pretraining visits its data: shuffled passes, pass `e` a permutation
/// drawn from ChaCha8 stream `e` of the seed. The images of step `s` are positions
/// `s·B .. (s+1)·B` of the concatenated passes, a function of the seed and the step alone, so a
/// resumed run continues exactly where the checkpoint's step left off in its pass.
pub struct DataOrder {
    seed: u64,
    len: usize,
    pass: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    /// The order over `len` images for `seed`.
    pub fn new(seed: u64, len: usize) -> Self {
        Self {
            seed,
            len,
            pass: None,
        }
    }

    fn permutation(&self, pass: u64) -> Vec<usize> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(pass);
        let mut p: Vec<usize> = (0..self.len).collect();
        p.shuffle(&mut rng);
        p
    }

    /// The image indices of step `step` with `batch` images per step.
    pub fn batch(&mut self, step: u64, batch: usize) -> Vec<usize> {
        let start = step as u128 * batch as u128;
        (0..batch as u128)
            .map(|k| {
                let pos = start + k;
                let pass = (pos / self.len as u128) as u64;
                if self.pass.as_ref().is_none_or(|(p, _)| *p != pass) {
                    self.pass = Some((pass, self.permutation(pass)));
                }
                let (_, perm) = self.pass.as_ref().expect("set above");
                perm[(pos % self.len as u128) as usize]
            })
            .collect()
    }
}

/// Everything [`pretrain`] needs besides the config.
pub struct PretrainRun<'a> {
    /// Dataset folder.
    pub data_dir: &'a Path,
    /// Output folder: the model (EMA weights), checkpoints/, samples/, loss.png, report.json.
    pub out: &'a Path,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Where to run.
    pub device: Device,
}

/// Global L2 norm of a list of gradients.
fn global_norm(grads: &[Tensor]) -> f64 {
    grads
        .iter()
        .map(|g| g.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt()
}

/// Pretrains per `cfg`; returns the output folder of the model.
pub fn pretrain(
    cfg: &PretrainConfig,
    run: &PretrainRun,
    on_step: &mut dyn FnMut(&PretrainStep),
) -> Result<PathBuf> {
    let t = &cfg.train;
    let ckpt_dir = run.out.join("checkpoint");
    ensure!(
        !run.resume || checkpoint::exists(&ckpt_dir),
        "{}: no checkpoint to resume (--resume continues a run in the same --out)",
        ckpt_dir.display()
    );
    // built before seeding, so that a bfloat16 run draws the float32 run's random numbers
    let compute = StepPrecision::new(&cfg.model, t.precision, run.device)?;
    tch::manual_seed(t.seed as i64);
    let model = UNet::new(cfg.model.clone(), run.device)?;
    match &t.init {
        // a resumed run's weights come from its checkpoint
        Some(init) if !run.resume => load_init(&model, init)?,
        _ => {}
    }
    let schedule = cfg.schedule.build()?;
    let null = model
        .null_class()
        .context("pretraining needs a class-conditional model (num_class_embeds)")?;
    let mix = Mix::load(&cfg.data, run.data_dir, &model)?;
    let params = sorted_by_name(model.vs.variables());
    let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
    let mut opt = Optimizer::new(
        shallow(&tensors),
        OptimizerConfig::AdamW {
            lr: t.lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: t.weight_decay,
        },
    )?;
    let mut ema = Ema::new(&model.vs, t.ema_decay)?;
    let mut state = PretrainState {
        step: 0,
        losses: Vec::new(),
        seconds: 0.0,
        config: cfg.clone(),
    };
    if checkpoint::exists(&ckpt_dir) {
        ensure!(
            run.resume,
            "{}: holds a checkpoint; pass --resume to continue it or choose another --out",
            ckpt_dir.display()
        );
        let (saved, tensors_by_name): (PretrainState, _) = checkpoint::load(&ckpt_dir)?;
        checkpoint::restore(&params, &tensors_by_name, &ckpt_dir)?;
        ema.restore(&tensors_by_name, "ema.")?;
        opt.restore(&tensors_by_name, "opt.")?;
        state.step = saved.step;
        state.losses = saved.losses;
        state.seconds = saved.seconds;
        // fresh randomness for the remaining steps, but still a function of the seed
        tch::manual_seed(t.seed as i64 ^ state.step as i64);
    }
    let loss_cfg = LossConfig {
        repeats: 1,
        class_dropout: t.class_dropout,
    };
    let [c, h, w] = model.sample_shape().expect("checked in Mix::load");
    let mut order = DataOrder::new(t.seed, mix.len);
    let start = Instant::now();
    let mut checkpoints =
        checkpoint::CheckpointSchedule::new(t.checkpoint_every, t.checkpoint_seconds);
    let seconds_before = state.seconds;
    let done_before = state.step;
    while state.step < t.steps {
        let idx = order.batch(state.step, t.batch_size);
        let (x, y) = mix.batch(&idx, null, run.device);
        let (loss, mut grads) = compute.loss_and_grads(&model, &params, |m| {
            Ok(eps_loss(m, &schedule, &x, &y, &loss_cfg)?.mean(Kind::Float))
        })?;
        if t.grad_clip > 0.0 {
            let norm = global_norm(&grads);
            if norm > t.grad_clip {
                let s = t.grad_clip / (norm + 1e-6);
                grads = grads.into_iter().map(|g| g * s).collect();
            }
        }
        opt.set_lr(t.lr_at(state.step));
        opt.step(&grads)?;
        // EMA warm-up (as in diffusers' EMAModel): the effective decay grows from 0.1 towards
        // the configured one, so the average does not remember the random initialisation; a run
        // started from trained weights (`init`) has nothing to forget
        let warm = if t.init.is_some() {
            1.0
        } else {
            (1.0 + state.step as f64) / (10.0 + state.step as f64)
        };
        ema.set_decay(t.ema_decay.min(warm));
        ema.update(&model.vs)?;
        state.step += 1;
        let l = loss.double_value(&[]);
        ensure!(
            l.is_finite(),
            "loss became {l} at step {}: lower train.lr",
            state.step
        );
        state.losses.push(l as f32);
        let elapsed = start.elapsed().as_secs_f64();
        state.seconds = seconds_before + elapsed;
        on_step(&PretrainStep {
            step: state.step,
            total: t.steps,
            loss: l,
            images_per_sec: ((state.step - done_before) as usize * t.batch_size) as f64
                / elapsed.max(1e-9),
        });
        let finished = state.step == t.steps;
        if checkpoints.due(state.step, finished) {
            let mut all = shallow_named(&params);
            all.extend(ema.named("ema."));
            all.extend(opt.named_state("opt."));
            checkpoint::save(&ckpt_dir, state.step, &state, &all)?;
        }
        if (t.sample_every > 0 && state.step.is_multiple_of(t.sample_every)) || finished {
            let grid = run
                .out
                .join("samples")
                .join(format!("step-{:07}.png", state.step));
            let labelled = !mix.class_names().is_empty();
            sample_grid(
                &model,
                &ema,
                &schedule,
                [c, h, w],
                null,
                labelled,
                &grid,
                run.device,
            )?;
        }
    }
    // the shipped model holds the EMA weights
    let model_dir = run.out.join("model");
    let final_model = UNet::new(cfg.model.clone(), run.device)?;
    ema.copy_to(&final_model.vs)?;
    final_model.save(&model_dir)?;
    let mut classes = mix.class_names();
    if classes.is_empty() {
        classes = (0..null).map(|c| c.to_string()).collect();
    }
    crate::synth::save_extras(&model_dir, &cfg.schedule.scheduler_config()?, &classes)?;
    super::plot::write_loss_plot(&state.losses, &run.out.join("loss.png"))?;
    let report = serde_json::json!({
        "command": "pretrain",
        "steps": state.step,
        "batch_size": t.batch_size,
        "final_loss_mean_last_100": mean_tail(&state.losses, 100),
        "training_seconds": state.seconds,
        "parameters": params.iter().map(|(_, p)| p.numel()).sum::<usize>(),
        "threads": tch::get_num_threads(),
        "config": cfg,
    });
    crate::fsutil::write_atomic(
        &run.out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(model_dir)
}

/// Loads the weights of the model folder `init` into `model`, refusing a folder whose U-Net
/// config differs from the run's `[model]`.
fn load_init(model: &UNet, init: &Path) -> Result<()> {
    let file = init.join(crate::nn::unet::CONFIG_FILE);
    let theirs = crate::nn::unet::UNetConfig::load(&file)
        .with_context(|| format!("train.init = '{}'", init.display()))?;
    ensure!(
        theirs.to_json()? == model.config().to_json()?,
        "train.init = '{}': its {} describes another model than the config's [model]; the \
         run can start only from a model of the same architecture",
        init.display(),
        file.display()
    );
    model
        .load_weights(&init.join(crate::nn::unet::WEIGHTS_FILE))
        .with_context(|| format!("train.init = '{}'", init.display()))
}

/// The most class rows a pretraining sample grid shows.
pub const GRID_CLASSES: i64 = 10;

fn mean_tail(v: &[f32], n: usize) -> f64 {
    let tail = &v[v.len().saturating_sub(n)..];
    tail.iter().map(|&x| x as f64).sum::<f64>() / tail.len().max(1) as f64
}

/// Samples a grid with the EMA weights (DDPM-50) to a PNG, 10 images a row: one row per class
/// (at most [`GRID_CLASSES`], evenly spaced over the labels) with guidance 3 when the model
/// learns labels, else as many rows of null-class (unconditional) images, since the class
/// embeddings of a model pretrained on unlabelled data are untrained.
#[allow(clippy::too_many_arguments)]
fn sample_grid(
    model: &UNet,
    ema: &Ema,
    schedule: &NoiseSchedule,
    shape: [i64; 3],
    null: i64,
    labelled: bool,
    path: &Path,
    device: Device,
) -> Result<()> {
    let eval = UNet::new(model.config().clone(), device)?;
    ema.copy_to(&eval.vs)?;
    let per_class = 10;
    let rows: Vec<i64> = if null <= GRID_CLASSES {
        (0..null).collect()
    } else {
        (0..GRID_CLASSES).map(|k| k * null / GRID_CLASSES).collect()
    };
    let labels: Vec<i64> = rows
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, per_class))
        .collect();
    let (conditions, guidance) = if labelled {
        (labels.clone(), 3.0)
    } else {
        (vec![null; labels.len()], 1.0)
    };
    let images = sample(
        &eval,
        schedule,
        &conditions,
        shape,
        &SamplerConfig::ddpm(50, guidance),
        0,
        device,
    )?;
    let ds = crate::data::Dataset::from_unit_tensor(
        &images,
        labels
            .iter()
            .map(|l| rows.iter().position(|r| r == l).expect("a row's label") as u8)
            .collect(),
        rows.iter().map(|c| c.to_string()).collect(),
    )?;
    crate::data::grid::write_grid(&ds, per_class, 2, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{DataOrder, LrSchedule, Precision, PretrainSettings};

    fn settings(lr_schedule: LrSchedule) -> PretrainSettings {
        PretrainSettings {
            steps: 110,
            batch_size: 1,
            lr: 1e-3,
            warmup_steps: 10,
            lr_schedule,
            init: None,
            weight_decay: 0.0,
            grad_clip: 0.0,
            ema_decay: 0.999,
            class_dropout: 0.1,
            seed: 0,
            checkpoint_every: 1,
            checkpoint_seconds: 0.0,
            sample_every: 0,
            precision: Precision::Float32,
        }
    }

    #[test]
    fn learning_rate_warms_up_then_follows_its_schedule() {
        // tolerance 1e-15: a few float operations on numbers near 1e-3
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        let constant = settings(LrSchedule::Constant);
        let cosine = settings(LrSchedule::Cosine);
        for s in [&constant, &cosine] {
            assert!(close(s.lr_at(0), 1e-4));
            assert!(close(s.lr_at(9), 1e-3));
        }
        assert!(close(constant.lr_at(10), 1e-3));
        assert!(close(constant.lr_at(109), 1e-3));
        // the cosine starts at the peak, is at half of it midway, and ends at zero
        assert!(close(cosine.lr_at(10), 1e-3));
        assert!(close(cosine.lr_at(60), 5e-4));
        assert!(cosine.lr_at(109) < 1e-6 && cosine.lr_at(109) > 0.0);
        assert!(close(cosine.lr_at(110), 0.0));
    }

    #[test]
    fn data_order_is_a_function_of_seed_and_step() {
        let (len, batch) = (10, 4);
        let mut a = DataOrder::new(3, len);
        let seen: Vec<usize> = (0..5).flat_map(|s| a.batch(s, batch)).collect();
        // each pass is a permutation of the images, and passes differ
        for pass in seen.chunks(len) {
            let mut p = pass.to_vec();
            p.sort();
            assert_eq!(p, (0..len).collect::<Vec<_>>());
        }
        assert_ne!(seen[..len], seen[len..2 * len]);
        // a fresh order (a resumed run) asked for step 3 continues where step 2 ended
        let mut resumed = DataOrder::new(3, len);
        assert_eq!(resumed.batch(3, batch), seen[12..16]);
        assert_ne!(DataOrder::new(4, len).batch(0, batch), seen[..4]);
    }
}
