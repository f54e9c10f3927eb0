//! Noise schedules: the variances β_t of the forward process and ᾱ_t = ∏_{s≤t} (1 − β_s).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which β schedule (`beta_schedule` in diffusers' schedulers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β evenly spaced from `start` to `end` (DDPM: 1e-4 to 0.02); diffusers "linear".
    Linear {
        /// β_0.
        start: f64,
        /// β_{T−1}.
        end: f64,
    },
    /// ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2) on s = t/T, β capped at 0.999 (Nichol & Dhariwal);
    /// diffusers "squaredcos_cap_v2".
    Cosine,
}

impl BetaSchedule {
    /// The DDPM linear schedule, β from 1e-4 to 0.02.
    pub const DDPM_LINEAR: Self = Self::Linear {
        start: 1e-4,
        end: 0.02,
    };
}

/// The discrete forward process over `T` training timesteps `0..T`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

/// The largest β of the cosine schedule.
const COSINE_MAX_BETA: f64 = 0.999;

impl NoiseSchedule {
    /// The schedule `kind` over `num_train_timesteps` steps.
    pub fn new(kind: BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        ensure!(
            num_train_timesteps >= 1,
            "a noise schedule needs at least one timestep"
        );
        let n = num_train_timesteps;
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear { start, end } => {
                ensure!(
                    0.0 < start && start <= end && end < 1.0,
                    "linear β schedule needs 0 < start <= end < 1, got {start}..{end}"
                );
                if n == 1 {
                    vec![start]
                } else {
                    let step = (end - start) / (n - 1) as f64;
                    (0..n).map(|i| start + step * i as f64).collect()
                }
            }
            BetaSchedule::Cosine => {
                let alpha_bar = |s: f64| {
                    ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (s1, s2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(s2) / alpha_bar(s1)).min(COSINE_MAX_BETA)
                    })
                    .collect()
            }
        };
        let alphas_cumprod = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// The DDPM linear schedule (β 1e-4 → 0.02) over `T` steps.
    pub fn linear(num_train_timesteps: usize) -> Result<Self> {
        Self::new(BetaSchedule::DDPM_LINEAR, num_train_timesteps)
    }

    /// The cosine schedule over `T` steps.
    pub fn cosine(num_train_timesteps: usize) -> Result<Self> {
        Self::new(BetaSchedule::Cosine, num_train_timesteps)
    }

    /// `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for t in `0..T`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_t for t in `0..T`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// ᾱ_t, with ᾱ_t = 1 for t < 0 (the clean image; diffusers' `set_alpha_to_one`).
    ///
    /// # Panics
    /// If `t >= T`.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 {
            1.0
        } else {
            self.alphas_cumprod[t as usize]
        }
    }

    /// ᾱ as a float32 tensor `[T]` on `device`.
    pub fn alphas_cumprod_tensor(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.alphas_cumprod)
            .to_kind(Kind::Float)
            .to_device(device)
    }

    /// Samples the forward process: `x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε` for per-row timesteps `t`
    /// (int64 `[B]` on `x0`'s device).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &Tensor) -> Tensor {
        let ab = self
            .alphas_cumprod_tensor(x0.device())
            .index_select(0, t)
            .to_kind(x0.kind());
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, x0.dim().saturating_sub(1)));
        let ab = ab.view(shape.as_slice());
        x0 * ab.sqrt() + noise * (-&ab + 1.0).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_endpoints_and_monotone() {
        let s = NoiseSchedule::linear(1000).unwrap();
        assert_eq!(s.num_train_timesteps(), 1000);
        assert!((s.betas()[0] - 1e-4).abs() < 1e-15);
        assert!((s.betas()[999] - 0.02).abs() < 1e-15);
        assert!(s.alphas_cumprod().windows(2).all(|w| w[1] < w[0]));
        assert_eq!(s.alpha_bar(-1), 1.0);
    }

    #[test]
    fn cosine_caps_beta() {
        let s = NoiseSchedule::cosine(1000).unwrap();
        assert!(s.betas().iter().all(|&b| b > 0.0 && b <= 0.999));
        assert_eq!(s.betas()[999], 0.999);
    }

    #[test]
    fn bad_schedules_are_errors() {
        assert!(NoiseSchedule::linear(0).is_err());
        assert!(NoiseSchedule::new(
            BetaSchedule::Linear {
                start: 0.1,
                end: 0.01
            },
            10
        )
        .is_err());
    }

    #[test]
    fn add_noise_matches_formula() {
        let s = NoiseSchedule::linear(1000).unwrap();
        let x0 = Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let eps = Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu)) * 2.0;
        let t = Tensor::from_slice(&[0i64, 999]);
        let xt = s.add_noise(&x0, &eps, &t);
        for (row, &tt) in [0i64, 999].iter().enumerate() {
            let ab = s.alpha_bar(tt);
            let want = ab.sqrt() + 2.0 * (1.0 - ab).sqrt();
            let got = xt.get(row as i64).mean(Kind::Double).double_value(&[]);
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
