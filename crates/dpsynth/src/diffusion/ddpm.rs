//! DDPM ancestral sampling (Ho et al. 2020) with the "fixed small" posterior variance:
//! dpsynth's default sampler (ARCHITECTURE.md, "Sampler").

use tch::Tensor;

use super::sampler::{predict_x0, Step};
use super::NoiseSchedule;

/// One DDPM ancestral update from `t` to `t_prev` (`t_prev < 0` means the clean image):
/// returns `(x_{t_prev}, x̂0)`. `noise` is added with the posterior ("fixed small") variance
/// unless `t_prev < 0`.
pub fn ddpm_step(
    schedule: &NoiseSchedule,
    x: &Tensor,
    eps: &Tensor,
    (t, t_prev): (i64, i64),
    clip_sample: bool,
    noise: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let (ab, ab_prev) = (schedule.alpha_bar(t), schedule.alpha_bar(t_prev));
    let alpha = ab / ab_prev;
    let beta = 1.0 - alpha;
    let x0 = predict_x0(x, eps, ab, clip_sample);
    let c0 = ab_prev.sqrt() * beta / (1.0 - ab);
    let ct = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
    let mut out = &x0 * c0 + x * ct;
    if let (true, Some(z)) = (t_prev >= 0, noise) {
        let variance = ((1.0 - ab_prev) / (1.0 - ab) * beta).max(1e-20);
        out += z * variance.sqrt();
    }
    (out, x0)
}

/// The DDPM ancestral update rule.
pub struct Ddpm;

impl Step for Ddpm {
    fn stochastic(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        schedule: &NoiseSchedule,
        x: &Tensor,
        eps: &Tensor,
        t: (i64, i64),
        clip_sample: bool,
        noise: Option<&Tensor>,
    ) -> Tensor {
        ddpm_step(schedule, x, eps, t, clip_sample, noise).0
    }
}
