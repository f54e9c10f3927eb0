//! The random source behind DP noise and Poisson sampling.
//!
//! ChaCha20 seeded from the operating system by default. A fixed seed makes runs repeatable for
//! debugging and tests, but then anybody who knows the seed can subtract the noise, so such a
//! generator reports [`DpRng::is_secure`] = false and reports should say so. Each use (noise,
//! sampling) takes its own ChaCha stream, so seeding both with the same number does not correlate
//! them.

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use tch::Tensor;

/// Which consumer a generator serves; selects the ChaCha stream when seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Gaussian noise added to gradients.
    Noise,
    /// Poisson subsampling of examples.
    Sampling,
}

/// A ChaCha20 generator that remembers whether it was seeded from the OS.
#[derive(Debug, Clone)]
pub struct DpRng {
    rng: ChaCha20Rng,
    secure: bool,
}

impl DpRng {
    /// OS-seeded when `seed` is `None` (secure), otherwise repeatable from `seed`.
    pub fn new(seed: Option<u64>, purpose: Purpose) -> Self {
        match seed {
            None => Self {
                rng: ChaCha20Rng::from_entropy(),
                secure: true,
            },
            Some(s) => {
                let mut rng = ChaCha20Rng::seed_from_u64(s);
                rng.set_stream(match purpose {
                    Purpose::Noise => 0,
                    Purpose::Sampling => 1,
                });
                Self { rng, secure: false }
            }
        }
    }

    /// False when the generator was seeded by the caller (its draws are predictable).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }

    /// A tensor shaped, typed and placed like `like` with i.i.d. `N(0, std²)` entries, drawn here
    /// in Rust (in f64) and copied to the tensor's device.
    pub fn gaussian_like(&mut self, like: &Tensor, std: f64) -> Result<Tensor> {
        ensure!(
            std.is_finite() && std >= 0.0,
            "noise std must be finite and non-negative, got {std}"
        );
        let n = like.numel();
        let draws: Vec<f64> = (0..n)
            .map(|_| std * self.rng.sample::<f64, _>(StandardNormal))
            .collect();
        Ok(Tensor::from_slice(&draws)
            .f_reshape(like.size())?
            .f_to_kind(like.kind())?
            .f_to_device(like.device())?)
    }
}
