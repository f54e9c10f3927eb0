//! `dpsynth baseline`: the DP-SGD classifier trained directly on private data.

use std::path::{Path, PathBuf};

use crate::progress::{dp_step_message, PrivateLog, Progress};
use anyhow::{Context, Result};
use clap::Args;
use dpsynth::data::{self, Dataset};
use dpsynth::fsutil::write_atomic;
use dpsynth::nn::arch::{Arch, NetSpec};
use dpsynth::train::classifier::{evaluate, train_classifier, PrivacyTarget, TrainConfig};
use privacy::Accountant;
use serde::Deserialize;
use tch::Device;

#[derive(Args)]
pub struct BaselineArgs {
    /// Private dataset with train and test splits, e.g. mnist or cifar10 (trains on NAME:train,
    /// tests on NAME:test; --train and --test name other specs).
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Private training set (a dataset spec; default: DATA:train).
    #[arg(long)]
    train: Option<String>,
    /// Test set (a dataset spec; default: DATA:test).
    #[arg(long)]
    test: Option<String>,
    #[command(flatten)]
    settings: ClassifierSettings,
    /// Accountant used to calibrate σ and report ε: pld (default) or rdp.
    #[arg(long, default_value = "pld")]
    accountant: Accountant,
    /// Seed: repeatable runs, but the noise is then NOT cryptographically secure.
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder (report.json, model checkpoint).
    #[arg(long, default_value = "out/baseline")]
    out: PathBuf,
    /// Continue from the checkpoint in --out: the privacy ledger and a seeded run's sampling and
    /// noise streams continue with it. Settings must match it (only --physical-batch may change).
    #[arg(long)]
    resume: bool,
    /// Show the training loss in progress lines: a statistic of the private data with no noise,
    /// outside the privacy guarantee (off: step, epsilon and time only).
    #[arg(long, value_enum, default_value = "off")]
    private_log: PrivateLog,
    /// Steps between checkpoints (they are also written at least every 2 minutes of training).
    #[arg(long, default_value_t = CHECKPOINT_EVERY)]
    checkpoint_every: u64,
}

/// Default steps between the DP-SGD classifier's checkpoints.
pub const CHECKPOINT_EVERY: u64 = 200;

/// The settings of a DP-SGD classifier trained on private data: the flags of `dpsynth baseline`
/// and the `[classifier]` table of a run config (where every key is required, so that a results
/// cell states all of them).
#[derive(Args, Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSettings {
    /// Target ε.
    #[arg(long)]
    pub epsilon: f64,
    /// Target δ.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Epochs (steps = epochs · N / batch); 30 is the MNIST cells' recipe.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Expected logical batch size (Poisson sampling rate q = batch / N).
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Micro-batch size put through the model at once.
    #[arg(long, default_value_t = 256)]
    pub physical_batch: usize,
    /// SGD learning rate; 2 is the best of 0.5, 2 and 4 on the public stand-in task
    /// (docs/SELECTION.md).
    #[arg(long, default_value_t = 2.0)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Per-example clipping norm C.
    #[arg(long, default_value_t = 0.1)]
    pub clip: f64,
    /// Hold out this many training images as a validation set (not trained on; its accuracy is
    /// reported). Choosing settings on it reads private data: choose them on a public stand-in.
    #[arg(long, default_value_t = 5000)]
    pub val: usize,
    /// Classifier: auto (the CNN for 28×28 grey images, the GroupNorm ResNet-8 for colour), cnn
    /// or resnet.
    #[arg(long, default_value = "auto")]
    #[serde(default)]
    pub arch: Arch,
    /// Accept a δ at or above 1/n of the private set (experiments only: it guarantees nothing).
    #[arg(long)]
    #[serde(default)]
    pub allow_large_delta: bool,
}

/// What a trained baseline measured, as a report (JSON object).
pub struct BaselineOutcome {
    /// The report: accuracy, ledger, ε, settings.
    pub report: serde_json::Value,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// ε spent.
    pub epsilon: f64,
}

/// `ds` split into (trained on, held out) by a fixed public permutation.
fn split_off(ds: &Dataset, val: usize, seed: u64) -> Result<(Dataset, Dataset)> {
    anyhow::ensure!(
        val < ds.len(),
        "{val} held-out validation images (--val, or val in a run config) leave none of the {} to train on",
        ds.len()
    );
    // a fixed public permutation (it depends only on the seed and N, not on the data)
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..idx.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        idx.swap(i, (s % (i as u64 + 1)) as usize);
    }
    Ok((ds.subset(&idx[val..]), ds.subset(&idx[..val])))
}

