//! DPM-Solver++ (2M) (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler` runs it by
//! default (`algorithm_type = "dpmsolver++"`, `solver_order = 2`, `solver_type = "midpoint"`,
//! `final_sigmas_type = "zero"`): a deterministic multistep solver of the diffusion ODE in
//! log-SNR time λ = log(α/σ), on the data prediction x̂0. The first step and the last (to σ = 0)
//! are first order (the last returns x̂0); the others use the last two x̂0 predictions. Parity
//! with diffusers is tested against a committed fixture (`tests/dpm_solver.rs`).

use tch::Tensor;

use super::sampler::Step;
use super::NoiseSchedule;

/// `(α_t, σ_t)` of the VP process at timestep `t`; `t < 0` is the clean end (α = 1, σ = 0).
fn alpha_sigma(schedule: &NoiseSchedule, t: i64) -> (f64, f64) {
    if t < 0 {
        (1.0, 0.0)
    } else {
        let ab = schedule.alpha_bar(t);
        (ab.sqrt(), (1.0 - ab).sqrt())
    }
}

/// The solver's memory between steps: the previous x̂0 prediction and its λ.
#[derive(Default)]
pub struct DpmState {
    previous: Option<(Tensor, f64)>,
}

/// One DPM-Solver++ (2M) update from `t` to `t_next` (`t_next < 0`: the clean image) given the
/// model's ε at `t`; returns `(x_{t_next}, x̂0)`. `state` carries the previous prediction; a
/// fresh state makes the step first order. `clip_sample` clamps x̂0 to [-1, 1] (diffusers: off).
pub fn dpm_step(
    schedule: &NoiseSchedule,
    x: &Tensor,
    eps: &Tensor,
    (t, t_next): (i64, i64),
    clip_sample: bool,
    state: &mut DpmState,
) -> (Tensor, Tensor) {
    let (alpha_s, sigma_s) = alpha_sigma(schedule, t);
    let mut x0 = (x - eps * sigma_s) / alpha_s;
    if clip_sample {
        x0 = x0.clamp(-1.0, 1.0);
    }
    let lambda_s = (alpha_s / sigma_s).ln();
    let out = if t_next < 0 {
        // σ = 0 at the end: e^{-h} = 0 and the step returns x̂0 (first order, as diffusers)
        x0.shallow_clone()
    } else {
        let (alpha_t, sigma_t) = alpha_sigma(schedule, t_next);
        let lambda_t = (alpha_t / sigma_t).ln();
        let h = lambda_t - lambda_s;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let d = match &state.previous {
            // second order (midpoint): D0 + ½ D1 with D1 = (m0 − m1) / r0, r0 = h_prev / h
            Some((x0_prev, lambda_prev)) => {
                let r0 = (lambda_s - lambda_prev) / h;
                &x0 + (&x0 - x0_prev) * (0.5 / r0)
            }
            None => x0.shallow_clone(),
        };
        x * (sigma_t / sigma_s) - d * phi
    };
    state.previous = Some((x0.shallow_clone(), lambda_s));
    (out, x0)
}

impl Step for DpmState {
    fn stochastic(&self) -> bool {
        false
    }

    fn step(
        &mut self,
        schedule: &NoiseSchedule,
        x: &Tensor,
        eps: &Tensor,
        t: (i64, i64),
        clip_sample: bool,
        _noise: Option<&Tensor>,
    ) -> Tensor {
        dpm_step(schedule, x, eps, t, clip_sample, self).0
    }
}
