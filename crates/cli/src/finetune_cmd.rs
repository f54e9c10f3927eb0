//! `dpsynth finetune`: DP fine-tuning of a pretrained model on private data.

use std::path::{Path, PathBuf};

use crate::progress::{PrivateLog, Reporter};
use anyhow::Result;
use clap::Args;
use dpsynth::data;
use dpsynth::pipeline::finetune_job::{run_finetune, FinetuneJob};
use dpsynth::train::finetune::{
    FinetuneConfig, FinetuneOverrides, Mode, DEFAULT_BATCH, DEFAULT_EPOCHS,
    DEFAULT_NOISE_MULTIPLICITY, DEFAULT_PHYSICAL_BATCH, DEFAULT_RANK,
};
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
    #[arg(long, help = format!("Adapter rank r (loda, lora) [default: {DEFAULT_RANK}]"))]
    pub rank: Option<i64>,
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
    #[arg(long, help = format!("Noise multiplicity K: (timestep, noise) draws per example, \
        averaged before clipping [default: {DEFAULT_NOISE_MULTIPLICITY}]"))]
    pub noise_multiplicity: Option<i64>,
}

/// `value` for each mode, as help texts list a mode's default ("0.003 loda, 0.003 lora, ...").
fn by_mode(value: fn(Mode) -> f64) -> String {
    let each = Mode::ALL.map(|m| format!("{} {m}", value(m)));
    each.join(", ")
}

impl TrainableArgs {
    /// The library defaults for the mode, `epsilon` and `delta` with these flags and the
    /// caller's `more` applied ([`FinetuneConfig::with_overrides`]: α follows the rank unless
    /// --alpha is given).
    pub fn config(&self, epsilon: f64, delta: f64, more: FinetuneOverrides) -> FinetuneConfig {
        let overrides = FinetuneOverrides {
            rank: self.rank,
            alpha: self.alpha,
            noise_multiplicity: self.noise_multiplicity,
            ..more
        };
        let mut c = FinetuneConfig::new(self.mode, epsilon, delta).with_overrides(&overrides);
        c.adapter.attention = self.adapt_attention;
        c.adapter.time_embedding = self.adapt_time;
        c.train_class_embedding = !self.freeze_class_embedding;
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
    #[arg(long, help = format!("Expected logical batch size [default: {DEFAULT_BATCH}]"))]
    pub batch: Option<usize>,
    #[arg(long, help = format!("Micro-batch size (memory bound) [default: \
        {DEFAULT_PHYSICAL_BATCH}]"))]
    pub physical_batch: Option<usize>,
    #[arg(long, help = format!("Passes over the private data [default: {DEFAULT_EPOCHS}]"))]
    pub epochs: Option<f64>,
    #[arg(long, help = format!("Adam learning rate [default by mode: {}; loda's chosen on a \
        public stand-in task, the others' not tuned; see docs/SELECTION.md]",
        by_mode(Mode::default_lr)))]
    pub lr: Option<f64>,
    /// Adam learning rate of the class embedding (default: --lr). New classes start from the
    /// null class and need a larger step than the adapters to separate.
    #[arg(long)]
    pub class_lr: Option<f64>,
    #[arg(long, help = format!("Per-example clipping norm C (default by mode: {}, measured on \
        the shipped MNIST base). For another base, measure the norms with `dpsynth clip-scan` on \
        public images first: a C far above them adds noise and no signal",
        by_mode(Mode::default_clip)))]
    pub clip: Option<f64>,
    /// Accountant: pld (default) or rdp.
    #[arg(long, default_value = "pld")]
    pub accountant: Accountant,
    /// Class-init table (TOML: `cat = ["tabby", "Persian cat"]`): each private class the base
    /// does not have starts from the mean embedding of the listed public classes of the base
    /// instead of the null class. Reads only public names: no privacy cost.
    #[arg(long)]
    pub class_init: Option<PathBuf>,
    /// How a class the class-init table gives several public classes starts: mean (one row,
    /// their mean), scaled_mean (their mean rescaled to their rows' mean norm) or each (one row
    /// per public class, each its own row; the class's images are trained and sampled across
    /// them).
    #[arg(long, default_value = "mean")]
    pub class_init_rows: dpsynth::train::class_table::InitRows,
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
        let overrides = FinetuneOverrides {
            epochs: self.epochs,
            batch_size: self.batch,
            physical_batch: self.physical_batch,
            lr: self.lr,
            class_lr: self.class_lr,
            clip: self.clip,
            class_init_rows: self.class_init_rows,
            allow_large_delta: self.allow_large_delta,
            ..FinetuneOverrides::default()
        };
        let mut c = self.trainable.config(self.epsilon, self.delta, overrides);
        c.accountant = self.accountant;
        c.seed = self.seed;
        c.checkpoint_every = self.checkpoint_every;
        c.checkpoint_seconds = self.checkpoint_seconds;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use dpsynth::pipeline::config::FinetuneSection;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FinetuneArgs,
    }

    fn config(flags: &str) -> FinetuneConfig {
        let argv = format!("finetune --epsilon 3 --delta 1e-6 {flags}");
        Cli::parse_from(argv.split_whitespace())
            .args
            .job()
            .unwrap()
            .config
    }

    fn json(c: &FinetuneConfig) -> serde_json::Value {
        serde_json::to_value(c).unwrap()
    }

    /// With no flags the settings are the library's for the mode; a flag and the run config's
    /// key of the same name give the same settings (one overlay, α = r unless --alpha).
    #[test]
    fn flags_overlay_the_library_defaults_as_run_configs_do() {
        for mode in Mode::ALL {
            let lib = FinetuneConfig::new(mode, 3.0, 1e-6);
            assert_eq!(
                json(&config(&format!("--mode {mode}"))),
                json(&lib),
                "{mode}"
            );
        }
        let flags = config(
            "--mode lora --rank 8 --epochs 2.5 --batch 64 --physical-batch 16 --lr 0.5 \
             --class-lr 0.25 --clip 0.7 --noise-multiplicity 3 --allow-large-delta",
        );
        let section: FinetuneSection = toml::from_str(
            "base = \"models/mnist-base\"\nmode = \"lora\"\nepsilon = 3.0\ndelta = 1e-6\n\
             rank = 8\nepochs = 2.5\nbatch = 64\nphysical_batch = 16\nlr = 0.5\n\
             class_lr = 0.25\nclip = 0.7\nnoise_multiplicity = 3\nallow_large_delta = true",
        )
        .unwrap();
        assert_eq!(json(&flags), json(&section.finetune_config().unwrap()));
        assert_eq!((flags.adapter.rank, flags.adapter.alpha), (8, 8.0));
        let alpha = config("--rank 8 --alpha 2");
        assert_eq!((alpha.adapter.rank, alpha.adapter.alpha), (8, 2.0));
        let alpha = config("--alpha 2");
        assert_eq!(
            (alpha.adapter.rank, alpha.adapter.alpha),
            (DEFAULT_RANK, 2.0)
        );
    }
}
