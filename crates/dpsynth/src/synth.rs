//! Model folders and synthetic data: a diffusers-style folder (U-Net config and weights, noise
//! schedule, class names) and the sampling of a labelled synthetic dataset from it.
//!
//! Besides diffusers' `config.json` and `diffusion_pytorch_model.safetensors`, a folder holds
//! `scheduler_config.json` (diffusers' scheduler keys `beta_schedule`, `beta_start`, `beta_end`,
//! `num_train_timesteps`) and `classes.json` (a JSON array of class names, dpsynth's own). A
//! folder fine-tuned with adapters adds `adapter_config.json` and `adapter_model.safetensors`
//! (their format is documented with `dpsynth export`, which keeps them for LoDA). A folder whose
//! classes have several class-embedding rows each (`class_init_rows = "each"`) adds
//! `class_rows.json`: a JSON array with, for each non-null row, the index in `classes.json` of
//! the class it draws. Without it, row i is class i.

pub mod resume;

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::Dataset;
use crate::diffusion::heldout::{heldout_loss, Conditioning, HeldoutConfig, HeldoutLoss};
use crate::diffusion::precision::Precision;
use crate::diffusion::sampler::{sample_with_progress, SamplerConfig};
use crate::diffusion::{BetaSchedule, NoiseSchedule};
use crate::fsutil::write_atomic;
use crate::nn::unet::UNet;

/// File name of the scheduler config in a model folder (as in diffusers pipelines).
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// File name of the class names in a model folder.
pub const CLASSES_FILE: &str = "classes.json";
/// File name of the adapter weights in a fine-tuned model folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// File name of the adapter config in a fine-tuned model folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of the row → class table of a folder whose classes have several embedding rows.
pub const CLASS_ROWS_FILE: &str = "class_rows.json";

/// The scheduler keys dpsynth reads and writes (a subset of diffusers' `DDPMScheduler` config).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// `linear` or `squaredcos_cap_v2`.
    pub beta_schedule: String,
    /// β at t = 0 (linear schedule).
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// β at t = T − 1 (linear schedule).
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// T.
    pub num_train_timesteps: usize,
}

fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}

impl SchedulerConfig {
    /// The config of `kind` over `t` steps.
    pub fn of(kind: BetaSchedule, t: usize) -> Self {
        match kind {
            BetaSchedule::Linear { start, end } => Self {
                beta_schedule: "linear".into(),
                beta_start: start,
                beta_end: end,
                num_train_timesteps: t,
            },
            BetaSchedule::Cosine => Self {
                beta_schedule: "squaredcos_cap_v2".into(),
                beta_start: default_beta_start(),
                beta_end: default_beta_end(),
                num_train_timesteps: t,
            },
        }
    }

    /// Builds the schedule.
    pub fn build(&self) -> Result<NoiseSchedule> {
        let kind = match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear {
                start: self.beta_start,
                end: self.beta_end,
            },
            "squaredcos_cap_v2" => BetaSchedule::Cosine,
            other => bail!("beta_schedule '{other}': expected linear or squaredcos_cap_v2"),
        };
        NoiseSchedule::new(kind, self.num_train_timesteps)
    }
}

/// A loaded model folder.
pub struct ModelDir {
    /// The U-Net.
    pub unet: UNet,
    /// Its noise schedule.
    pub schedule: NoiseSchedule,
    /// The scheduler settings the schedule came from.
    pub scheduler: SchedulerConfig,
    /// Class names (none for an unconditional base).
    pub classes: Vec<String>,
    /// The class (index into `classes`) each non-null class-embedding row draws: `0, 1, ...`
    /// unless the folder's `class_rows.json` gives a class several rows.
    pub row_classes: Vec<usize>,
    /// The adapters attached to the U-Net, if the folder carries any.
    pub adapter: Option<crate::nn::adapter::AdapterConfig>,
    /// The store holding the adapters' weights (kept alive with the model).
    pub adapter_store: Option<tch::nn::VarStore>,
}

