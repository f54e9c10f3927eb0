//! The random source behind DP noise and Poisson sampling.
//!
//! ChaCha20 seeded from the operating system by default. A fixed seed makes runs repeatable for
//! debugging and tests, but then anybody who knows the seed can subtract the noise, so such a
//! generator reports [`DpRng::is_secure`] = false and reports should say so. Each use (noise,
//! sampling) takes its own ChaCha stream, so seeding both with the same number does not correlate
//! them.
//!
//! A seeded run that is resumed must continue its streams, not restart them: restarting would add
//! the noise of step 1 again at the first resumed step, and the difference of two releases with the
//! same noise is the difference of their clipped sums with no noise at all. Checkpoints therefore
//! save [`StreamPositions`] and resumed runs seek to them.

use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
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

    /// How many 32-bit words a seeded generator has used (`None` when OS-seeded: a fresh
    /// OS-seeded generator is already independent of everything drawn before).
    pub fn position(&self) -> Option<u128> {
        (!self.secure).then(|| self.rng.get_word_pos())
    }

    /// Moves a seeded generator to `position` (from [`DpRng::position`]) in its stream.
    pub fn seek(&mut self, position: u128) -> Result<()> {
        ensure!(
            !self.secure,
            "an OS-seeded generator has no position to return to"
        );
        self.rng.set_word_pos(position);
        Ok(())
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

/// Where a seeded run's generators stand, saved in its checkpoints (words as decimal strings:
/// JSON numbers lose precision above 2^53).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPositions {
    /// Position of the Poisson-sampling stream.
    pub sampling: String,
    /// Position of the gradient-noise stream (`None` for training without DP noise).
    pub noise: Option<String>,
}

impl StreamPositions {
    /// The positions of `sampling` and `noise` when the run is seeded; `None` when OS-seeded.
    pub fn of(sampling: &DpRng, noise: Option<&DpRng>) -> Option<Self> {
        Some(Self {
            sampling: sampling.position()?.to_string(),
            noise: match noise {
                Some(n) => Some(n.position()?.to_string()),
                None => None,
            },
        })
    }

    /// Continues a resumed run's generators from `saved` (the checkpoint's positions). OS-seeded
    /// generators need nothing. A seeded run whose checkpoint has no positions is refused:
    /// restarting its streams would repeat the noise already released.
    pub fn restore(
        saved: Option<&Self>,
        sampling: &mut DpRng,
        noise: Option<&mut DpRng>,
    ) -> Result<()> {
        if sampling.is_secure() {
            return Ok(());
        }
        let saved = saved.context(
            "the checkpoint of this seeded run does not record where its random streams stopped; \
             resuming would repeat the noise of the first steps, so start it again in a new --out",
        )?;
        sampling.seek(parse_position(&saved.sampling)?)?;
        if let Some(n) = noise {
            let pos = saved
                .noise
                .as_deref()
                .context("the checkpoint records no position for the noise stream")?;
            n.seek(parse_position(pos)?)?;
        }
        Ok(())
    }
}

fn parse_position(s: &str) -> Result<u128> {
    s.parse()
        .with_context(|| format!("bad random-stream position '{s}' in the checkpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeked_stream_continues_where_the_first_stopped() {
        let like = Tensor::zeros([257], (tch::Kind::Double, tch::Device::Cpu));
        let mut a = DpRng::new(Some(9), Purpose::Noise);
        let _ = a.gaussian_like(&like, 1.0).unwrap();
        let _ = a.uniform();
        let saved = StreamPositions::of(&a, Some(&a)).unwrap();
        let next = a.gaussian_like(&like, 1.0).unwrap();

        let (mut b, mut c) = (
            DpRng::new(Some(9), Purpose::Noise),
            DpRng::new(Some(9), Purpose::Noise),
        );
        StreamPositions::restore(Some(&saved), &mut b, Some(&mut c)).unwrap();
        assert!(b.gaussian_like(&like, 1.0).unwrap().equal(&next));
        assert!(c.gaussian_like(&like, 1.0).unwrap().equal(&next));
        // without the seek the stream would restart: the first draw again, not `next`
        let fresh = DpRng::new(Some(9), Purpose::Noise)
            .gaussian_like(&like, 1.0)
            .unwrap();
        assert!(!fresh.equal(&next));
    }

    #[test]
    fn os_seeded_generators_have_no_position_and_need_none() {
        let mut os = DpRng::new(None, Purpose::Sampling);
        assert!(os.position().is_none());
        assert!(StreamPositions::of(&os, None).is_none());
        assert!(os.seek(0).is_err());
        StreamPositions::restore(None, &mut os, None).unwrap();
        let mut seeded = DpRng::new(Some(1), Purpose::Sampling);
        let err = StreamPositions::restore(None, &mut seeded, None).unwrap_err();
        assert!(err.to_string().contains("would repeat the noise"), "{err}");
    }
}