/// Runs `dpsynth baseline`.
pub fn run(a: BaselineArgs, data_dir: &Path, device: Device) -> Result<()> {
    let has_checkpoint = a.out.join("checkpoint.json").exists();
    if has_checkpoint && !a.resume {
        anyhow::bail!(
            "{}: holds a checkpoint; pass --resume to continue it or choose another --out",
            a.out.display()
        );
    }
    if a.resume && !has_checkpoint {
        anyhow::bail!(
            "{}: no checkpoint to resume (--resume continues a run in the same --out)",
            a.out.display()
        );
    }
    let train = a.train.unwrap_or_else(|| format!("{}:train", a.data));
    let test = a.test.unwrap_or_else(|| format!("{}:test", a.data));
    let split = Split {
        train: (&train, data::load(&train, data_dir)?),
        test: (&test, data::load(&test, data_dir)?),
    };
    let outcome = train_baseline(
        &a.settings,
        split,
        &Run {
            accountant: a.accountant,
            seed: a.seed,
            out: &a.out,
            private_log: a.private_log,
            checkpoint_every: a.checkpoint_every,
        },
        device,
    )?;
    let path = a.out.join("report.json");
    write_atomic(
        &path,
        serde_json::to_string_pretty(&outcome.report)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

/// The private training set and the test set of a baseline, each with its dataset spec.
pub struct Split<'a> {
    /// Private training set.
    pub train: (&'a str, Dataset),
    /// Test set.
    pub test: (&'a str, Dataset),
}

/// How a baseline runs: accountant, seed, output folder (its checkpoint; resumed when it holds
/// one) and what the progress line shows.
pub struct Run<'a> {
    /// Accountant that calibrates σ and reports ε.
    pub accountant: Accountant,
    /// Seed (repeatable, NOT private noise) or `None` for OS-seeded noise.
    pub seed: Option<u64>,
    /// Output folder.
    pub out: &'a Path,
    /// Whether progress lines show the (non-private) training loss.
    pub private_log: PrivateLog,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
}

/// Trains the DP-SGD classifier on `split.train` (less `s.val` held-out images), tests it on
/// `split.test`, and returns its report. Prints one summary line.
pub fn train_baseline(
    s: &ClassifierSettings,
    split: Split,
    run: &Run,
    device: Device,
) -> Result<BaselineOutcome> {
    let (train_spec, full) = split.train;
    let (test_spec, test) = split.test;
    let (test, conversion) =
        data::convert::to_shape(&test, [full.channels, full.height, full.width]);
    if let Some(what) = conversion {
        eprintln!("{test_spec}: {what}");
    }
    let model_cfg = NetSpec::for_data(
        s.arch,
        full.channels,
        full.height,
        full.width,
        full.num_classes(),
    )?;
    let (train, val) = if s.val > 0 {
        split_off(&full, s.val, 0)?
    } else {
        let none = full.subset(&[]);
        (full, none)
    };
    let cfg = TrainConfig {
        epochs: s.epochs,
        batch_size: s.batch,
        physical_batch: s.physical_batch,
        lr: s.lr,
        momentum: s.momentum,
        clip: s.clip,
        privacy: PrivacyTarget {
            epsilon: s.epsilon,
            delta: s.delta,
            accountant: run.accountant,
            allow_large_delta: s.allow_large_delta,
        },
        seed: run.seed,
        checkpoint_every: run.checkpoint_every,
        checkpoint_seconds: dpsynth::train::checkpoint::DEFAULT_CHECKPOINT_SECONDS,
    };
    let bar = Progress::new(0, "steps");
    let mut last_eps = 0.0;
    let trained = train_classifier(&train, model_cfg, &cfg, Some(run.out), device, &mut |st| {
        bar.set_length(st.total_steps);
        bar.set_step(st.step);
        if let Some(e) = st.epsilon {
            last_eps = e;
        }
        bar.set_message(dp_step_message(st.loss, last_eps, run.private_log));
    })?;
    bar.finish();
    let p = cfg.privacy;
    let eps = trained.state.ledger.epsilon(p.accountant, p.delta)?;
    let test_m = evaluate(trained.model.as_ref(), &test, device);
    let val_acc =
        (!val.is_empty()).then(|| evaluate(trained.model.as_ref(), &val, device).accuracy);
    let report = serde_json::json!({
        "command": "baseline",
        "private_train": train_spec,
        "test": test_spec,
        "arch": model_cfg.arch().to_string(),
        "train_examples": train.len(),
        "validation_examples": val.len(),
        "test_accuracy": test_m.accuracy,
        "validation_accuracy": val_acc,
        "per_class_accuracy": test_m.per_class_accuracy,
        "confusion": test_m.confusion,
        "epsilon_spent": eps,
        "target_epsilon": p.epsilon,
        "delta": p.delta,
        "accountant": p.accountant.to_string(),
        "noise_multiplier": trained.state.noise_multiplier,
        "sample_rate": trained.state.sample_rate,
        "steps": trained.state.step,
        "ledger": trained.state.ledger,
        "secure_noise": trained.secure_noise,
        "noise_note": if trained.secure_noise { "noise from OS-seeded ChaCha20" } else { "seeded run: noise is repeatable and NOT private" },
        "settings": cfg,
        "train_seconds_this_process": trained.train_seconds,
    });
    println!(
        "test accuracy {:.2}% (validation {}), epsilon {eps:.3} at delta {:e} ({}), sigma {:.3}, {} steps{}",
        100.0 * test_m.accuracy,
        val_acc.map_or("n/a".into(), |v| format!("{:.2}%", 100.0 * v)),
        p.delta,
        p.accountant,
        trained.state.noise_multiplier,
        trained.state.step,
        if trained.secure_noise { "" } else { " (seeded: noise not secure)" }
    );
    Ok(BaselineOutcome {
        report,
        test_accuracy: test_m.accuracy,
        epsilon: eps,
    })
}
