//! The run config of `dpsynth run` (TOML; `configs/run-default.toml` is the default): one type
//! per table, each key named as the setting is everywhere else. Keys a table leaves out take
//! the library's defaults ([`FinetuneConfig::new`], [`DownstreamConfig::default`],
//! [`FidelitySettings::default`]), so every default lives once. Unknown keys are errors that
//! name the key. Relative paths are the caller's to resolve.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use serde::Deserialize;
use tch::Device;

use super::{EvaluateSettings, RunMode, SampleSettings};
use crate::diffusion::precision::PrecisionChoice;
use crate::diffusion::sampler::{SamplerChoice, SamplerConfig};
use crate::fidelity::FidelitySettings;
use crate::nn::arch::Arch;
use crate::nn::inception::InceptionV3;
use crate::train::class_table::InitRows;
use crate::train::downstream::DownstreamConfig;
use crate::train::finetune::{FinetuneConfig, FinetuneOverrides};

/// Images per forward pass when a run samples (no key sets it).
pub const SAMPLE_BATCH: usize = 250;

/// A run config: fine-tune (or not: mode "base"), sample, evaluate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Output folder.
    pub out: PathBuf,
    /// `[private]`: the private data.
    pub private: PrivateSection,
    /// `[finetune]`: the DP fine-tuning.
    pub finetune: FinetuneSection,
    /// `[sample]`: the synthetic set.
    pub sample: SampleSection,
    /// `[evaluate]`: the downstream classifier and FID/KID.
    pub evaluate: EvaluateSection,
}

/// `[private]`: the private training set and the real test set, as dataset specs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateSection {
    /// Private training set.
    pub train: String,
    /// Real test set.
    pub test: String,
}

/// `[finetune]`: base, mode and privacy target; every other key overrides the mode's default
/// in [`FinetuneConfig::new`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// Base model folder.
    pub base: PathBuf,
    /// A fine-tuning mode, or "base" (the base sampled as it is).
    pub mode: RunMode,
    /// Target ε.
    pub epsilon: f64,
    /// Target δ.
    pub delta: f64,
    /// Adapter rank r; the adapter scale α is set to r too.
    #[serde(default)]
    pub rank: Option<i64>,
    /// Passes over the private data.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Expected logical batch size.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Largest micro-batch put through the model at once.
    #[serde(default)]
    pub physical_batch: Option<usize>,
    /// Adam learning rate.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Learning rate of the class embedding (default: lr).
    #[serde(default)]
    pub class_lr: Option<f64>,
    /// Per-example clipping norm C.
    #[serde(default)]
    pub clip: Option<f64>,
    /// Noise multiplicity K.
    #[serde(default)]
    pub noise_multiplicity: Option<i64>,
    /// Class-init table file (see `finetune --class-init`): private classes the base does not
    /// have start from the mean row of related public classes. In mode "base" it gives the
    /// base, unfine-tuned, a row for each class of the test set.
    #[serde(default)]
    pub class_init: Option<PathBuf>,
    /// "mean" (the default): a class of the class-init table starts from the mean row of its
    /// public classes; "scaled_mean": from that mean rescaled to their rows' mean norm; "each":
    /// from each of their rows, as a class with several rows, trained and sampled across them.
    #[serde(default)]
    pub class_init_rows: InitRows,
    /// Accept a δ at or above 1/n of the private set (experiments only).
    #[serde(default)]
    pub allow_large_delta: bool,
    /// Whether the caller's progress lines show the training loss (not private).
    #[serde(default)]
    pub private_log: PrivateLog,
}

/// `[finetune] private_log`: whether progress lines show the training loss, a statistic of the
/// private data with no noise, outside the privacy guarantee. Only the caller that shows
/// progress reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateLog {
    /// Step, ε and time only (the default).
    #[default]
    Off,
    /// Also the training loss.
    On,
}

impl FinetuneSection {
    /// The settings the table's optional keys set (no key sets α: it follows the rank).
    pub fn overrides(&self) -> FinetuneOverrides {
        FinetuneOverrides {
            rank: self.rank,
            alpha: None,
            epochs: self.epochs,
            batch_size: self.batch,
            physical_batch: self.physical_batch,
            lr: self.lr,
            class_lr: self.class_lr,
            clip: self.clip,
            noise_multiplicity: self.noise_multiplicity,
            class_init_rows: self.class_init_rows,
            allow_large_delta: self.allow_large_delta,
        }
    }

