//! Discrete privacy loss distributions on a grid, their composition, and
//! ε(δ) via the hockey-stick divergence.

use super::fft;
use super::mechanism::SubsampledGaussian;
use crate::PrivacyError;

/// A privacy loss distribution supported on {k·interval} ∪ {+∞}:
/// `probs[i]` is the mass at loss `(offset + i)·interval`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pmf {
    pub interval: f64,
    pub offset: i64,
    pub probs: Vec<f64>,
    pub inf_mass: f64,
}

/// The part of a self-composition that is kept: sums (relative to
/// `times × offset`) in `lo..=hi`; the rest has mass at most `dropped`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    pub lo: u64,
    pub hi: u64,
    pub dropped: f64,
}

impl Window {
    pub(crate) fn len(&self) -> u64 {
        self.hi - self.lo + 1
    }
}

impl Pmf {
    /// All mass at +∞ (the pessimistic answer when nothing else is possible).
    fn infinite(interval: f64) -> Self {
        Pmf {
            interval,
            offset: 0,
            probs: vec![0.0],
            inf_mass: 1.0,
        }
    }

    /// Pessimistic connect-the-dots discretisation (Doroshenko, Ghazi,
    /// Kamath, Kumar & Manurangsi 2022, Algorithm 1) of one mechanism on the
    /// grid k·interval covering its loss range.
    ///
    /// The masses are chosen so that the discrete δ(ε) equals the exact one at
    /// every grid point and interpolates linearly in e^ε in between. δ(ε) is
    /// convex in e^ε, so the chord lies above it: the discrete PLD dominates
    /// the true one for every ε (pessimistic), while the error is second
    /// order in the interval instead of the first-order bias of rounding each
    /// loss up. Mass beyond the top of the range sits at +∞.
    pub(crate) fn connect_the_dots(mech: &SubsampledGaussian, interval: f64) -> Self {
        let (lo, hi) = mech.loss_bounds();
        let k_lo = (lo / interval).floor();
        let k_hi = (hi / interval).ceil().max(k_lo);
        if !(k_lo.is_finite() && k_hi.is_finite()) || k_lo.abs() > 4e18 || k_hi.abs() > 4e18 {
            return Pmf::infinite(interval);
        }
        let (k_lo, k_hi) = (k_lo as i64, k_hi as i64);
        let mut deltas: Vec<f64> = (k_lo..=k_hi)
            .map(|k| mech.hockey_stick(k as f64 * interval))
            .collect();
        // δ(ε) is non-increasing; remove round-off wiggles.
        for i in 1..deltas.len() {
            deltas[i] = deltas[i].min(deltas[i - 1]);
        }
        let n = deltas.len();
        let inf_mass = deltas[n - 1];
        if n == 1 {
            return Pmf {
                interval,
                offset: k_lo,
                probs: vec![1.0 - inf_mass],
                inf_mass,
            };
        }
        let em1 = interval.exp_m1();
        let e = interval.exp();
        let mut probs = vec![0.0; n];
        probs[0] = 1.0 - deltas[0] + (deltas[1] - deltas[0]) / em1;
        for i in 1..n - 1 {
            probs[i] = ((deltas[i + 1] - deltas[i]) - e * (deltas[i] - deltas[i - 1])) / em1;
        }
        probs[n - 1] = (deltas[n - 1] - deltas[n - 2]) / (-interval).exp_m1();
        for p in probs.iter_mut() {
            *p = p.max(0.0);
        }
        Pmf {
            interval,
            offset: k_lo,
            probs,
            inf_mass,
        }
    }

