//! `dpsynth finetune`: DP fine-tuning of a pretrained model on private data.

use std::path::{Path, PathBuf};

use crate::progress::{dp_step_message, PrivateLog, Progress};
use anyhow::{Context, Result};
use clap::Args;
use dpsynth::data;
use dpsynth::data::grid;
use dpsynth::diffusion::sampler::SamplerConfig;
use dpsynth::fsutil::write_atomic;
use dpsynth::nn::unet::UNetConfig;
use dpsynth::synth::{generate, load_model_dir};
use dpsynth::train::class_table;
use dpsynth::train::finetune::{finetune, FinetuneConfig, Finetuned, Mode};
use privacy::Accountant;
use tch::Device;

/// What DP fine-tuning trains: the base model, the mode and its adapters (shared by `finetune`
/// and `clip-scan`, which must measure exactly what a run will train).
#[derive(Args, Clone)]
pub struct TrainableArgs {
    /// Base model folder (e.g. models/mnist-base): a diffusers UNet2DModel, class-conditional or
    /// unconditional (then a zero-initialised class embedding is added and trained).
    #[arg(long, default_value = "models/mnist-base")]
    pub base: PathBuf,
    /// loda, lora, attention (DP-LDM), full (DP-Diffusion) or scratch (DPDM).
    #[arg(long, default_value = "loda")]
    pub mode: Mode,
    /// Adapter rank r (loda, lora).
    #[arg(long, default_value_t = 4)]
    pub rank: i64,
    /// Adapter scale α (update × α / r); default r.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Also put adapters on attention projections.
    #[arg(long)]
    pub adapt_attention: bool,
    /// Also put adapters on the time-embedding linears.
    #[arg(long)]
    pub adapt_time: bool,
    /// Keep the class embedding frozen in adapter and attention modes (refused when private
    /// classes must be learned: classes the base lacks, or any class of an unconditional base).
    #[arg(long)]
    pub freeze_class_embedding: bool,
    /// Noise multiplicity K: (timestep, noise) draws per example, averaged before clipping.
    #[arg(long, default_value_t = 1)]
    pub noise_multiplicity: i64,
}

impl TrainableArgs {
    /// The library defaults for `epsilon` and `delta` with these flags applied.
    pub fn config(&self, epsilon: f64, delta: f64) -> FinetuneConfig {
        let mut c = FinetuneConfig::new(self.mode, epsilon, delta);
        c.adapter.rank = self.rank;
        c.adapter.alpha = self.alpha.unwrap_or(self.rank as f64);
        c.adapter.attention = self.adapt_attention;
        c.adapter.time_embedding = self.adapt_time;
        c.train_class_embedding = !self.freeze_class_embedding;
        c.noise_multiplicity = self.noise_multiplicity;
        c
    }
}

#[derive(Args, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub trainable: TrainableArgs,
    /// Private training data (dataset spec).
    #[arg(long, default_value = "mnist:train")]
    pub data: String,
    /// Target ε.
    #[arg(long)]
    pub epsilon: f64,
    /// Target δ.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Expected logical batch size [default: the library's, 1000].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Micro-batch size (memory bound) [default: the library's, 250].
    #[arg(long)]
    pub physical_batch: Option<usize>,
    /// Passes over the private data [default: the library's, 1].
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Adam learning rate [default by mode: 3e-2 loda, chosen on a public stand-in task; 2e-3
    /// the other modes, not tuned; see docs/RESULTS.md].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam learning rate of the class embedding (default: --lr). New classes start from the
    /// null class and need a larger step than the adapters to separate.
    #[arg(long)]
    pub class_lr: Option<f64>,
    /// Per-example clipping norm C (default by mode: 0.003 loda and lora, 0.0005 attention, 0.03
    /// full, 1 scratch, measured on the shipped MNIST base). For another base, measure the norms
    /// with `dpsynth clip-scan` on public images first: a C far above them adds noise and no
    /// signal.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Accountant: pld (default) or rdp.
    #[arg(long, default_value = "pld")]
    pub accountant: Accountant,
    /// Class-init table (TOML: `cat = ["tabby", "Persian cat"]`): each private class the base
    /// does not have starts from the mean embedding of the listed public classes of the base
    /// instead of the null class. Reads only public names: no privacy cost.
    #[arg(long)]
    pub class_init: Option<PathBuf>,
    /// Accept a δ at or above 1/n of the private set (experiments only: it guarantees nothing).
    #[arg(long)]
    pub allow_large_delta: bool,
    /// Show the training loss in progress lines: a statistic of the private data with no noise,
    /// outside the privacy guarantee (off: step, epsilon and time only).
    #[arg(long, value_enum, default_value = "off")]
    pub private_log: PrivateLog,
    /// Seed: repeatable, but the privacy noise is then NOT cryptographically secure.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output folder: model/ (loadable by `sample`), checkpoint/, grid.png, report.json.
    #[arg(long, default_value = "out/finetune")]
    pub out: PathBuf,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = dpsynth::train::finetune::DEFAULT_CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    /// Longest training time between checkpoints, in seconds (0: by step count only).
    #[arg(long, default_value_t = dpsynth::train::checkpoint::DEFAULT_CHECKPOINT_SECONDS)]
    pub checkpoint_seconds: f64,
    /// Continue from the checkpoint in --out: the privacy ledger and a seeded run's sampling and
    /// noise streams continue with it. Settings must match it (only --physical-batch may change).
    #[arg(long)]
    pub resume: bool,
}

