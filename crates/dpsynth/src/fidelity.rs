//! Fidelity of a synthetic image set to a real one: FID and KID on the 2048-d pool3 features of
//! pytorch-fid's Inception ([`crate::nn::inception`]).
//!
//! - FID (Heusel et al. 2017): the Fréchet distance `|μ₁-μ₂|² + tr Σ₁ + tr Σ₂ - 2 tr √(Σ₁Σ₂)`
//!   of Gaussian fits (mean, unbiased covariance, as `np.cov`), in f64. pytorch-fid takes
//!   `scipy.linalg.sqrtm(Σ₁Σ₂)` and keeps the real part of its trace; the eigenvalues of Σ₁Σ₂
//!   are those of the symmetric PSD `√Σ₁ Σ₂ √Σ₁`, so the trace is computed here from two
//!   symmetric eigendecompositions (libtorch's `linalg_eigh`), with rounding-negative
//!   eigenvalues set to 0, which is what discarding sqrtm's imaginary part does.
//! - KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
//!   `k(x, y) = (x·y / d + 1)³`, averaged over random subsets as torch-fidelity and the
//!   authors' code do: by default 100 subsets of 1,000 images drawn without replacement from
//!   each set (fewer when a set is smaller), reported as mean and standard deviation (ddof 0).

use anyhow::{ensure, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::diffusion::heldout::seeded_subset;
use crate::nn::inception::InceptionV3;

/// How KID subsets are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KidSettings {
    /// Number of subsets averaged.
    pub subsets: usize,
    /// Images per subset from each set (capped at the smaller set's size).
    pub subset_size: usize,
}

impl Default for KidSettings {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
        }
    }
}

/// What [`measure`] reads and how.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FidelitySettings {
    /// At most this many images of each set (a seeded subset): Inception at 299×299 is slow on
    /// a CPU.
    pub max_images: usize,
    /// Seed of the image subsets and of the KID subsets.
    pub seed: u64,
    /// Images per Inception forward pass.
    pub batch_size: usize,
    /// KID subsets.
    pub kid: KidSettings,
}

impl Default for FidelitySettings {
    fn default() -> Self {
        Self {
            max_images: 2000,
            seed: 0,
            batch_size: 50,
            kid: KidSettings::default(),
        }
    }
}

/// KID over subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    /// Mean of the subsets' unbiased MMD².
    pub mean: f64,
    /// Their standard deviation (ddof 0).
    pub sd: f64,
    /// Number of subsets.
    pub subsets: usize,
    /// Images per subset from each set.
    pub subset_size: usize,
}

/// FID and KID between a synthetic and a real set, with what they were computed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Fréchet Inception distance.
    pub fid: f64,
    /// Kernel Inception distance.
    pub kid: Kid,
    /// Synthetic images used.
    pub synthetic_images: usize,
    /// Real images used.
    pub real_images: usize,
    /// The settings.
    pub settings: FidelitySettings,
    /// Wall time of the Inception passes and the statistics.
    pub seconds: f64,
}

/// Rows of `x` as a CPU f64 matrix `[n, d]`, checked.
fn matrix(x: &Tensor, what: &str) -> Result<Tensor> {
    ensure!(
        x.dim() == 2 && x.size()[0] >= 2,
        "{what}: need a feature matrix [n >= 2, d], got {:?}",
        x.size()
    );
    Ok(x.to_device(Device::Cpu).to_kind(Kind::Double))
}

/// Mean `[d]` and unbiased covariance `[d, d]` of the rows of `x`.
fn gaussian_fit(x: &Tensor) -> (Tensor, Tensor) {
    let n = x.size()[0] as f64;
    let mean = x.mean_dim(0, false, Kind::Double);
    let c = x - mean.unsqueeze(0);
    let cov = c.tr().matmul(&c) / (n - 1.0);
    (mean, cov)
}

/// √A of a symmetric PSD matrix, negative rounding eigenvalues set to 0.
fn sqrt_psd(a: &Tensor) -> Tensor {
    let (lambda, v) = a.linalg_eigh("L");
    (&v * lambda.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.tr())
}

/// FID between feature sets `x [n, d]` and `y [m, d]` (see the module documentation).
pub fn frechet_distance(x: &Tensor, y: &Tensor) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let (x, y) = (matrix(x, "FID")?, matrix(y, "FID")?);
    ensure!(
        x.size()[1] == y.size()[1],
        "FID: feature sets of different widths {} and {}",
        x.size()[1],
        y.size()[1]
    );
    let (mu1, s1) = gaussian_fit(&x);
    let (mu2, s2) = gaussian_fit(&y);
    let r1 = sqrt_psd(&s1);
    let m = r1.matmul(&s2).matmul(&r1);
    let m = (&m + m.tr()) / 2.0;
    let tr_covmean = m
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let diff = (&mu1 - &mu2).square().sum(Kind::Double).double_value(&[]);
    let traces = s1.trace().double_value(&[]) + s2.trace().double_value(&[]);
    let fid = diff + traces - 2.0 * tr_covmean;
    ensure!(fid.is_finite(), "FID: not finite ({fid})");
    Ok(fid)
}

/// The cubic polynomial kernel matrix `(a bᵀ / d + 1)³`.
fn cubic_kernel(a: &Tensor, b: &Tensor) -> Tensor {
    let d = a.size()[1] as f64;
    (a.matmul(&b.tr()) / d + 1.0).pow_tensor_scalar(3)
}

