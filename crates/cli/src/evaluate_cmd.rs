//! `dpsynth evaluate`: train the downstream CNN on (synthetic) data, test on real data; with
//! `--inception`, FID and KID against the real data too (shared with `dpsynth run`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use dpsynth::data::{self, catalog::spec_help};
use dpsynth::fidelity::{Fidelity, FidelitySettings};
use dpsynth::fsutil::write_atomic;
use dpsynth::nn::arch::Arch;
use dpsynth::nn::inception::InceptionV3;
use dpsynth::pipeline::{measure_fidelity, Event};
use dpsynth::train::downstream::{train_and_test, DownstreamConfig, DownstreamResult};
use tch::Device;

use crate::progress::{PrivateLog, Reporter};

#[derive(Args, Clone)]
pub struct EvaluateArgs {
    #[arg(long, help = format!("Training data, usually synthetic: {}", spec_help()))]
    pub train: String,
    #[arg(long, default_value = "mnist:test", help = format!("Real test data: {}", spec_help()))]
    pub test: String,
    /// Epochs.
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    /// Fraction of --train held out to choose the epoch (the test set is never used for that).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write report.json (optional).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Classifier: auto (the ResNet-8 for 3-channel images, the CNN otherwise), cnn or resnet.
    #[arg(long, default_value = "auto")]
    pub arch: Arch,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05) converted to safetensors: adds
    /// FID and KID between --train and --test to the report. Without it they are not computed.
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Images of each set that FID/KID read (a subset seeded by --seed): Inception at 299×299
    /// takes about 3.5 minutes per 1,000 images on one CPU thread.
    #[arg(long, default_value_t = FidelitySettings::default().max_images)]
    pub fid_images: usize,
}

/// Loads the Inception weights at `path`, naming the path in any error.
pub(crate) fn load_inception(path: &Path, device: Device) -> Result<InceptionV3> {
    InceptionV3::load(path, device).with_context(|| {
        format!(
            "Inception weights (--inception / inception =) {}",
            path.display()
        )
    })
}

/// What a report says when no Inception weights were given.
pub(crate) const NO_INCEPTION: &str = "FID/KID not computed: no Inception weights given \
(--inception PATH, or inception = \"PATH\" in a run config's [evaluate]; see README.md)";

/// One line: FID, KID and what they were computed on.
pub(crate) fn fidelity_line(f: &Fidelity) -> String {
    format!(
        "FID {:.3}, KID {:.5} ± {:.5} ({} synthetic and {} real images, KID over {} subsets of {}; \
         pytorch-fid's Inception pool3 features)",
        f.fid,
        f.kid.mean,
        f.kid.sd,
        f.synthetic_images,
        f.real_images,
        f.kid.subsets,
        f.kid.subset_size
    )
}

/// Trains and tests; prints accuracy, per-class accuracy and the confusion matrix.
pub fn run_evaluate(a: &EvaluateArgs, data_dir: &Path, device: Device) -> Result<DownstreamResult> {
    anyhow::ensure!(
        (0.0..1.0).contains(&a.val_fraction),
        "--val-fraction must be in [0, 1), got {}",
        a.val_fraction
    );
    anyhow::ensure!(
        a.fid_images >= 2,
        "--fid-images must be at least 2, got {}",
        a.fid_images
    );
    // weights first: a bad path fails before any training
    let inception = a
        .inception
        .as_ref()
        .map(|p| load_inception(p, device))
        .transpose()?;
    let train = data::load(&a.train, data_dir)?;
    let test = data::load(&a.test, data_dir)?;
    let cfg = DownstreamConfig {
        epochs: a.epochs,
        val_fraction: a.val_fraction,
        seed: a.seed,
        arch: a.arch,
        ..DownstreamConfig::default()
    };
    let mut reporter = Reporter::new(PrivateLog::Off);
    let r = train_and_test(&train, &test, &cfg, device, &mut |epoch, val_accuracy| {
        reporter.on(Event::Epoch {
            epoch,
            val_accuracy,
        })
    })?;
    println!(
        "test accuracy {:.2}% on {} ({}, epoch {} chosen on {} held-out training images)",
        100.0 * r.test.accuracy,
        a.test,
        r.arch,
        r.best_epoch,
        r.val_examples
    );
    println!("per-class accuracy:");
    for (i, acc) in r.test.per_class_accuracy.iter().enumerate() {
        println!("  {:>12} {:.2}%", test.class_names[i], 100.0 * acc);
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    for row in &r.test.confusion {
        println!(
            "  {}",
            row.iter().map(|v| format!("{v:>5}")).collect::<String>()
        );
    }
    let settings = FidelitySettings {
        max_images: a.fid_images,
        seed: a.seed,
        ..FidelitySettings::default()
    };
    let fidelity = measure_fidelity(inception.as_ref(), &train, &test, &settings, &mut |e| {
        reporter.on(e)
    })?;
    if let Some(out) = &a.out {
        let mut report = serde_json::json!({
            "command": "evaluate", "train": a.train, "test": a.test,
            "test_accuracy": r.test.accuracy, "result": r, "settings": cfg,
        });
        if let Some(f) = &fidelity {
            report["fidelity"] = serde_json::to_value(f)?;
        }
        let path = out.join("report.json");
        write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(r)
}

/// Runs `dpsynth evaluate`.
pub fn run(a: EvaluateArgs, data_dir: &Path, device: Device) -> Result<()> {
    run_evaluate(&a, data_dir, device).map(|_| ())
}