impl FinetuneArgs {
    /// The job these flags describe (reads the class-init table).
    pub fn job(&self) -> Result<FinetuneJob> {
        let mut c = self.trainable.config(self.epsilon, self.delta);
        c.accountant = self.accountant;
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.batch_size = self.batch.unwrap_or(c.batch_size);
        c.physical_batch = self.physical_batch.unwrap_or(c.physical_batch);
        c.lr = self.lr.unwrap_or(c.lr);
        c.class_lr = self.class_lr;
        if let Some(clip) = self.clip {
            c.max_grad_norm = clip;
        }
        c.seed = self.seed;
        c.checkpoint_every = self.checkpoint_every;
        c.checkpoint_seconds = self.checkpoint_seconds;
        c.allow_large_delta = self.allow_large_delta;
        FinetuneJob::new(
            self.trainable.base.clone(),
            self.data.clone(),
            c,
            self.class_init.clone(),
            self.out.clone(),
        )
        .map(|job| FinetuneJob {
            resume: self.resume,
            private_log: self.private_log,
            ..job
        })
    }
}

/// One DP fine-tuning job, as `finetune` and `run` hand it to [`run_finetune`].
pub struct FinetuneJob {
    /// Base model folder.
    pub base: PathBuf,
    /// Private training data (dataset spec).
    pub data: String,
    /// The library settings (with the class-init table read in).
    pub config: FinetuneConfig,
    /// The file the class-init table came from, for messages.
    pub class_init_file: Option<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Continue the checkpoint in `out`.
    pub resume: bool,
    /// Whether progress lines show the (non-private) training loss.
    pub private_log: PrivateLog,
}

impl FinetuneJob {
    /// A fresh job (no resume, private log off); reads the class-init table `class_init_file`
    /// into the config.
    pub fn new(
        base: PathBuf,
        data: String,
        mut config: FinetuneConfig,
        class_init_file: Option<PathBuf>,
        out: PathBuf,
    ) -> Result<Self> {
        config.class_init = class_init_file
            .as_deref()
            .map(class_table::load_class_init)
            .transpose()?;
        Ok(Self {
            base,
            data,
            config,
            class_init_file,
            out,
            resume: false,
            private_log: PrivateLog::Off,
        })
    }
}

/// How `ds` will be converted to the shape of the model in `base` (`None`: it has that shape,
/// or the model's config cannot be read, which fine-tuning then reports).
pub fn conversion_of(ds: &data::Dataset, base: &Path) -> Option<String> {
    let cfg = UNetConfig::load(&base.join(dpsynth::nn::unet::CONFIG_FILE)).ok()?;
    let [c, h, w] = cfg.sample_shape()?;
    let to = [c as usize, h as usize, w as usize];
    data::convert::describe([ds.channels, ds.height, ds.width], to)
}

/// What reports say of where the class rows started.
pub const CLASS_ROWS_NOTE: &str = "class rows start from the base's rows of the same class, of \
     related public classes (class_init) or of the null class: this reads only the base and \
     public class names, so it costs no privacy";

/// Runs the fine-tuning of `job` on `train` (the private set `job.data` names) with a progress
/// bar and writes report.json and grid.png; returns the record for callers (`run`).
pub fn run_finetune(a: &FinetuneJob, train: &data::Dataset, device: Device) -> Result<Finetuned> {
    let cfg = &a.config;
    if let Some(what) = conversion_of(train, &a.base) {
        eprintln!("{}: {what}", a.data);
    }
    let bar = Progress::new(0, "steps");
    let mut eps = 0.0;
    let base = &a.base;
    let done = finetune(base, train, cfg, &a.out, a.resume, device, &mut |s| {
        bar.set_length(s.total_steps);
        bar.set_position(s.step);
        if let Some(e) = s.epsilon {
            eps = e;
        }
        bar.set_message(dp_step_message(s.loss, eps, a.private_log));
    })
    .with_context(|| match &a.class_init_file {
        Some(table) => format!(
            "fine-tuning {} on {} with class-init table {}",
            base.display(),
            a.data,
            table.display()
        ),
        None => format!("fine-tuning {} on {}", base.display(), a.data),
    })?;
    bar.finish();
    let model = load_model_dir(&done.model_dir, device)?;
    let grid_ds = generate(&model, 10, &SamplerConfig::ddpm(50, 1.0), 0, &mut |_| {})?;
    grid::write_grid(&grid_ds, 10, 2, &a.out.join("grid.png"))?;
    let report = serde_json::json!({
        "command": "finetune",
        "base": a.base,
        "data": a.data,
        "mode": cfg.mode.to_string(),
        "trainable_parameters": done.trainable_parameters,
        "base_parameters": done.base_parameters,
        "epsilon_spent": done.epsilon,
        "delta": cfg.delta,
        "accountant": cfg.accountant.to_string(),
        "noise_multiplier": done.state.noise_multiplier,
        "sample_rate": done.state.sample_rate,
        "steps": done.state.step,
        "ledger": done.state.ledger,
        "secure_noise": done.secure_noise,
        "noise_note": if done.secure_noise { "noise from OS-seeded ChaCha20" } else { "seeded run: noise is repeatable and NOT private" },
        "training_seconds": done.state.seconds,
        "class_rows": done.class_rows,
        "conversion": done.conversion,
        "class_rows_note": CLASS_ROWS_NOTE,
        "settings": cfg,
    });
    let path = a.out.join("report.json");
    write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
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
        a.out.join("grid.png").display()
    );
    Ok(done)
}

/// Runs `dpsynth finetune`.
pub fn run(a: FinetuneArgs, data_dir: &Path, device: Device) -> Result<()> {
    let job = a.job()?;
    let train = data::load(&job.data, data_dir)?;
    run_finetune(&job, &train, device).map(|_| ())
}
