//! One DP fine-tuning job as `dpsynth finetune`, `run` and `audit` run it: the library's
//! [`finetune`] plus the model's grid.png and report.json in the job's folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::Device;

use super::{Event, GRID_PER_ROW, GRID_SCALE};
use crate::data::{grid, Dataset};
use crate::diffusion::sampler::SamplerConfig;
use crate::fsutil::write_atomic;
use crate::synth::{generate, load_model_dir, ModelDir};
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

/// Images per class in the preview grid (grid.png) written beside a fine-tuned model.
pub const PREVIEW_PER_CLASS: usize = 10;

/// Denoising steps of the preview grid's sampler (DDPM).
pub const PREVIEW_STEPS: usize = 50;

/// Classifier-free guidance scale of the preview grid's sampler (1: the conditional model
/// alone).
pub const PREVIEW_GUIDANCE: f64 = 1.0;

/// Seed of the preview grid's sampling noise.
pub const PREVIEW_SEED: u64 = 0;

/// What [`run_finetune`] produced: the library's record, and the fine-tuned model folder as
/// loaded from disk once for the preview grid, for a run to sample from without loading it
/// again.
pub struct FinetuneOutcome {
    /// The fine-tuning's record.
    pub done: Finetuned,
    /// The model folder `done.model_dir`, loaded.
    pub model: ModelDir,
}

/// What reports say of where the class rows started.
pub const CLASS_ROWS_NOTE: &str = "class rows start from the base's rows of the same class, of \
     related public classes (class_init) or of the null class: this reads only the base and \
     public class names, so it costs no privacy";

/// Runs the fine-tuning of `job` on `train` (the private set `job.data` names), writes
/// report.json and grid.png in `job.out`, and returns the record and the loaded model for
/// callers (`run`, `audit`). Progress comes as the steps between [`Event::Begin`] and
/// [`Event::End`], then [`Event::Converted`] when the private images had to be converted to the
/// model's shape (fine-tuning says how once it has loaded the base), and [`Event::Finetuned`]
/// once the report is written.
pub fn run_finetune(
    job: &FinetuneJob,
    train: &Dataset,
    device: Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<FinetuneOutcome> {
    let cfg = &job.config;
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
    if let Some(how) = &done.conversion {
        on_event(Event::Converted {
            spec: &job.data,
            how,
        });
    }
    let model = load_model_dir(&done.model_dir, device)?;
    let sampler = SamplerConfig::ddpm(PREVIEW_STEPS, PREVIEW_GUIDANCE);
    let preview = generate(
        &model,
        PREVIEW_PER_CLASS,
        &sampler,
        PREVIEW_SEED,
        &mut |_| {},
    )?;
    grid::write_grid(
        &preview,
        GRID_PER_ROW,
        GRID_SCALE,
        &job.out.join("grid.png"),
    )?;
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
    Ok(FinetuneOutcome { done, model })
}
