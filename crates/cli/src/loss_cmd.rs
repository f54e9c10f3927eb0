//! `dpsynth loss`: the held-out ε-prediction loss of a model folder on public or test images.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use dpsynth::data::Dataset;
use dpsynth::data::{self, catalog::spec_help};
use dpsynth::diffusion::heldout::{paired_difference, Conditioning, HeldoutConfig};
use dpsynth::fsutil::write_atomic;
use dpsynth::nn::unet::UNet;
use dpsynth::synth::{load_model_dir, model_heldout_loss};
use tch::Device;

/// The class label given with each image (`--labels`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelsArg {
    /// The null class for every image: for a base pretrained on unlabelled public data.
    Null,
    /// Each image's own label: for a model fine-tuned on data with the same classes.
    Own,
}

#[derive(Args)]
pub struct LossArgs {
    /// Model folder (as written by pretrain or finetune).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, help = format!("Public or test images to score (never the private training \
        set: a loss measured on it is outside the DP guarantee): {}", spec_help()))]
    pub data: String,
    /// Images scored: a seeded random subset of this size.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Timestep and noise draws per image.
    #[arg(long, default_value_t = 4)]
    pub draws: i64,
    /// Images per forward pass (the draws do not depend on it).
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Seed of the subset and the draws (compare models at one value).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timestep ranges of equal width reported separately.
    #[arg(long, default_value_t = 4)]
    pub buckets: usize,
    /// Class label given with each image.
    #[arg(long, value_enum, default_value = "null")]
    pub labels: LabelsArg,
    /// Where to write the result as JSON (optional).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A JSON result of an earlier `dpsynth loss --out` on the same --data, --limit, --draws
    /// and --seed: prints this model's loss minus that one's, paired image by image.
    #[arg(long)]
    pub against: Option<PathBuf>,
}

/// Runs `dpsynth loss`.
pub fn run(a: LossArgs, data_dir: &Path, device: Device) -> Result<()> {
    let against = a
        .against
        .as_deref()
        .map(|p| read_against(p, &a))
        .transpose()?;
    let model = load_model_dir(&a.model, device)?;
    let data = data::load(&a.data, data_dir)?;
    ensure_images_fit(&model.unet, &a.model, &data, &a.data)?;
    let conditioning = match a.labels {
        LabelsArg::Null => Conditioning::Null,
        LabelsArg::Own => {
            ensure!(
                data.class_names == model.classes,
                "--labels own: the classes of --data {} ({}) are not the model's ({}); use \
                 --labels null",
                a.data,
                data.class_names.join(", "),
                model.classes.join(", ")
            );
            Conditioning::Labels
        }
    };
    let cfg = HeldoutConfig {
        limit: a.limit,
        draws: a.draws,
        batch: a.batch,
        seed: a.seed,
        buckets: a.buckets,
        conditioning,
    };
    let bar = Progress::new(a.limit.min(data.len()) as u64, "images");
    let r = model_heldout_loss(&model, &data, &cfg, device, &mut |n| {
        bar.set_position(n as u64)
    })
    .with_context(|| format!("scoring {} on {}", a.model.display(), a.data))?;
    bar.finish();
    println!(
        "held-out loss {:.5} ± {:.5} (standard error) on {} images × {} draws of {}",
        r.mean, r.std_err, r.images, a.draws, a.data
    );
    for b in &r.buckets {
        println!(
            "  t in {:>4}..{:<4} {:.5} ({} draws)",
            b.start, b.end, b.mean, b.draws
        );
    }
    if let Some((path, other)) = &against {
        let (d, se) = paired_difference(&r.per_image, other)
            .with_context(|| format!("--against {}", path.display()))?;
        println!(
            "minus {}: {d:+.3e} ± {se:.1e} (paired standard error over {} images)",
            path.display(),
            r.images
        );
    }
    if let Some(path) = &a.out {
        let report = serde_json::json!({
            "command": "loss",
            "model": a.model,
            "data": a.data,
            "labels": conditioning,
            "seed": a.seed,
            "batch": a.batch,
            "limit": a.limit,
            "draws": a.draws,
            "result": r,
        });
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads the per-image losses of an earlier `--out` file, refusing one scored on other images
/// or draws.
fn read_against(path: &Path, a: &LossArgs) -> Result<(PathBuf, Vec<f64>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--against {}: not JSON", path.display()))?;
    let (data, seed, limit, draws) = (&v["data"], &v["seed"], &v["limit"], &v["draws"]);
    ensure!(
        data.as_str() == Some(a.data.as_str())
            && seed.as_u64() == Some(a.seed)
            && limit.as_u64() == Some(a.limit as u64)
            && draws.as_i64() == Some(a.draws),
        "--against {}: scored --data {data} --seed {seed} --limit {limit} --draws {draws}; this \
         run has --data {} --seed {} --limit {} --draws {}: the images or draws differ, so a \
         paired difference would mean nothing",
        path.display(),
        a.data,
        a.seed,
        a.limit,
        a.draws
    );
    let per_image: Vec<f64> = serde_json::from_value(v["result"]["per_image"].clone())
        .with_context(|| format!("--against {}: no result.per_image list", path.display()))?;
    Ok((path.to_path_buf(), per_image))
}

/// Fails, naming `--data` and the model folder, unless `data`'s images have the shape the U-Net
/// loaded from `model_dir` takes (shared with `clip-scan`).
pub fn ensure_images_fit(unet: &UNet, model_dir: &Path, data: &Dataset, spec: &str) -> Result<()> {
    let shape = unet.sample_shape();
    let data_shape = [data.channels, data.height, data.width].map(|v| v as i64);
    ensure!(
        shape.is_none_or(|s| s == data_shape),
        "--data {spec}: images are {data_shape:?} but the model at {} takes {:?}",
        model_dir.display(),
        shape.unwrap_or_default()
    );
    Ok(())
}
