//! Held-out ε-prediction loss: how well a diffusion model fits a dataset.
//!
//! The loss averaged over uniformly drawn timesteps is, up to a weighting of the timesteps, the
//! model's variational bound on the data: the lower it is, the closer the model's distribution is
//! to the data's. Every model is scored on the same seeded draws of images, timesteps and noise,
//! so two models' figures differ by the models alone, and a pair of them can be compared more
//! finely than their standard errors suggest.
//!
//! Score public or test data only. A figure computed on private training data, and any choice
//! made from it, is outside every DP guarantee dpsynth gives.

use anyhow::{bail, ensure, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::loss::{eps_loss_with, Draws};
use super::noise::ImageNoise;
use super::{EpsModel, NoiseSchedule};
use crate::data::dataset::Dataset;

/// Which class label the model is given with each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    /// The null class for every image (a base pretrained on unlabelled data).
    Null,
    /// The image's own label (a model fine-tuned on data with the same classes).
    Labels,
}

/// Options of [`heldout_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldoutConfig {
    /// Images scored: a seeded random subset of this size (all, when the data has fewer).
    pub limit: usize,
    /// Timestep and noise draws per image (≥ 1).
    pub draws: i64,
    /// Images per forward pass (the draws do not depend on it).
    pub batch: usize,
    /// Seed of the subset and of the draws.
    pub seed: u64,
    /// Timestep ranges reported separately, of equal width (≥ 1).
    pub buckets: usize,
    /// The class label given with each image.
    pub conditioning: Conditioning,
}

impl Default for HeldoutConfig {
    /// 1,000 images, 4 draws each, batches of 250, seed 0, 4 buckets, null class.
    fn default() -> Self {
        Self {
            limit: 1000,
            draws: 4,
            batch: 250,
            seed: 0,
            buckets: 4,
            conditioning: Conditioning::Null,
        }
    }
}

/// The mean loss over the timesteps `start..end`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// First timestep of the range.
    pub start: usize,
    /// One past the last timestep.
    pub end: usize,
    /// Mean loss of the draws that fell in the range (NaN when none did).
    pub mean: f64,
    /// Number of draws that fell in the range.
    pub draws: usize,
}

/// The result of [`heldout_loss`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldoutLoss {
    /// Mean per-draw loss `mean_{C,H,W} (ε_θ(x_t, t, y) − ε)²`.
    pub mean: f64,
    /// Standard error of the mean over images (each image's draws averaged first).
    pub std_err: f64,
    /// Images scored.
    pub images: usize,
    /// Draws scored (images × draws per image).
    pub draws: usize,
    /// The mean by timestep range.
    pub buckets: Vec<Bucket>,
    /// Each scored image's mean over its draws, in scoring order. Two models scored with the
    /// same data, seed, limit and batch share images and draws, so their per-image differences
    /// give a paired comparison, much tighter than the two standard errors.
    pub per_image: Vec<f64>,
}