/// Unbiased MMD² from the three kernel matrices.
fn mmd2_from_kernels(kxx: &Tensor, kyy: &Tensor, kxy: &Tensor) -> f64 {
    let (m, n) = (kxx.size()[0] as f64, kyy.size()[0] as f64);
    let off_diagonal = |k: &Tensor| (k.sum(Kind::Double) - k.trace()).double_value(&[]);
    off_diagonal(kxx) / (m * (m - 1.0)) + off_diagonal(kyy) / (n * (n - 1.0))
        - 2.0 * kxy.sum(Kind::Double).double_value(&[]) / (m * n)
}

/// Unbiased MMD² between `x [m, d]` and `y [n, d]` with the cubic polynomial kernel.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let (x, y) = (matrix(x, "MMD")?, matrix(y, "MMD")?);
    ensure!(
        x.size()[1] == y.size()[1],
        "MMD: feature sets of different widths"
    );
    Ok(mmd2_from_kernels(
        &cubic_kernel(&x, &x),
        &cubic_kernel(&y, &y),
        &cubic_kernel(&x, &y),
    ))
}

/// KID between `x` and `y`: MMD² over `settings.subsets` seeded subsets.
pub fn kid(x: &Tensor, y: &Tensor, settings: &KidSettings, seed: u64) -> Result<Kid> {
    let _guard = tch::no_grad_guard();
    let (x, y) = (matrix(x, "KID")?, matrix(y, "KID")?);
    ensure!(
        x.size()[1] == y.size()[1],
        "KID: feature sets of different widths"
    );
    ensure!(settings.subsets > 0, "KID: need at least one subset");
    let (nx, ny) = (x.size()[0] as usize, y.size()[0] as usize);
    let m = settings.subset_size.min(nx).min(ny);
    ensure!(m >= 2, "KID: subsets need at least 2 images, got {m}");
    // kernel matrices once; each subset reads its block
    let (kxx, kyy, kxy) = (
        cubic_kernel(&x, &x),
        cubic_kernel(&y, &y),
        cubic_kernel(&x, &y),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |n: usize| {
        let idx: Vec<i64> = rand::seq::index::sample(&mut rng, n, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Tensor::from_slice(&idx)
    };
    let block =
        |k: &Tensor, rows: &Tensor, cols: &Tensor| k.index_select(0, rows).index_select(1, cols);
    let mut values = Vec::with_capacity(settings.subsets);
    for _ in 0..settings.subsets {
        let (ix, iy) = (draw(nx), draw(ny));
        values.push(mmd2_from_kernels(
            &block(&kxx, &ix, &ix),
            &block(&kyy, &iy, &iy),
            &block(&kxy, &ix, &iy),
        ));
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Ok(Kid {
        mean,
        sd: var.sqrt(),
        subsets: settings.subsets,
        subset_size: m,
    })
}

/// Inception features `[indices.len(), 2048]` (CPU, float) of images `indices` of `data`,
/// `batch_size` at a time; `progress` gets the count done after each batch.
pub fn features(
    net: &InceptionV3,
    data: &Dataset,
    indices: &[usize],
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor> {
    ensure!(batch_size > 0, "Inception batch size must be positive");
    let shape = [data.channels as i64, data.height as i64, data.width as i64];
    let mut out = Vec::new();
    let mut done = 0;
    for chunk in indices.chunks(batch_size) {
        let bytes: Vec<u8> = chunk
            .iter()
            .flat_map(|&i| data.image(i).iter().copied())
            .collect();
        let x = Tensor::from_slice(&bytes)
            .view([chunk.len() as i64, shape[0], shape[1], shape[2]])
            .to_kind(Kind::Float)
            / 255.0;
        out.push(net.features(&x)?.to_device(Device::Cpu));
        done += chunk.len();
        progress(done);
    }
    ensure!(
        !out.is_empty(),
        "no images to compute Inception features of"
    );
    Ok(Tensor::cat(&out, 0))
}

/// FID and KID between `synthetic` and `real` on seeded subsets of at most
/// `settings.max_images` images each; `progress` gets the images done of both sets together.
pub fn measure(
    net: &InceptionV3,
    synthetic: &Dataset,
    real: &Dataset,
    settings: &FidelitySettings,
    progress: &mut dyn FnMut(usize),
) -> Result<Fidelity> {
    let start = std::time::Instant::now();
    let syn_idx = seeded_subset(synthetic.len(), settings.max_images, settings.seed);
    let real_idx = seeded_subset(real.len(), settings.max_images, settings.seed + 1);
    ensure!(
        syn_idx.len() >= 2 && real_idx.len() >= 2,
        "FID/KID need at least 2 images in each set ({} synthetic, {} real)",
        syn_idx.len(),
        real_idx.len()
    );
    let fx = features(net, synthetic, &syn_idx, settings.batch_size, progress)?;
    let offset = syn_idx.len();
    let fy = features(net, real, &real_idx, settings.batch_size, &mut |n| {
        progress(offset + n)
    })?;
    Ok(Fidelity {
        fid: frechet_distance(&fx, &fy)?,
        kid: kid(&fx, &fy, &settings.kid, settings.seed)?,
        synthetic_images: syn_idx.len(),
        real_images: real_idx.len(),
        settings: *settings,
        seconds: start.elapsed().as_secs_f64(),
    })
}