/// Writes the scheduler config and class names beside a saved U-Net.
pub fn save_extras(dir: &Path, scheduler: &SchedulerConfig, classes: &[String]) -> Result<()> {
    for (file, json) in [
        (SCHEDULER_FILE, serde_json::to_string_pretty(scheduler)?),
        (CLASSES_FILE, serde_json::to_string_pretty(classes)?),
    ] {
        let p = dir.join(file);
        write_atomic(&p, json.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

impl ModelDir {
    /// Converts the weights of the U-Net and of its adapters to `precision`, in place, for
    /// sampling with it ([`SamplerConfig::precision`]). Converting back to float32 does not
    /// restore the bits bfloat16 dropped, so save a model before, not after.
    pub fn set_precision(&mut self, precision: Precision) {
        let stores = std::iter::once(&mut self.unet.vs).chain(self.adapter_store.as_mut());
        for store in stores {
            precision.convert(store);
        }
    }

    /// Readies this model for sampling in `precision`. LoRA adapters are merged into the base
    /// weights first ([`crate::nn::adapter::merge_lora`]): they are linear, so the U-Net computes
    /// what it did, at the base's cost. LoDA stays attached. Then the weights are converted
    /// ([`ModelDir::set_precision`]). Sample from a model after this, never save it.
    pub fn prepare_sampling(&mut self, precision: Precision) -> Result<()> {
        let lora = crate::nn::adapter::AdapterKind::Lora;
        if self.adapter.as_ref().is_some_and(|a| a.kind == lora) {
            crate::nn::adapter::merge_lora(&mut self.unet)?;
            self.adapter = None;
            self.adapter_store = None;
        }
        self.set_precision(precision);
        Ok(())
    }

    /// Writes this model to `dir` ([`save_model_dir`]), with `adapters` when it carries some.
    pub fn save(
        &self,
        dir: &Path,
        adapters: Option<(&crate::nn::adapter::AdapterConfig, &tch::nn::VarStore)>,
    ) -> Result<()> {
        save_model_dir(
            dir,
            &self.unet,
            &self.scheduler,
            &self.classes,
            &self.row_classes,
            adapters,
        )
    }
}

/// Writes a model folder: the U-Net (`config.json`, `diffusion_pytorch_model.safetensors`), its
/// scheduler and class names, `class_rows.json` when `row_classes` gives a class several rows,
/// and with `adapters` their weights (`adapter_model.safetensors`) and config
/// (`adapter_config.json`, listing the adapted layers). Each file atomically.
pub fn save_model_dir(
    dir: &Path,
    unet: &UNet,
    scheduler: &SchedulerConfig,
    classes: &[String],
    row_classes: &[usize],
    adapters: Option<(&crate::nn::adapter::AdapterConfig, &tch::nn::VarStore)>,
) -> Result<()> {
    unet.save(dir)?;
    save_extras(dir, scheduler, classes)?;
    let rows_path = dir.join(CLASS_ROWS_FILE);
    if is_identity(row_classes) {
        if rows_path.exists() {
            std::fs::remove_file(&rows_path)
                .with_context(|| format!("removing {}", rows_path.display()))?;
        }
    } else {
        write_atomic(&rows_path, serde_json::to_string(row_classes)?.as_bytes())
            .with_context(|| format!("writing {}", rows_path.display()))?;
    }
    if let Some((acfg, store)) = adapters {
        crate::nn::unet::weights::save_safetensors(store, &dir.join(ADAPTER_WEIGHTS))?;
        let acfg = crate::nn::adapter::AdapterConfig {
            layers: crate::nn::adapter::layer_names(store),
            ..acfg.clone()
        };
        let p = dir.join(ADAPTER_CONFIG);
        write_atomic(&p, serde_json::to_string_pretty(&acfg)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Loads a class-conditional model folder (what `sample`, `loss`, `export` and `audit` read).
/// A folder without `scheduler_config.json` gets the DDPM linear schedule over 1000 steps; one
/// without `classes.json` gets classes named `0`, `1`, ...; one with `adapter_config.json` gets
/// its adapters attached and loaded from `adapter_model.safetensors`. An unconditional
/// `UNet2DModel` (no `num_class_embeds`) is refused: it has no null class to guide with and no
/// class to sample; fine-tune it first, which gives it a class table ([`load_base_dir`]).
pub fn load_model_dir(dir: &Path, device: Device) -> Result<ModelDir> {
    let model = load_base_dir(dir, device)?;
    if model.unet.null_class().is_none() {
        bail!(
            "{}: the model is unconditional (no num_class_embeds): it has no classes to sample or \
             score; `dpsynth finetune --base` (and `clip-scan`) accept it and add a class \
             embedding for the private classes",
            dir.display()
        );
    }
    Ok(model)
}

/// Loads a model folder as [`load_model_dir`] does, but also accepts an unconditional
/// `UNet2DModel` (no `num_class_embeds`), with no classes (its `classes.json`, if any, must be
/// empty): the form a fine-tuning base may take ([`crate::train::class_table`] gives it a class
/// table).
pub fn load_base_dir(dir: &Path, device: Device) -> Result<ModelDir> {
    let mut unet = UNet::load(dir, device)?;
    let adapter_cfg_path = dir.join(ADAPTER_CONFIG);
    let (adapter, adapter_store) = if adapter_cfg_path.exists() {
        let text = std::fs::read_to_string(&adapter_cfg_path)
            .with_context(|| format!("reading {}", adapter_cfg_path.display()))?;
        let acfg: crate::nn::adapter::AdapterConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid adapter config", adapter_cfg_path.display()))?;
        let store = tch::nn::VarStore::new(device);
        crate::nn::adapter::attach(&mut unet, &store, &acfg)
            .with_context(|| format!("{}", adapter_cfg_path.display()))?;
        crate::nn::unet::weights::load_safetensors(&store, &dir.join(ADAPTER_WEIGHTS))?;
        (Some(acfg), Some(store))
    } else {
        (None, None)
    };
    // an unconditional model has no class rows: its class list is empty
    let null = unet.null_class().unwrap_or(0);
    let sched_path = dir.join(SCHEDULER_FILE);
    let scheduler = if sched_path.exists() {
        let text = std::fs::read_to_string(&sched_path)
            .with_context(|| format!("reading {}", sched_path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", sched_path.display()))?
    } else {
        SchedulerConfig::of(BetaSchedule::DDPM_LINEAR, 1000)
    };
    let schedule = scheduler
        .build()
        .with_context(|| format!("{}", sched_path.display()))?;
    let classes_path = dir.join(CLASSES_FILE);
    let classes: Vec<String> = if classes_path.exists() {
        let text = std::fs::read_to_string(&classes_path)
            .with_context(|| format!("reading {}", classes_path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!("{}: expected a JSON array of names", classes_path.display())
        })?
    } else {
        (0..null).map(|c| c.to_string()).collect()
    };
    let rows_path = dir.join(CLASS_ROWS_FILE);
    let row_classes = if rows_path.exists() {
        read_row_classes(&rows_path, classes.len(), null as usize)?
    } else {
        if classes.len() as i64 != null {
            bail!(
                "{}: {} class names for a model with {null} classes{}",
                classes_path.display(),
                classes.len(),
                if unet.null_class().is_none() {
                    " (unconditional: no num_class_embeds)"
                } else {
                    ""
                }
            );
        }
        (0..classes.len()).collect()
    };
    Ok(ModelDir {
        unet,
        schedule,
        scheduler,
        classes,
        row_classes,
        adapter,
        adapter_store,
    })
}

/// Reads a `class_rows.json` at `path` for a model of `classes` classes and `rows` non-null
/// class rows: one class index per row, each class with at least one row.
fn read_row_classes(path: &Path, classes: usize, rows: usize) -> Result<Vec<usize>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let row_classes: Vec<usize> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON array of class indices, one per class row",
            path.display()
        )
    })?;
    anyhow::ensure!(
        row_classes.len() == rows,
        "{}: {} rows listed for a model with {rows} class rows",
        path.display(),
        row_classes.len()
    );
    if let Some(bad) = row_classes.iter().find(|&&c| c >= classes) {
        bail!(
            "{}: class index {bad} for a model with {classes} classes",
            path.display()
        );
    }
    for c in 0..classes {
        anyhow::ensure!(
            row_classes.contains(&c),
            "{}: class {c} has no row",
            path.display()
        );
    }
    Ok(row_classes)
}

/// Whether row i draws class i for every row (the folder needs no `class_rows.json`).
pub fn is_identity(row_classes: &[usize]) -> bool {
    row_classes.iter().enumerate().all(|(i, &c)| i == c)
}

/// The class-embedding row of each image of `labels` (class indices) for a model whose rows
/// draw `row_classes`: the n-th image of a class takes the class's rows in turn, so a class's
/// images are spread evenly over its rows. With one row per class this is `labels`.
pub fn rows_in_turn(row_classes: &[usize], labels: &[i64]) -> Vec<i64> {
    let rows_of = rows_of_classes(row_classes);
    let mut seen = vec![0usize; rows_of.len()];
    labels
        .iter()
        .map(|&l| {
            let rows = &rows_of[l as usize];
            let row = rows[seen[l as usize] % rows.len()];
            seen[l as usize] += 1;
            row
        })
        .collect()
}

/// The held-out loss of `model` on `data` ([`heldout_loss`]). On a model with several rows per
/// class, conditioned scoring takes a class's rows in turn ([`rows_in_turn`]), as sampling does.
pub fn model_heldout_loss(
    model: &ModelDir,
    data: &Dataset,
    cfg: &HeldoutConfig,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<HeldoutLoss> {
    let scored = as_scored(model, data, cfg.conditioning)?;
    heldout_loss(&model.unet, &model.schedule, &scored, cfg, device, progress)
}

/// `data` as a held-out loss of `model` with `conditioning` reads it: with its own labels (those
/// of `model`'s classes) on a model with several rows per class, each image relabelled by the
/// row it is scored with (each row named after its class); otherwise `data` itself.
fn as_scored<'a>(
    model: &ModelDir,
    data: &'a Dataset,
    conditioning: Conditioning,
) -> Result<Cow<'a, Dataset>> {
    if conditioning == Conditioning::Null || is_identity(&model.row_classes) {
        return Ok(Cow::Borrowed(data));
    }
    anyhow::ensure!(
        model.row_classes.len() <= 256,
        "{} class rows: more than a dataset's 256 labels",
        model.row_classes.len()
    );
    let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
    Ok(Cow::Owned(Dataset {
        labels: rows_in_turn(&model.row_classes, &labels)
            .into_iter()
            .map(|r| r as u8)
            .collect(),
        class_names: model
            .row_classes
            .iter()
            .map(|&c| model.classes[c].clone())
            .collect(),
        ..data.clone()
    }))
}

/// Each class's rows, by class index, for a model whose rows draw `row_classes`.
pub fn rows_of_classes(row_classes: &[usize]) -> Vec<Vec<i64>> {
    let classes = row_classes.iter().max().map_or(0, |&m| m + 1);
    let mut rows_of: Vec<Vec<i64>> = vec![Vec::new(); classes];
    for (row, &c) in row_classes.iter().enumerate() {
        rows_of[c].push(row as i64);
    }
    rows_of
}

/// The labels of `per_class` images of each of `classes` classes, class by class: the order in
/// which [`generate`] and [`resume::Sampling`] sample (an image's index keys its noise).
fn class_labels(classes: usize, per_class: usize) -> Vec<i64> {
    (0..classes as i64)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect()
}

/// Samples `per_class` images of every class (labels in class order), as a dataset, in one go
/// (the commands' long samplings go through [`resume::Sampling`], which saves its progress).
pub fn generate(
    model: &ModelDir,
    per_class: usize,
    cfg: &SamplerConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<Dataset> {
    let shape = model
        .unet
        .sample_shape()
        .context("the model config has no sample_size")?;
    let labels = class_labels(model.classes.len(), per_class);
    let images = sample_with_progress(
        &model.unet,
        &model.schedule,
        &rows_in_turn(&model.row_classes, &labels),
        shape,
        cfg,
        seed,
        model.unet.device(),
        progress,
    )?;
    Ok(Dataset::from_unit_tensor(
        &images,
        labels.iter().map(|&l| l as u8).collect(),
        model.classes.clone(),
    )?)
}