/// Scores `model` on `data`: the ε-prediction loss on a seeded subset, under `no_grad`.
/// `progress` is told how many images are done after every batch. Each image's timesteps and
/// noise come from its own ChaCha8 streams (seeded with `cfg.seed`, stream = the image's index in
/// `data`), so they depend neither on the batch nor on libtorch's global generator.
pub fn heldout_loss(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    data: &Dataset,
    cfg: &HeldoutConfig,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<HeldoutLoss> {
    ensure!(!data.is_empty(), "the dataset holds no image");
    ensure!(cfg.limit >= 1, "the image limit must be at least 1");
    ensure!(cfg.draws >= 1, "draws per image must be at least 1");
    ensure!(cfg.batch >= 1, "the batch must be at least 1");
    let t_total = schedule.num_train_timesteps();
    ensure!(
        (1..=t_total).contains(&cfg.buckets),
        "timestep buckets must be in 1..={t_total}, got {}",
        cfg.buckets
    );
    let null = model.null_class();
    match (cfg.conditioning, null) {
        (Conditioning::Null, None) => bail!("the model is unconditional: it has no null class"),
        (Conditioning::Labels, Some(n)) => ensure!(
            data.num_classes() as i64 <= n,
            "the data has {} classes, the model {n}",
            data.num_classes()
        ),
        _ => {}
    }
    let order = seeded_subset(data.len(), cfg.limit, cfg.seed);
    let width = t_total.div_ceil(cfg.buckets);
    let mut bucket_sum = vec![0.0; cfg.buckets];
    let mut bucket_n = vec![0usize; cfg.buckets];
    let mut per_image: Vec<f64> = Vec::with_capacity(order.len());
    let _guard = tch::no_grad_guard();
    for (b, chunk) in order.chunks(cfg.batch).enumerate() {
        let (x0, labels) = data.batch(chunk, device);
        let labels = match cfg.conditioning {
            Conditioning::Labels => labels,
            Conditioning::Null => labels.full_like(null.unwrap_or(0)),
        };
        let draws = image_draws(chunk, &labels, cfg.draws, cfg.seed, t_total, data, device);
        if b == 0 {
            let one = |t: &Tensor| t.narrow(0, 0, 1);
            model.check_input(&one(&x0), &one(&draws.t), &one(&draws.labels))?;
        }
        let rows = eps_loss_with(model, schedule, &x0, &draws).to_kind(Kind::Double);
        let rows = Vec::<f64>::try_from(rows.to_device(Device::Cpu))?;
        let ts = Vec::<i64>::try_from(draws.t.to_device(Device::Cpu))?;
        for (&loss, &t) in rows.iter().zip(&ts) {
            let k = (t as usize / width).min(cfg.buckets - 1);
            bucket_sum[k] += loss;
            bucket_n[k] += 1;
        }
        per_image.extend(
            rows.chunks(cfg.draws as usize)
                .map(|r| r.iter().sum::<f64>() / r.len() as f64),
        );
        progress(per_image.len());
    }
    let (mean, std_err) = mean_and_std_err(&per_image);
    let buckets = (0..cfg.buckets)
        .map(|k| Bucket {
            start: k * width,
            end: ((k + 1) * width).min(t_total),
            mean: bucket_sum[k] / bucket_n[k] as f64,
            draws: bucket_n[k],
        })
        .collect();
    Ok(HeldoutLoss {
        mean,
        std_err,
        images: per_image.len(),
        draws: per_image.len() * cfg.draws as usize,
        buckets,
        per_image,
    })
}

/// Seed offset of the timestep streams, so they are not the noise streams of the same images.
const TIMESTEP_STREAMS: u64 = 0x7469_6d65;

/// `limit` dataset indices (all, when `len` is smaller), in an order shuffled by `seed`.
pub fn seeded_subset(len: usize, limit: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order.truncate(limit);
    order
}

/// `k` (timestep, noise) pairs for each image at dataset `indices`, rows example-major, from the
/// image's own ChaCha8 streams under `seed` (independent of the batch and of libtorch's
/// generator).
pub fn image_draws(
    indices: &[usize],
    labels: &Tensor,
    k: i64,
    seed: u64,
    t_total: usize,
    data: &Dataset,
    device: Device,
) -> Draws {
    let rows = indices.len() as i64 * k;
    let shape = [data.channels, data.height, data.width].map(|v| v as i64);
    let mut noise = ImageNoise::for_images(seed, indices, shape);
    let per_draw: Vec<Tensor> = (0..k).map(|_| noise.next(device)).collect();
    let t: Vec<i64> = indices
        .iter()
        .flat_map(|&i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(TIMESTEP_STREAMS));
            rng.set_stream(i as u64);
            (0..k).map(move |_| rng.gen_range(0..t_total as i64))
        })
        .collect();
    Draws {
        t: Tensor::from_slice(&t).to_device(device),
        noise: Tensor::stack(&per_draw, 1).flatten(0, 1),
        labels: labels.repeat_interleave_self_int(k, 0, Some(rows)),
    }
}

/// The mean of `a − b` over paired per-image losses and its standard error: how much worse
/// (positive) or better model `a` scores than model `b` on the same images and draws.
pub fn paired_difference(a: &[f64], b: &[f64]) -> Result<(f64, f64)> {
    ensure!(
        a.len() == b.len() && !a.is_empty(),
        "paired losses need the same, non-zero number of images, got {} and {}",
        a.len(),
        b.len()
    );
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    Ok(mean_and_std_err(&d))
}

/// The mean of non-empty `values` and its standard error (sample variance; 0 for one value).
fn mean_and_std_err(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, (var / n).sqrt())
}
