//! DDIM (Song et al. 2021): the deterministic sampler when η = 0, DDPM's variance when η = 1.

use tch::Tensor;

use super::sampler::{predict_x0, Step};
use super::NoiseSchedule;

/// One DDIM update from `t` to `t_prev` (`t_prev < 0` means the clean image): returns
/// `(x_{t_prev}, x̂0)`. `noise` (standard normal, shape of `x`) is used only when `eta > 0`.
pub fn ddim_step(
    schedule: &NoiseSchedule,
    x: &Tensor,
    eps: &Tensor,
    (t, t_prev): (i64, i64),
    eta: f64,
    clip_sample: bool,
    noise: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let (ab, ab_prev) = (schedule.alpha_bar(t), schedule.alpha_bar(t_prev));
    let x0 = predict_x0(x, eps, ab, clip_sample);
    let variance = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev);
    let std = eta * variance.max(0.0).sqrt();
    let dir = eps * (1.0 - ab_prev - std * std).max(0.0).sqrt();
    let mut out = &x0 * ab_prev.sqrt() + dir;
    if let (true, Some(z)) = (std > 0.0, noise) {
        out += z * std;
    }
    (out, x0)
}

/// The DDIM update rule with per-step noise scale `eta`.
pub struct Ddim {
    /// η: 0 deterministic, 1 DDPM's variance.
    pub eta: f64,
}

impl Step for Ddim {
    fn stochastic(&self) -> bool {
        self.eta > 0.0
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
        ddim_step(schedule, x, eps, t, self.eta, clip_sample, noise).0
    }
}
