//! What a run reports: [`RunReport`], written as report.json beside the CLI's [`Provenance`].

use serde::Serialize;

use super::RunMode;
use crate::diffusion::sampler::SamplerConfig;
use crate::fidelity::Fidelity;
use crate::memorization::Memorization;
use crate::train::class_table::RowStart;
use privacy::{Accountant, Ledger};

/// What ran, from which config and code: the fields every report of a run config starts with.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The command ("run", "audit").
    pub command: &'static str,
    /// The version of the program.
    pub version: &'static str,
    /// The git commit it was built from (`-dirty` with uncommitted changes), if known.
    pub commit: Option<&'static str>,
    /// Where the config came from (a path, or "embedded default").
    pub config: String,
    /// The config's text.
    pub config_text: String,
    /// libtorch's CPU threads.
    pub threads: i32,
}

/// A report as written to report.json: its provenance and its fields in one object.
#[derive(Serialize)]
pub struct ReportFile<'a, T: Serialize> {
    /// What ran, from which config and code.
    #[serde(flatten)]
    pub provenance: &'a Provenance,
    /// The report.
    #[serde(flatten)]
    pub report: &'a T,
}

/// How input images were converted to the model's shape (`None`: they had it).
#[derive(Debug, Clone, Serialize)]
pub struct Conversion {
    /// The private training images (`None` too when nothing was fine-tuned).
    pub private_train: Option<String>,
    /// The real test images.
    pub test: Option<String>,
}

/// Wall-clock seconds of each stage of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Seconds {
    /// DP fine-tuning; a resumed fine-tuning adds the training time earlier runs spent before
    /// its checkpoint (so it may exceed `total`, this process's time).
    pub finetune: f64,
    /// Sampling; a resumed sampling adds the time earlier runs spent on the images they saved
    /// (so it may exceed `total`, this process's time).
    pub sample: f64,
    /// The downstream classifier and FID/KID.
    pub evaluate: f64,
    /// The memorization report.
    pub memorization: f64,
    /// The whole run, loading the data included.
    pub total: f64,
}

