//! `dpsynth pretrain`: non-private pretraining of the U-Net on public data.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use anyhow::Result;
use clap::Args;
use dpsynth::train::pretrain::{pretrain, PretrainConfig, PretrainRun};
use tch::Device;

#[derive(Args)]
pub struct PretrainArgs {
    /// TOML config: [model] (diffusers UNet2DModel keys), [schedule], [[data]], [train].
    #[arg(long)]
    config: PathBuf,
    /// Output folder: model/ (EMA weights, diffusers layout), checkpoint/, samples/, loss.png,
    /// report.json.
    #[arg(long, default_value = "out/pretrain")]
    out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Override train.steps of the config.
    #[arg(long)]
    steps: Option<u64>,
}

/// Runs `dpsynth pretrain`.
pub fn run(a: PretrainArgs, data_dir: &Path, device: Device) -> Result<()> {
    let mut cfg = PretrainConfig::load(&a.config)?;
    if let Some(s) = a.steps {
        anyhow::ensure!(s > 0, "--steps must be at least 1");
        cfg.train.steps = s;
    }
    let bar = Progress::new(cfg.train.steps, "steps");
    let mut smooth = None;
    let model_dir = pretrain(
        &cfg,
        &PretrainRun {
            data_dir,
            out: &a.out,
            resume: a.resume,
            device,
        },
        &mut |s| {
            let m: f64 = smooth.map_or(s.loss, |m: f64| 0.98 * m + 0.02 * s.loss);
            smooth = Some(m);
            bar.set_step(s.step);
            bar.set_message(format!("loss {m:.4}  {:.0} img/s", s.images_per_sec));
        },
    )?;
    bar.finish();
    println!("model: {}", model_dir.display());
    println!("loss plot: {}", a.out.join("loss.png").display());
    Ok(())
}
