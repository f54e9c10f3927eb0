//! `dpsynth evaluate`: train the downstream CNN on (synthetic) data, test on real data.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use dpsynth::data::{self, catalog::spec_help};
use dpsynth::fsutil::write_atomic;
use dpsynth::nn::arch::Arch;
use dpsynth::train::downstream::{train_and_test, DownstreamConfig, DownstreamResult};
use tch::Device;

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
}

/// Trains and tests; prints accuracy, per-class accuracy and the confusion matrix.
pub fn run_evaluate(a: &EvaluateArgs, data_dir: &Path, device: Device) -> Result<DownstreamResult> {
    anyhow::ensure!(
        (0.0..1.0).contains(&a.val_fraction),
        "--val-fraction must be in [0, 1), got {}",
        a.val_fraction
    );
    let train = data::load(&a.train, data_dir)?;
    let test = data::load(&a.test, data_dir)?;
    let cfg = DownstreamConfig {
        epochs: a.epochs,
        val_fraction: a.val_fraction,
        seed: a.seed,
        arch: a.arch,
        ..DownstreamConfig::default()
    };
    let r = train_and_test(&train, &test, &cfg, device, &mut |e, acc| {
        eprintln!("epoch {e}: held-out synthetic accuracy {:.2}%", 100.0 * acc)
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
    if let Some(out) = &a.out {
        let report = serde_json::json!({
            "command": "evaluate", "train": a.train, "test": a.test,
            "test_accuracy": r.test.accuracy, "result": r, "settings": cfg,
        });
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