/// What a run (fine-tune → sample → evaluate) measured. Serialized, it is report.json less
/// its provenance; fields marked "not in report.json" are for report.md.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Spec of the private training set.
    pub private_train: String,
    /// Spec of the real test set.
    pub test: String,
    /// The fine-tuning mode, or "base".
    pub mode: RunMode,
    /// ε spent (0 in mode "base").
    pub epsilon_spent: f64,
    /// δ.
    pub delta: f64,
    /// Accountant of ε.
    pub accountant: Accountant,
    /// σ of the fine-tuning.
    pub noise_multiplier: Option<f64>,
    /// Poisson sampling rate q of the fine-tuning.
    pub sample_rate: Option<f64>,
    /// DP-SGD steps taken.
    pub steps: u64,
    /// Every DP-SGD step, across resumes.
    pub ledger: Option<Ledger>,
    /// Whether all privacy randomness came from the OS-seeded generator.
    pub secure_noise: Option<bool>,
    /// Parameters trained (0 in mode "base").
    pub trainable_parameters: usize,
    /// Parameters of the base U-Net.
    pub base_parameters: Option<usize>,
    /// sha256 of the base's weights file: which base the run started from, which the commit the
    /// program was built from does not say when the model folder changed after it.
    pub base_weights_sha256: String,
    /// Where each private class's row started, when the base's classes were not the data's.
    pub class_rows: Option<Vec<RowStart>>,
    /// How the private and test images were converted to the model's shape.
    pub conversion: Conversion,
    /// What the class rows' start costs ([`super::finetune_job::CLASS_ROWS_NOTE`]).
    pub class_rows_note: &'static str,
    /// Synthetic images sampled.
    pub synthetic_images: usize,
    /// How they were sampled.
    pub sampler: SamplerConfig,
    /// The downstream classifier's accuracy on the real test set.
    pub test_accuracy: f64,
    /// Its accuracy within each test class.
    pub per_class_accuracy: Vec<f64>,
    /// The test set's class names, by label (not in report.json).
    #[serde(skip)]
    pub test_classes: Vec<String>,
    /// Its `confusion[true][predicted]` counts on the test set.
    pub confusion: Vec<Vec<u64>>,
    /// The epoch chosen on held-out synthetic images (1-based).
    pub downstream_best_epoch: usize,
    /// Held-out synthetic accuracy per epoch.
    pub downstream_val_accuracy: Vec<f64>,
    /// Synthetic images held out to choose the epoch (not in report.json).
    #[serde(skip)]
    pub downstream_val_examples: usize,
    /// FID and KID against the test set, when Inception weights were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<Fidelity>,
    /// Nearest training and held-out images (reads the private training set: for the data
    /// holder only; `None` in mode "base").
    pub memorization: Option<Memorization>,
    /// The clipping bound C of the fine-tuning (not in report.json).
    #[serde(skip)]
    pub clip: Option<f64>,
    /// Time of each stage.
    pub seconds: Seconds,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fidelity::Kid;
    use std::collections::BTreeSet;

    /// A base-alone report with every optional field empty.
    fn base_alone() -> RunReport {
        RunReport {
            private_train: "mnist:train".into(),
            test: "mnist:test".into(),
            mode: RunMode(None),
            epsilon_spent: 0.0,
            delta: 1e-5,
            accountant: Accountant::Pld,
            noise_multiplier: None,
            sample_rate: None,
            steps: 0,
            ledger: None,
            secure_noise: None,
            trainable_parameters: 0,
            base_parameters: None,
            base_weights_sha256: "0".repeat(64),
            class_rows: None,
            conversion: Conversion {
                private_train: None,
                test: None,
            },
            class_rows_note: super::super::finetune_job::CLASS_ROWS_NOTE,
            synthetic_images: 20,
            sampler: SamplerConfig::ddpm(10, 1.0),
            test_accuracy: 0.5,
            per_class_accuracy: vec![0.5, 0.5],
            test_classes: vec!["0".into(), "1".into()],
            confusion: vec![vec![1, 1], vec![1, 1]],
            downstream_best_epoch: 1,
            downstream_val_accuracy: vec![0.5],
            downstream_val_examples: 2,
            fidelity: None,
            memorization: None,
            clip: None,
            seconds: Seconds {
                finetune: 0.0,
                sample: 1.0,
                evaluate: 2.0,
                memorization: 0.0,
                total: 3.0,
            },
        }
    }

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// report.json keeps the fields and nesting of the committed run reports, which
    /// `dpsynth results` reads: the same keys at the top and in each nested object.
    #[test]
    fn report_json_has_the_keys_of_a_committed_run_report() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../results/mnist/loda-eps10-s1/report.json"
        );
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let provenance = Provenance {
            command: "run",
            version: "0.1.0",
            commit: None,
            config: "config.toml".into(),
            config_text: String::new(),
            threads: 1,
        };
        let report = base_alone();
        let written = serde_json::to_value(ReportFile {
            provenance: &provenance,
            report: &report,
        })
        .unwrap();
        let mut want = keys(&committed);
        // reports older than the key do not name their base's weights
        want.insert("base_weights_sha256".into());
        assert_eq!(keys(&written), want);
        for nested in ["conversion", "sampler", "seconds"] {
            let mut want = keys(&committed[nested]);
            if nested == "sampler" {
                // reports older than the key were sampled in float32, which it defaults to
                want.insert("precision".into());
            }
            assert_eq!(keys(&written[nested]), want, "{nested}");
        }
        let old: crate::diffusion::sampler::SamplerConfig =
            serde_json::from_value(committed["sampler"].clone()).unwrap();
        assert_eq!(
            old.precision,
            crate::diffusion::precision::Precision::Float32
        );
        assert_eq!(written["mode"], "base");
        assert_eq!(written["accountant"], committed["accountant"]);
        assert_eq!(written["class_rows_note"], committed["class_rows_note"]);

        // FID and KID appear only when measured
        let kid = Kid {
            mean: 0.0,
            sd: 0.0,
            subsets: 1,
            subset_size: 2,
        };
        let with_fid = RunReport {
            fidelity: Some(Fidelity {
                fid: 1.0,
                kid,
                synthetic_images: 2,
                real_images: 2,
                settings: crate::fidelity::FidelitySettings::default(),
                seconds: 0.0,
            }),
            ..report
        };
        let v = serde_json::to_value(&with_fid).unwrap();
        assert!(v["fidelity"]["fid"].is_number(), "{v}");
    }
}
