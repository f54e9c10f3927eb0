//! Privacy loss and hockey-stick divergence of one Poisson-subsampled
//! Gaussian step, in each direction of the add/remove relation.
//!
//! With noise N(0, σ²) on a sum of sensitivity 1 and sampling probability q:
//! * remove: μ_upper = (1−q)·N(0, σ²) + q·N(−1, σ²), μ_lower = N(0, σ²);
//! * add:    μ_upper = N(0, σ²), μ_lower = (1−q)·N(0, σ²) + q·N(1, σ²).
//!
//! The privacy loss L(x) = ln(μ_upper(x)/μ_lower(x)) is decreasing in x in
//! both directions, so δ(ε) = μ_upper(X ≤ x_ε) − e^ε μ_lower(X ≤ x_ε) with
//! x_ε = L⁻¹(ε) is exact. Conventions (which direction is "upper", the tail
//! cut-off) follow dp_accounting so that the two agree.

use crate::special::{log_add, log_norm_cdf, norm_cdf};

/// Φ⁻¹(e^{−50}/2): the noise is cut at this many standard deviations, leaving
/// at most e^{−50} ≈ 2e-22 of μ_upper outside, which goes to +∞ loss.
pub(crate) const TRUNCATION_Z: f64 = -9.745_474_864_965_935;

/// Which neighbouring dataset is the "upper" distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The compared dataset has one example removed.
    Remove,
    /// The compared dataset has one example added.
    Add,
}

/// One Poisson-subsampled Gaussian step seen from one direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubsampledGaussian {
    q: f64,
    sigma: f64,
    direction: Direction,
}

/// ln(1 + (e^e − 1)/q): the loss without subsampling that gives loss `e`
/// after subsampling. Requires e > ln(1 − q).
fn unsubsampled_loss(e: f64, q: f64) -> f64 {
    if q == 1.0 {
        e
    } else if e < 1.0 {
        (e.exp_m1() / q).ln_1p()
    } else {
        e + (-(1.0 - q) * (-e).exp()).ln_1p() - q.ln()
    }
}

impl SubsampledGaussian {
    /// Requires 0 < q ≤ 1 and σ > 0 (checked by the caller).
    pub(crate) fn new(q: f64, sigma: f64, direction: Direction) -> Self {
        Self {
            q,
            sigma,
            direction,
        }
    }

    /// ln(q·e^{l} + 1 − q): subsampling applied to a loss `l`.
    fn subsample(&self, l: f64) -> f64 {
        if self.q == 1.0 {
            l
        } else {
            log_add(self.q.ln() + l, (-self.q).ln_1p())
        }
    }

    /// Privacy loss at output x (decreasing in x).
    pub(crate) fn privacy_loss(&self, x: f64) -> f64 {
        let s2 = self.sigma * self.sigma;
        match self.direction {
            Direction::Remove => self.subsample((-0.5 - x) / s2),
            Direction::Add => -self.subsample((x - 0.5) / s2),
        }
    }

    /// The largest x with privacy loss ≥ `eps`, for eps inside the range of
    /// the loss (ε > ln(1−q) for remove, ε < −ln(1−q) for add).
    fn inverse_privacy_loss(&self, eps: f64) -> f64 {
        let s2 = self.sigma * self.sigma;
        match self.direction {
            Direction::Remove => -0.5 - s2 * unsubsampled_loss(eps, self.q),
            Direction::Add => 0.5 + s2 * unsubsampled_loss(-eps, self.q),
        }
    }

    /// [lowest, highest] finite privacy loss kept after cutting the noise at
    /// [`TRUNCATION_Z`] standard deviations (around 0 and around the shifted
    /// mean); everything beyond the top goes to +∞.
    pub(crate) fn loss_bounds(&self) -> (f64, f64) {
        let cut = self.sigma * TRUNCATION_Z;
        let (lower_x, upper_x) = match self.direction {
            Direction::Remove => (cut - 1.0, -cut),
            Direction::Add => (cut, 1.0 - cut),
        };
        (self.privacy_loss(upper_x), self.privacy_loss(lower_x))
    }

    /// Exact hockey-stick divergence δ(ε) = sup_S μ_upper(S) − e^ε μ_lower(S).
    pub(crate) fn hockey_stick(&self, eps: f64) -> f64 {
        let (q, sigma) = (self.q, self.sigma);
        let log_1mq = (-q).ln_1p();
        match self.direction {
            Direction::Remove if q < 1.0 && eps <= log_1mq => {
                // μ_upper ≥ e^ε μ_lower everywhere.
                return -eps.exp_m1();
            }
            Direction::Add if q < 1.0 && eps >= -log_1mq => {
                // e^ε μ_lower ≥ μ_upper everywhere.
                return 0.0;
            }
            _ => {}
        }
        let x = self.inverse_privacy_loss(eps);
        let z = x / sigma;
        let c0 = norm_cdf(z);
        let delta = match self.direction {
            Direction::Remove => {
                let c1 = norm_cdf((x + 1.0) / sigma);
                let upper = (1.0 - q) * c0 + q * c1;
                upper - scaled(eps, c0, || log_norm_cdf(z))
            }
            Direction::Add => {
                let zm = (x - 1.0) / sigma;
                let cm = norm_cdf(zm);
                let lower = (1.0 - q) * c0 + q * cm;
                c0 - scaled(eps, lower, || {
                    if q == 1.0 {
                        log_norm_cdf(zm)
                    } else {
                        log_add(log_1mq + log_norm_cdf(z), q.ln() + log_norm_cdf(zm))
                    }
                })
            }
        };
        if delta.is_nan() {
            // Only reachable through overflow at absurd ε; be pessimistic.
            1.0
        } else {
            delta.clamp(0.0, 1.0)
        }
    }
}

/// e^ε·p, falling back to exp(ε + log p) (with log p computed by `log_p`)
/// when e^ε overflows or p has lost precision to underflow.
fn scaled(eps: f64, p: f64, log_p: impl FnOnce() -> f64) -> f64 {
    if eps < 700.0 && p > 1e-290 {
        eps.exp() * p
    } else {
        (eps + log_p()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_gaussian_matches_closed_form() {
        // δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) with μ = 1/σ.
        let sigma = 1.3;
        let mu = 1.0 / sigma;
        for dir in [Direction::Remove, Direction::Add] {
            let m = SubsampledGaussian::new(1.0, sigma, dir);
            for eps in [0.0, 0.5, 1.0, 3.0] {
                let want =
                    norm_cdf(-eps / mu + mu / 2.0) - eps.exp() * norm_cdf(-eps / mu - mu / 2.0);
                let got = m.hockey_stick(eps);
                assert!(
                    (got - want).abs() < 1e-14,
                    "{dir:?} eps={eps}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn loss_inverse_round_trips() {
        for dir in [Direction::Remove, Direction::Add] {
            let m = SubsampledGaussian::new(0.01, 0.8, dir);
            for x in [-3.0, -0.2, 0.4, 2.5] {
                let l = m.privacy_loss(x);
                let back = m.inverse_privacy_loss(l);
                assert!((back - x).abs() < 1e-8, "{dir:?} x={x}: {back}");
            }
        }
    }

    #[test]
    fn hockey_stick_is_non_increasing() {
        let m = SubsampledGaussian::new(0.05, 0.9, Direction::Remove);
        let (lo, hi) = m.loss_bounds();
        let mut prev = 1.0;
        let n = 2000;
        for i in 0..=n {
            let eps = lo + (hi - lo) * i as f64 / n as f64;
            let d = m.hockey_stick(eps);
            assert!(d <= prev + 1e-15);
            prev = d;
        }
    }
}