    /// The window of sums kept when composing this PMF `times` times: each
    /// tail beyond it has mass ≤ tail/2 by a Chernoff bound
    /// P(S ≥ a) ≤ exp(times·K(λ) − λa), K the log-MGF, optimised over λ.
    ///
    /// For speed the MGF may be evaluated on blocks of the PMF with each
    /// block's mass moved to its outer end (which keeps the bound valid); the
    /// blocks are small enough that this widens the window by at most ~2%.
    pub(crate) fn self_compose_window(&self, times: u64, tail: f64) -> Window {
        let n = self.probs.len();
        let full_hi = (n as u64 - 1).saturating_mul(times);
        let full = Window {
            lo: 0,
            hi: full_hi,
            dropped: 0.0,
        };
        if times <= 1 || n == 1 || tail <= 0.0 {
            return full;
        }
        let total: f64 = self.probs.iter().sum();
        if total <= 0.0 {
            return full;
        }
        let t = times as f64;
        let mean = self
            .probs
            .iter()
            .enumerate()
            .map(|(i, p)| i as f64 * p)
            .sum::<f64>()
            / total;
        let var = self
            .probs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64 - mean).powi(2) * p)
            .sum::<f64>()
            / total;
        // Moving mass by up to `block` per step shifts the sum by times·block;
        // keep that within 2% of the window's half-width (≈ 8.3·√(times·var)).
        let block = ((0.166 * (var / t).sqrt()).floor() as usize).clamp(1, n);
        // Block masses; block b covers indices b·block .. b·block + block − 1
        // (the last block may be shorter, ending at n − 1).
        let masses: Vec<f64> = self.probs.chunks(block).map(|c| c.iter().sum()).collect();
        let nb = masses.len();
        let log_c = (2.0 / tail).ln();
        let top = (n - 1) as f64;
        let step = block as f64;
        // Upper tail: mass at block ends, K(λ) − λ·top = ln Σ m·e^{λ(end − top)},
        // summed from the top down with the factor e^{−λ·block} per block.
        let upper_bound = |lambda: f64| -> f64 {
            let mut s = masses[nb - 1];
            if nb > 1 {
                let ratio = (-lambda * step).exp();
                let first_end = ((nb - 1) * block - 1) as f64;
                let mut factor = (lambda * (first_end - top)).exp();
                for &m in masses[..nb - 1].iter().rev() {
                    if factor < 1e-300 {
                        break;
                    }
                    s += m * factor;
                    factor *= ratio;
                }
            }
            (t * (lambda * top + s.ln()) + log_c) / lambda
        };
        // Lower tail: mass at block starts, K(−λ) = ln Σ m·e^{−λ·start}.
        let lower_bound = |lambda: f64| -> f64 {
            let ratio = (-lambda * step).exp();
            let mut factor = 1.0;
            let mut s = 0.0;
            for &m in &masses {
                if factor < 1e-300 {
                    break;
                }
                s += m * factor;
                factor *= ratio;
            }
            -(t * s.ln() + log_c) / lambda
        };
        // Optimise over λ = λ₀·2^k: coarse steps, then quarter steps around
        // the best coarse one. λ₀ is optimal for a Gaussian-shaped PMF.
        let lambda0 = (2.0 * log_c / (t * var.max(1e-12))).sqrt();
        let optimise = |f: &dyn Fn(f64) -> f64, better: fn(f64, f64) -> bool| -> f64 {
            let mut best_k = 0.0;
            let mut best = f(lambda0);
            for k in (-12..=12).map(f64::from) {
                let v = f(lambda0 * k.exp2());
                if v.is_finite() && (!best.is_finite() || better(v, best)) {
                    best = v;
                    best_k = k;
                }
            }
            for dk in [-0.75, -0.5, -0.25, 0.25, 0.5, 0.75] {
                let v = f(lambda0 * (best_k + dk).exp2());
                if v.is_finite() && (!best.is_finite() || better(v, best)) {
                    best = v;
                }
            }
            best
        };
        let upper = optimise(&upper_bound, |a, b| a < b);
        let lower = optimise(&lower_bound, |a, b| a > b);
        let hi = if upper.is_finite() && upper < full_hi as f64 {
            upper.ceil().max(0.0) as u64
        } else {
            full_hi
        };
        let lo = if lower.is_finite() && lower > 0.0 {
            (lower.floor() as u64).min(hi)
        } else {
            0
        };
        Window {
            lo,
            hi,
            dropped: if lo == 0 && hi == full_hi { 0.0 } else { tail },
        }
    }

    /// This PMF composed with itself `times` times (FFT, spectrum raised to
    /// the power by repeated squaring), keeping `window`. The mass outside the
    /// window, bounded by `window.dropped`, is added at +∞ (pessimistic: it may
    /// also have aliased into the window).
    pub(crate) fn self_compose(&self, times: u64, window: Window) -> Result<Self, PrivacyError> {
        if times == 1 {
            return Ok(self.clone());
        }
        let offset = match (self.offset as i128)
            .checked_mul(times as i128)
            .map(|o| o + window.lo as i128)
            .and_then(|o| i64::try_from(o).ok())
        {
            Some(o) => o,
            None => return Ok(Pmf::infinite(self.interval)),
        };
        let keep = usize::try_from(window.len())
            .map_err(|_| PrivacyError::Numerical("composition window too large".into()))?;
        let len = fft::fast_len(keep.max(self.probs.len()));
        let cyclic = fft::self_convolve_cyclic(&self.probs, times, len)?;
        let start = (window.lo % len as u64) as usize;
        let probs: Vec<f64> = (0..keep).map(|j| cyclic[(start + j) % len]).collect();
        // 1 − (1 − inf)^times, plus whatever was cut off.
        let inf_composed = -(times as f64 * (-self.inf_mass).ln_1p()).exp_m1();
        Ok(Pmf {
            interval: self.interval,
            offset,
            probs,
            inf_mass: (inf_composed + window.dropped).min(1.0),
        })
    }

    /// The composition of two PMFs on the same grid (linear convolution),
    /// then tails of mass ≤ tail/2 each are cut: the lower one is moved up to
    /// the lowest kept loss and the upper one to +∞ (both pessimistic).
    pub(crate) fn compose(&self, other: &Pmf, tail: f64) -> Result<Self, PrivacyError> {
        let offset = match self.offset.checked_add(other.offset) {
            Some(o) => o,
            None => return Ok(Pmf::infinite(self.interval)),
        };
        let mut probs = fft::convolve(&self.probs, &other.probs)?;
        let mut inf_mass = self.inf_mass + other.inf_mass - self.inf_mass * other.inf_mass;
        let half = tail / 2.0;
        let mut left = 0;
        let mut left_mass = 0.0;
        while left + 1 < probs.len() && left_mass + probs[left] <= half {
            left_mass += probs[left];
            left += 1;
        }
        let mut right = probs.len();
        let mut right_mass = 0.0;
        while right > left + 1 && right_mass + probs[right - 1] <= half {
            right_mass += probs[right - 1];
            right -= 1;
        }
        probs.truncate(right);
        probs.drain(..left);
        probs[0] += left_mass;
        inf_mass = (inf_mass + right_mass).min(1.0);
        Ok(Pmf {
            interval: self.interval,
            offset: offset + left as i64,
            probs,
            inf_mass,
        })
    }

    /// Privacy loss of grid point i.
    fn loss(&self, i: usize) -> f64 {
        (self.offset + i as i64) as f64 * self.interval
    }

    /// Hockey-stick divergence δ(ε) = P[∞] + Σ_{L > ε} p_L (1 − e^{ε − L}).
    #[cfg(test)]
    pub(crate) fn delta_for_epsilon(&self, eps: f64) -> f64 {
        let finite: f64 = self
            .probs
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let l = self.loss(i);
                if l > eps {
                    -p * (eps - l).exp_m1()
                } else {
                    0.0
                }
            })
            .sum();
        (self.inf_mass + finite).min(1.0)
    }

    /// The smallest ε ≥ 0 with δ(ε) ≤ `delta` (∞ if the mass at +∞ alone
    /// exceeds `delta`). Between grid points δ(ε) = U − e^ε·W with U, W the
    /// masses (weighted by e^{−L} for W) above ε, so scanning the losses from
    /// the top and solving U − e^ε W = δ in each gap is exact.
    pub(crate) fn epsilon_for_delta(&self, delta: f64) -> f64 {
        if self.inf_mass > delta {
            return f64::INFINITY;
        }
        let mut upper = self.inf_mass;
        // W = w · e^{−reference}, rescaled as the scan goes down so that the
        // factors e^{reference − L} stay bounded.
        let mut w = 0.0f64;
        let mut reference = match self.probs.len() {
            0 => return 0.0,
            n => self.loss(n - 1),
        };
        for i in (0..self.probs.len()).rev() {
            let p = self.probs[i];
            if p <= 0.0 {
                continue;
            }
            let l = self.loss(i);
            if upper > delta && w > 0.0 {
                let eps = (upper - delta).ln() - w.ln() + reference;
                if eps >= l {
                    return eps.max(0.0);
                }
            }
            if reference - l > 300.0 {
                w *= (l - reference).exp();
                reference = l;
            }
            upper += p;
            w += p * (reference - l).exp();
        }
        if upper <= delta || w <= 0.0 {
            return 0.0;
        }
        ((upper - delta).ln() - w.ln() + reference).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mechanism::Direction;
    use super::*;

    #[test]
    fn connect_the_dots_reproduces_delta_on_the_grid() {
        let mech = SubsampledGaussian::new(0.02, 1.1, Direction::Remove);
        let interval = 1e-2;
        let pmf = Pmf::connect_the_dots(&mech, interval);
        let mass: f64 = pmf.probs.iter().sum::<f64>() + pmf.inf_mass;
        assert!((mass - 1.0).abs() < 1e-9, "mass {mass}");
        for k in [0i64, 3, 10, 50, 200] {
            let eps = k as f64 * interval;
            let exact = mech.hockey_stick(eps);
            let disc = pmf.delta_for_epsilon(eps);
            assert!((exact - disc).abs() < 1e-9, "eps={eps}: {exact} vs {disc}");
            // Between grid points the discrete curve is above (pessimistic).
            let mid = eps + interval / 2.0;
            assert!(pmf.delta_for_epsilon(mid) >= mech.hockey_stick(mid) - 1e-12);
        }
    }

    #[test]
    fn epsilon_for_delta_inverts_delta_for_epsilon() {
        let mech = SubsampledGaussian::new(0.1, 1.0, Direction::Remove);
        let pmf = Pmf::connect_the_dots(&mech, 1e-3);
        let pmf = pmf
            .self_compose(20, pmf.self_compose_window(20, 1e-15))
            .unwrap();
        for delta in [1e-3, 1e-5, 1e-7] {
            let eps = pmf.epsilon_for_delta(delta);
            let back = pmf.delta_for_epsilon(eps);
            assert!(((back - delta) / delta).abs() < 1e-8, "{delta}: {back}");
        }
    }

    #[test]
    fn self_compose_equals_repeated_compose() {
        let mech = SubsampledGaussian::new(0.2, 2.0, Direction::Add);
        let pmf = Pmf::connect_the_dots(&mech, 1e-3);
        let window = pmf.self_compose_window(4, 0.0);
        let fast = pmf.self_compose(4, window).unwrap();
        let mut slow = pmf.clone();
        for _ in 0..3 {
            slow = slow.compose(&pmf, 0.0).unwrap();
        }
        assert_eq!(fast.offset, slow.offset);
        for (a, b) in fast.probs.iter().zip(&slow.probs) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
