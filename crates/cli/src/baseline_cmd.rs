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
use tch::Device;

#[derive(Args)]
pub struct BaselineArgs {
    /// Private dataset: mnist or cifar10 (trains on NAME:train, tests on NAME:test).
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Target ε.
    #[arg(long)]
    epsilon: f64,
    /// Target δ.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Accountant used to calibrate σ and report ε: pld (default) or rdp.
    #[arg(long, default_value = "pld")]
    accountant: Accountant,
    /// Epochs (steps = epochs · N / batch).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Expected logical batch size (Poisson sampling rate q = batch / N).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Micro-batch size put through the model at once.
    #[arg(long, default_value_t = 256)]
    physical_batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 4.0)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Per-example clipping norm C.
    #[arg(long, default_value_t = 0.1)]
    clip: f64,
    /// Hold out this many training images as a validation set (not used for training; reported
    /// so hyper-parameters can be chosen without the test set).
    #[arg(long, default_value_t = 5000)]
    val: usize,
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
    /// Accept a δ at or above 1/n of the private set (experiments only: it guarantees nothing).
    #[arg(long)]
    allow_large_delta: bool,
    /// Show the training loss in progress lines: a statistic of the private data with no noise,
    /// outside the privacy guarantee (off: step, epsilon and time only).
    #[arg(long, value_enum, default_value = "off")]
    private_log: PrivateLog,
    /// Classifier: auto (the CNN for mnist, the GroupNorm ResNet-8 for cifar10), cnn or resnet.
    #[arg(long, default_value = "auto")]
    arch: Arch,
}

fn split(ds: &Dataset, val: usize, seed: u64) -> Result<(Dataset, Dataset)> {
    anyhow::ensure!(
        val < ds.len(),
        "--val {val} must be below the {} training images",
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
    let name = match a.data.as_str() {
        "mnist" => "mnist",
        "cifar10" => "cifar10",
        other => anyhow::bail!("--data {other}: expected mnist or cifar10"),
    };
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
    let full = data::load(&format!("{name}:train"), data_dir)?;
    let test = data::load(&format!("{name}:test"), data_dir)?;
    let model_cfg = NetSpec::for_data(
        a.arch,
        full.channels,
        full.height,
        full.width,
        full.num_classes(),
    )?;
    let (train, val) = if a.val > 0 {
        split(&full, a.val, 0)?
    } else {
        (
            full,
            Dataset {
                images: vec![],
                labels: vec![],
                ..test.clone()
            },
        )
    };
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch,
        physical_batch: a.physical_batch,
        lr: a.lr,
        momentum: a.momentum,
        max_grad_norm: a.clip,
        privacy: Some(PrivacyTarget {
            epsilon: a.epsilon,
            delta: a.delta,
            accountant: a.accountant,
            allow_large_delta: a.allow_large_delta,
        }),
        seed: a.seed,
        checkpoint_every: 200,
        checkpoint_seconds: dpsynth::train::checkpoint::DEFAULT_CHECKPOINT_SECONDS,
    };
    let bar = Progress::new(0, "steps");
    let mut last_eps = 0.0;
    let trained = train_classifier(&train, model_cfg, &cfg, Some(&a.out), device, &mut |s| {
        bar.set_length(s.total_steps);
        bar.set_position(s.step);
        if let Some(e) = s.epsilon {
            last_eps = e;
        }
        bar.set_message(dp_step_message(s.loss, last_eps, a.private_log));
    })?;
    bar.finish();
    let p = cfg.privacy.expect("baseline is private");
    let eps = trained.state.ledger.epsilon(p.accountant, p.delta)?;
    let test_m = evaluate(trained.model.as_ref(), &test, device);
    let val_acc =
        (!val.is_empty()).then(|| evaluate(trained.model.as_ref(), &val, device).accuracy);
    let report = serde_json::json!({
        "command": "baseline",
        "data": name,
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
    let path = a.out.join("report.json");
    write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
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
    println!("report: {}", path.display());
    Ok(())
}
