//! Per-example gradient norms of a fine-tuning run's trainable parameters, measured on public
//! images, for choosing the clipping bound C without looking at the private data.
//!
//! DP-SGD adds noise of standard deviation σ·C to the sum of clipped per-example gradients, so a
//! C far above the gradients' norms buys nothing and drowns them: the noise is sized for
//! gradients that never occur. The norms depend on the model, the trainable subset and the image
//! size (the loss is a per-pixel mean), and differ about thirty-fold between adapter and full
//! fine-tuning. Measured on public images of the private data's kind, the scan costs
//! no privacy; measured on the private data, the choice of C would be outside the guarantee.

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind};

use super::finetune::Trainee;
use crate::data::dataset::Dataset;
use crate::diffusion::heldout::{image_draws, seeded_subset};
use crate::diffusion::loss::eps_loss_with;
use crate::dp::clip::CLIP_EPS;
use crate::dp::engine::{DpSgd, DpSgdConfig};

/// Options of [`clip_pass`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipScanConfig {
    /// Images measured: a seeded random subset of this size (all, when the data has fewer).
    pub limit: usize,
    /// Images per forward pass (the norms do not depend on it).
    pub batch: usize,
    /// Seed of the subset and of each image's timestep and noise draws.
    pub seed: u64,
}

impl Default for ClipScanConfig {
    /// 500 images in batches of 250, seed 0.
    fn default() -> Self {
        Self {
            limit: 500,
            batch: 250,
            seed: 0,
        }
    }
}

/// Per-example gradient norms, sorted ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientNorms {
    sorted: Vec<f64>,
}

impl GradientNorms {
    /// Wraps norms in any order (must be non-empty and finite).
    pub fn new(mut norms: Vec<f64>) -> Result<Self> {
        ensure!(!norms.is_empty(), "no gradient norm was measured");
        ensure!(
            norms.iter().all(|n| n.is_finite()),
            "a gradient norm is not finite"
        );
        norms.sort_by(f64::total_cmp);
        Ok(Self { sorted: norms })
    }

    /// The norms, ascending.
    pub fn sorted(&self) -> &[f64] {
        &self.sorted
    }

    /// The `p`-quantile (`0 ≤ p ≤ 1`) by the nearest-rank rule: the smallest measured norm with
    /// at least a fraction `p` of the norms at or below it.
    pub fn quantile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        let rank = (p.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }

    /// The fraction of examples whose gradient a bound `c` scales down (norm above `c`).
    pub fn fraction_clipped(&self, c: f64) -> f64 {
        let below = self.sorted.partition_point(|&n| n <= c);
        (self.sorted.len() - below) as f64 / self.sorted.len() as f64
    }
}

/// What one pass of the scan at clipping bound `c` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPass {
    /// The bound the gradients were clipped to.
    pub bound: f64,
    /// Each example's gradient norm before clipping.
    pub norms: GradientNorms,
    /// An estimate of `‖E[clip_c(g)]‖`, the norm of the expected clipped per-example gradient
    /// (the square root of an unbiased estimate of its square, clamped at zero): the signal a
    /// DP-SGD step at this bound averages. The step's noise has standard deviation `σ·c` per
    /// coordinate, so `signal / c` compares bounds at any σ, batch and model size: the larger,
    /// the more of a step is signal.
    pub signal: f64,
}

impl ClipPass {
    /// `signal / bound`, the figure to maximise.
    pub fn signal_per_bound(&self) -> f64 {
        self.signal / self.bound
    }
}

/// Clips the per-example gradients of `images` to `c` over exactly what `t` trains (as
/// [`prepare`] set it up for a fine-tuning config), with `k` timestep and noise draws per
/// example (the noise multiplicity K), and measures their norms and the clipped signal. Every
/// image is given the null class: public images carry none of the private labels. Each image's
/// draws come from its own seeded streams, as in the held-out loss, so the result depends
/// neither on the batch nor on libtorch's generator, and passes at several bounds see the same
/// gradients. The signal is estimated from the clipped sum `S` of n examples by its cross terms,
/// `(‖S‖² − Σ‖clip_c(g_i)‖²) / (n(n−1))`, square-rooted. `progress` gets the images done.
///
/// [`prepare`]: super::finetune::prepare
pub fn clip_pass(
    t: &Trainee,
    images: &Dataset,
    k: i64,
    scan: &ClipScanConfig,
    c: f64,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<ClipPass> {
    ensure!(
        c.is_finite() && c > 0.0,
        "the clipping bound must be positive, got {c}"
    );
    ensure!(!images.is_empty(), "the dataset holds no image");
    ensure!(scan.limit >= 1, "the image limit must be at least 1");
    ensure!(scan.batch >= 1, "the batch must be at least 1");
    ensure!(k >= 1, "the noise multiplicity must be at least 1, got {k}");
    let unet = &t.model.unet;
    let null = unet.null_class().context("the model has no null class")?;
    let shape = unet
        .sample_shape()
        .context("the model config has no sample_size")?;
    let data_shape = [images.channels, images.height, images.width].map(|v| v as i64);
    ensure!(
        shape == data_shape,
        "the images are {data_shape:?}, the model takes {shape:?}"
    );
    let schedule = &t.model.schedule;
    let t_total = schedule.num_train_timesteps();
    // No noise and a divisor of 1: finish_step returns the plain clipped sum.
    let mut engine = DpSgd::new(t.tensors(), DpSgdConfig::new(c, 0.0, 1.0), Some(0))?;
    let mut norms = Vec::new();
    for chunk in seeded_subset(images.len(), scan.limit, scan.seed).chunks(scan.batch) {
        let (x0, labels) = images.batch(chunk, device);
        let labels = labels.full_like(null);
        let draws = image_draws(chunk, &labels, k, scan.seed, t_total, images, device);
        let stats = engine.accumulate(k, || eps_loss_with(unet, schedule, &x0, &draws))?;
        norms.extend(stats.norms);
        progress(norms.len());
    }
    let sum_sq: f64 = engine
        .finish_step()?
        .iter()
        .map(|g| g.square().sum(Kind::Double).double_value(&[]))
        .sum();
    let n = norms.len() as f64;
    ensure!(n >= 2.0, "the signal estimate needs at least 2 images");
    let own: f64 = norms
        .iter()
        .map(|g| (g * (c / (g + CLIP_EPS)).min(1.0)).powi(2))
        .sum();
    Ok(ClipPass {
        bound: c,
        norms: GradientNorms::new(norms)?,
        signal: ((sum_sq - own) / (n * (n - 1.0))).max(0.0).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::GradientNorms;

    #[test]
    fn quantiles_and_clipped_fractions_follow_their_definitions() {
        let g = GradientNorms::new((1..=10).rev().map(f64::from).collect()).unwrap();
        assert_eq!(g.sorted()[0], 1.0);
        assert_eq!(g.quantile(0.0), 1.0);
        assert_eq!(g.quantile(0.1), 1.0);
        assert_eq!(g.quantile(0.11), 2.0);
        assert_eq!(g.quantile(0.5), 5.0);
        assert_eq!(g.quantile(0.9), 9.0);
        assert_eq!(g.quantile(1.0), 10.0);
        assert_eq!(g.fraction_clipped(0.5), 1.0);
        assert_eq!(g.fraction_clipped(5.0), 0.5);
        assert_eq!(g.fraction_clipped(5.5), 0.5);
        assert_eq!(g.fraction_clipped(10.0), 0.0);
        assert!(GradientNorms::new(vec![]).is_err());
        assert!(GradientNorms::new(vec![1.0, f64::NAN]).is_err());
    }
}
