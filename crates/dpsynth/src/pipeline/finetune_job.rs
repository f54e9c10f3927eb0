//! One DP fine-tuning job as `dpsynth finetune`, `run` and `audit` run it: the library's
//! [`finetune`] plus the model's grid.png and report.json in the job's folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::Device;

use super::Event;
use crate::data::{self, grid, Dataset};
use crate::diffusion::sampler::SamplerConfig;
use crate::fsutil::write_atomic;
use crate::nn::unet::{UNetConfig, CONFIG_FILE};
use crate::synth::{generate, load_model_dir};
use crate::train::class_table;
use crate::train::finetune::{finetune, FinetuneConfig, Finetuned};

/// One DP fine-tuning job, as `finetune`, `run` and `audit` hand it to [`run_finetune`].
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
}

impl FinetuneJob {
    /// A fresh job (no resume); reads the class-init table `class_init_file` into the config.
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
        })
    }
}

/// How `ds` will be converted to the shape of the model in `base` (`None`: it has that shape,
/// or the model's config cannot be read, which fine-tuning then reports).
pub fn conversion_of(ds: &Dataset, base: &Path) -> Option<String> {
    let cfg = UNetConfig::load(&base.join(CONFIG_FILE)).ok()?;
    let [c, h, w] = cfg.sample_shape()?;
    let to = [c as usize, h as usize, w as usize];
    data::convert::describe([ds.channels, ds.height, ds.width], to)
}

/// What reports say of where the class rows started.
pub const CLASS_ROWS_NOTE: &str = "class rows start from the base's rows of the same class, of \
     related public classes (class_init) or of the null class: this reads only the base and \
     public class names, so it costs no privacy";

/// Runs the fine-tuning of `job` on `train` (the private set `job.data` names), writes
/// report.json and grid.png in `job.out`, and returns the record for callers (`run`, `audit`).
/// Progress comes as [`Event::Converted`], the steps between [`Event::Begin`] and
/// [`Event::End`], and [`Event::Finetuned`] once the report is written.
pub fn run_finetune(
    job: &FinetuneJob,
    train: &Dataset,
    device: Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<Finetuned> {
    let cfg = &job.config;
    if let Some(how) = conversion_of(train, &job.base) {
        on_event(Event::Converted {
            spec: &job.data,
            how: &how,
        });
    }
    on_event(Event::Begin {
        unit: "steps",
        total: 0,
    });
    let base = &job.base;
    let done = finetune(base, train, cfg, &job.out, job.resume, device, &mut |s| {
        on_event(Event::Step(s))
    })
    .with_context(|| match &job.class_init_file {
        Some(table) => format!(
            "fine-tuning {} on {} with class-init table {}",
            base.display(),
            job.data,
            table.display()
        ),
        None => format!("fine-tuning {} on {}", base.display(), job.data),
    })?;
    on_event(Event::End);
    let model = load_model_dir(&done.model_dir, device)?;
    let grid_ds = generate(&model, 10, &SamplerConfig::ddpm(50, 1.0), 0, &mut |_| {})?;
    grid::write_grid(&grid_ds, 10, 2, &job.out.join("grid.png"))?;
    let report = serde_json::json!({
        "command": "finetune",
        "base": job.base,
        "data": job.data,
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
    let path = job.out.join("report.json");
    write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    on_event(Event::Finetuned { job, done: &done });
    Ok(done)
}
