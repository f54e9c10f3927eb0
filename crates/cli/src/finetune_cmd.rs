//! `dpsynth finetune`: DP fine-tuning of a pretrained model on private data.

use std::path::{Path, PathBuf};

use crate::progress::{PrivateLog, Reporter};
use anyhow::Result;
use clap::Args;
use dpsynth::data;
use dpsynth::pipeline::finetune_job::{run_finetune, FinetuneJob};
use dpsynth::train::finetune::{FinetuneConfig, Mode};
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
            c.clip = clip;
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
            ..job
        })
    }
}

/// Runs `dpsynth finetune`.
pub fn run(a: FinetuneArgs, data_dir: &Path, device: Device) -> Result<()> {
    let job = a.job()?;
    let train = data::load(&job.data, data_dir)?;
    let mut reporter = Reporter::new(a.private_log);
    run_finetune(&job, &train, device, &mut |e| reporter.on(e)).map(|_| ())
}