    /// The fine-tuning settings: [`FinetuneConfig::new`]'s for the mode, ε and δ, with the keys
    /// the table sets ([`FinetuneConfig::with_overrides`]; the class-init table is the job's to
    /// read); `None` in mode "base".
    pub fn finetune_config(&self) -> Option<FinetuneConfig> {
        let c = FinetuneConfig::new(self.mode.0?, self.epsilon, self.delta);
        Some(c.with_overrides(&self.overrides()))
    }
}

/// `[sample]`: how many images and how they are sampled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSection {
    /// Images per class.
    pub per_class: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// "ddpm" (default), "ddim" or "dpm".
    #[serde(default)]
    pub sampler: SamplerChoice,
    /// DDIM η; only with sampler = "ddim".
    #[serde(default)]
    pub eta: f64,
    /// "auto" (default: bfloat16 where the CPU has it natively, else float32), "float32" or
    /// "bfloat16": the number format of the model while sampling ([`PrecisionChoice`]).
    #[serde(default)]
    pub precision: PrecisionChoice,
}

impl SampleSection {
    /// The run's sampling settings on `device` ([`SAMPLE_BATCH`] images per forward pass, the
    /// precision resolved for it); refuses an η without DDIM.
    pub fn settings(&self, device: Device) -> Result<SampleSettings> {
        ensure!(
            self.eta == 0.0 || self.sampler == SamplerChoice::Ddim,
            "[sample] eta applies to sampler = \"ddim\" only"
        );
        Ok(SampleSettings {
            per_class: self.per_class,
            sampler: SamplerConfig {
                precision: self.precision.resolve(device),
                ..self
                    .sampler
                    .config(self.steps, self.guidance, SAMPLE_BATCH, self.eta)
            },
            seed: self.seed,
        })
    }
}

/// `[evaluate]`: the downstream classifier, and FID/KID when Inception weights are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSection {
    /// Epochs of the downstream classifier.
    pub epochs: usize,
    /// Fraction of the synthetic set held out to choose the epoch.
    pub val_fraction: f64,
    /// auto (default: from the images' shape), cnn or resnet.
    #[serde(default)]
    pub arch: Arch,
    /// pytorch-fid's Inception weights as safetensors: adds FID and KID (optional; the caller
    /// loads them).
    #[serde(default)]
    pub inception: Option<PathBuf>,
    /// Images of each set FID/KID read, a seeded subset (default 2,000).
    #[serde(default)]
    pub fid_images: Option<usize>,
}

impl EvaluateSection {
    /// The downstream classifier: [`DownstreamConfig::default`] with the table's keys.
    pub fn downstream(&self) -> DownstreamConfig {
        DownstreamConfig {
            epochs: self.epochs,
            val_fraction: self.val_fraction,
            arch: self.arch,
            ..DownstreamConfig::default()
        }
    }

    /// How FID and KID are measured: [`FidelitySettings::default`] with `fid_images`.
    pub fn fidelity(&self) -> Result<FidelitySettings> {
        let d = FidelitySettings::default();
        let max_images = self.fid_images.unwrap_or(d.max_images);
        ensure!(max_images >= 2, "[evaluate] fid_images must be at least 2");
        Ok(FidelitySettings { max_images, ..d })
    }

