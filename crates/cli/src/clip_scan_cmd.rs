//! `dpsynth clip-scan`: per-example gradient norms of a fine-tuning setup on public images, to
//! choose the clipping bound C at no privacy cost.

use std::path::Path;

use crate::finetune_cmd::TrainableArgs;
use crate::loss_cmd::ensure_images_fit;
use crate::progress::Progress;
use anyhow::{ensure, Context, Result};
use clap::Args;
use dpsynth::data::{self, catalog::spec_help};
use dpsynth::train::clip_scan::{clip_pass, ClipScanConfig};
use dpsynth::train::finetune::prepare;
use tch::{Device, Tensor};

#[derive(Args)]
pub struct ClipScanArgs {
    #[command(flatten)]
    pub trainable: TrainableArgs,
    #[arg(long, help = format!("Public images of the private data's kind (never the private \
        training set: a C chosen from it is outside the DP guarantee): {}", spec_help()))]
    pub data: String,
    /// Images measured: a seeded random subset of this size.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Images per forward pass (the norms do not depend on it).
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Seed of the subset, of the draws and of the adapters' initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Clipping bounds to compare, comma-separated (default: 1 and the 50th, 25th and 10th
    /// percentiles of the norms, rounded down). Each costs one more pass over the images.
    #[arg(long, value_delimiter = ',')]
    pub clip: Vec<f64>,
}

/// The quantiles printed.
const QUANTILES: [f64; 7] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

/// Runs `dpsynth clip-scan`.
pub fn run(a: ClipScanArgs, data_dir: &Path, device: Device) -> Result<()> {
    ensure!(
        a.clip.iter().all(|c| c.is_finite() && *c > 0.0),
        "--clip: every bound must be positive, got {:?}",
        a.clip
    );
    ensure!(
        a.limit >= 2,
        "--limit: the scan needs at least 2 images, got {}",
        a.limit
    );
    ensure!(a.batch >= 1, "--batch must be at least 1");
    let images = data::load(&a.data, data_dir)?;
    let tr = &a.trainable;
    let cfg = tr.config(1.0, 1e-5, Default::default());
    // The adapters' random initialisation comes from libtorch's generator.
    tch::manual_seed(a.seed as i64);
    let t = prepare(&tr.base, &cfg, None, device)?;
    ensure_images_fit(&t.model.unet, &tr.base, &images, &a.data)?;
    let scan = ClipScanConfig {
        limit: a.limit,
        batch: a.batch,
        seed: a.seed,
    };
    let limit = a.limit.min(images.len());
    let pass = |c: f64| {
        let bar = Progress::new(limit as u64, "images");
        bar.set_message(format!("clipped at C = {c}"));
        let p = clip_pass(
            &t,
            &images,
            cfg.noise_multiplicity,
            &scan,
            c,
            device,
            &mut |n| bar.set_position(n as u64),
        )
        .with_context(|| format!("--data {} on the model at {}", a.data, tr.base.display()));
        bar.finish();
        p
    };
    let first = pass(a.clip.first().copied().unwrap_or(1.0))?;
    let norms = &first.norms;
    let params: usize = t.tensors().iter().map(Tensor::numel).sum();
    println!(
        "per-example gradient norms, mode {} ({params} trainable parameters), K = {}, on {} \
         images of {}:",
        cfg.mode,
        cfg.noise_multiplicity,
        norms.sorted().len(),
        a.data
    );
    for p in QUANTILES {
        println!("  {:>5.1}%  {:.4e}", 100.0 * p, norms.quantile(p));
    }
    let rest: Vec<f64> = if a.clip.is_empty() {
        let mut q: Vec<f64> = [0.5, 0.25, 0.1]
            .map(|p| round_down(norms.quantile(p)))
            .into_iter()
            .filter(|c| *c > 0.0 && *c != first.bound)
            .collect();
        q.dedup(); // descending already: the quantiles fall
        q
    } else {
        a.clip[1..].to_vec()
    };
    let mut rows = vec![(
        first.bound,
        norms.fraction_clipped(first.bound),
        first.signal_per_bound(),
    )];
    for c in rest {
        let p = pass(c)?;
        rows.push((c, norms.fraction_clipped(c), p.signal_per_bound()));
    }
    let best = rows.iter().map(|r| r.2).fold(0.0, f64::max);
    println!("bound C      clipped  signal/C  (relative)");
    for (c, clipped, snr) in rows {
        println!(
            "  {c:<10} {:>6.1}%  {snr:.3e}  {:>9.3}",
            100.0 * clipped,
            if best > 0.0 { snr / best } else { 0.0 }
        );
    }
    println!(
        "signal/C: the norm of the expected clipped gradient over C. A DP-SGD step's noise has \
         standard deviation sigma*C per coordinate, so at any sigma, batch and model size the \
         bound with the largest signal/C gives the least noisy steps. Pick it for --clip."
    );
    Ok(())
}

/// `x` rounded down to one significant digit (0.0083 -> 0.008), for a bound one can type.
fn round_down(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powf(x.log10().floor());
    let v = (x / scale).floor() * scale;
    // Print-stable: 0.008 rather than 0.007999999.
    format!("{v:.1e}").parse().unwrap_or(v)
}