    /// The run's evaluation settings, with the Inception network the caller loaded from
    /// `inception` (`None`: no FID/KID).
    pub fn settings<'a>(&self, inception: Option<&'a InceptionV3>) -> Result<EvaluateSettings<'a>> {
        Ok(EvaluateSettings {
            downstream: self.downstream(),
            inception,
            fidelity: self.fidelity()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::precision::Precision;
    use crate::diffusion::sampler::{SamplerKind, Spacing};
    use crate::train::finetune::Mode;

    /// The committed default run config (the CLI embeds it).
    const DEFAULT: &str = include_str!("../../../../configs/run-default.toml");

    fn parse(text: &str) -> std::result::Result<RunConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The default run config with `key = value` added to `[table]` (or at the top for "").
    fn with(table: &str, line: &str) -> String {
        if table.is_empty() {
            format!("{line}\n{DEFAULT}")
        } else {
            let head = format!("[{table}]\n");
            DEFAULT.replace(&head, &format!("{head}{line}\n"))
        }
    }

    /// configs/run-default.toml parses into the fine-tuning, sampling and evaluation it states.
    #[test]
    fn the_default_run_config_parses_into_its_settings() {
        let cfg = parse(DEFAULT).unwrap();
        assert_eq!(cfg.out, PathBuf::from("out/run"));
        assert_eq!(
            (cfg.private.train.as_str(), cfg.private.test.as_str()),
            ("mnist:train", "mnist:test")
        );
        assert_eq!(cfg.finetune.base, PathBuf::from("models/mnist-base"));
        assert_eq!(cfg.finetune.private_log, PrivateLog::Off);
        let c = cfg.finetune.finetune_config().unwrap();
        assert_eq!(c.mode, Mode::Loda);
        assert_eq!((c.epsilon, c.delta), (10.0, 1e-5));
        assert_eq!((c.lr, c.clip, c.class_lr), (3e-3, 0.003, None));
        assert_eq!((c.batch_size, c.physical_batch), (1000, 250));
        assert_eq!((c.adapter.rank, c.adapter.alpha), (4, 4.0));
        assert_eq!((c.epochs, c.noise_multiplicity), (1.0, 1));
        assert!(!c.allow_large_delta);

        let s = cfg.sample.settings(Device::Cpu).unwrap();
        assert_eq!((s.per_class, s.seed), (1000, 0));
        assert_eq!(s.sampler.kind, SamplerKind::Ddpm);
        assert_eq!(s.sampler.spacing, Spacing::Leading);
        assert_eq!(
            (
                s.sampler.num_steps,
                s.sampler.guidance_scale,
                s.sampler.batch_size
            ),
            (10, 1.0, SAMPLE_BATCH)
        );
        let e = cfg.evaluate.settings(None).unwrap();
        assert_eq!((e.downstream.epochs, e.downstream.val_fraction), (15, 0.1));
        assert_eq!(e.downstream.arch, Arch::Auto);
        assert_eq!(e.fidelity, FidelitySettings::default());
    }

    /// The default run config states the library's defaults (one truth for `finetune` and
    /// `run`): the same decimal constants, so they parse to the same floats, and the settings a
    /// `[finetune]` table of only base, mode, ε and δ gives are [`FinetuneConfig::new`]'s.
    #[test]
    fn the_default_run_states_the_library_defaults() {
        let f = parse(DEFAULT).unwrap().finetune;
        let lib = FinetuneConfig::new(f.mode.0.unwrap(), f.epsilon, f.delta);
        assert_eq!(
            (f.lr, f.epochs, f.clip, f.batch, f.physical_batch),
            (
                Some(lib.lr),
                Some(lib.epochs),
                Some(lib.clip),
                Some(lib.batch_size),
                Some(lib.physical_batch)
            )
        );
        assert_eq!(
            (f.rank, f.noise_multiplicity),
            (Some(lib.adapter.rank), Some(lib.noise_multiplicity))
        );
        let json = |c: &FinetuneConfig| serde_json::to_value(c).unwrap();
        assert_eq!(json(&f.finetune_config().unwrap()), json(&lib));
        for mode in ["lora", "full", "scratch"] {
            let minimal: FinetuneSection = toml::from_str(&format!(
                "base = \"b\"\nmode = \"{mode}\"\nepsilon = 1.0\ndelta = 1e-6"
            ))
            .unwrap();
            let lib = FinetuneConfig::new(mode.parse().unwrap(), 1.0, 1e-6);
            assert_eq!(
                json(&minimal.finetune_config().unwrap()),
                json(&lib),
                "{mode}"
            );
        }
    }

    /// Every key of `[finetune]` reaches the setting of the same meaning.
    #[test]
    fn finetune_keys_override_the_defaults() {
        let text = "base = \"b\"\nmode = \"lora\"\nepsilon = 3.0\ndelta = 1e-6\nrank = 8\n\
                    epochs = 2.5\nbatch = 64\nphysical_batch = 16\nlr = 0.5\nclass_lr = 0.25\n\
                    clip = 0.7\nnoise_multiplicity = 3\nclass_init = \"t.toml\"\n\
                    class_init_rows = \"each\"\nallow_large_delta = true\nprivate_log = \"on\"";
        let f: FinetuneSection = toml::from_str(text).unwrap();
        assert_eq!(f.class_init, Some(PathBuf::from("t.toml")));
        assert_eq!(f.private_log, PrivateLog::On);
        let c = f.finetune_config().unwrap();
        assert_eq!(c.mode, Mode::Lora);
        assert_eq!((c.epsilon, c.delta), (3.0, 1e-6));
        assert_eq!((c.adapter.rank, c.adapter.alpha), (8, 8.0));
        assert_eq!((c.epochs, c.batch_size, c.physical_batch), (2.5, 64, 16));
        assert_eq!((c.lr, c.class_lr, c.clip), (0.5, Some(0.25), 0.7));
        assert_eq!(c.noise_multiplicity, 3);
        assert_eq!(c.class_init_rows, InitRows::Each);
        assert!(c.allow_large_delta);
        // the job reads the class-init table, not the config
        assert!(c.class_init.is_none());
    }

    #[test]
    fn mode_base_fine_tunes_nothing() {
        let cfg = parse(&DEFAULT.replace("mode = \"loda\"", "mode = \"base\"")).unwrap();
        assert_eq!(cfg.finetune.mode, RunMode(None));
        assert!(cfg.finetune.finetune_config().is_none());
        let err = parse(&DEFAULT.replace("mode = \"loda\"", "mode = \"lodaa\"")).unwrap_err();
        assert!(err.contains("lodaa") && err.contains("base"), "{err}");
    }

    /// An unknown key is an error that names it, in every table and at the top.
    #[test]
    fn unknown_keys_are_rejected() {
        let bad = DEFAULT.replace("rank = 4", "rank = 4\nrnak = 5");
        let err = parse(&bad).unwrap_err();
        assert!(err.contains("rnak"), "{err}");
        // the library's name of a setting is not a key: the config's is
        let err = parse(&with("finetune", "max_grad_norm = 1.0")).unwrap_err();
        assert!(err.contains("max_grad_norm"), "{err}");
        for (table, key) in [
            ("", "outt"),
            ("private", "tset"),
            ("sample", "sampler_steps"),
            ("evaluate", "fid_image"),
        ] {
            let err = parse(&with(table, &format!("{key} = 1"))).unwrap_err();
            assert!(err.contains(key), "[{table}] {key}: {err}");
        }
    }

    #[test]
    fn sampler_and_fid_keys_are_checked() {
        let ddim = parse(&with("sample", "sampler = \"ddim\"\neta = 0.5")).unwrap();
        let s = ddim.sample.settings(Device::Cpu).unwrap();
        assert_eq!(s.sampler.kind, SamplerKind::Ddim { eta: 0.5 });
        let dpm = parse(&with("sample", "sampler = \"dpm\"")).unwrap();
        assert_eq!(
            dpm.sample.settings(Device::Cpu).unwrap().sampler.spacing,
            Spacing::Linspace
        );
        for (value, want) in [
            ("float32", Precision::Float32),
            ("bfloat16", Precision::Bfloat16),
        ] {
            let cfg = parse(&with("sample", &format!("precision = \"{value}\""))).unwrap();
            let s = cfg.sample.settings(Device::Cpu).unwrap();
            assert_eq!(s.sampler.precision, want);
        }
        let auto = parse(DEFAULT)
            .unwrap()
            .sample
            .settings(Device::Cpu)
            .unwrap();
        assert_eq!(
            auto.sampler.precision,
            PrecisionChoice::Auto.resolve(Device::Cpu)
        );
        let err = parse(&with("sample", "precision = \"fp16\"")).unwrap_err();
        assert!(err.contains("fp16"), "{err}");
        let eta = parse(&with("sample", "eta = 1.0")).unwrap();
        let err = eta.sample.settings(Device::Cpu).unwrap_err().to_string();
        assert_eq!(err, "[sample] eta applies to sampler = \"ddim\" only");

        let few = parse(&with("evaluate", "fid_images = 1")).unwrap();
        let err = few.evaluate.fidelity().unwrap_err().to_string();
        assert_eq!(err, "[evaluate] fid_images must be at least 2");
        let some = parse(&with("evaluate", "fid_images = 5\narch = \"resnet\"")).unwrap();
        assert_eq!(some.evaluate.fidelity().unwrap().max_images, 5);
        assert_eq!(some.evaluate.downstream().arch, Arch::Resnet);
    }
}
