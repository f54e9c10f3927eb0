//! Noise calibration: the smallest noise multiplier meeting a privacy target.

use crate::error::{check_delta, check_epsilon, PrivacyError};
use crate::{epsilon, Accountant, DpEvent};

/// Smallest noise multiplier considered; if even this meets the target it is
/// returned.
pub const MIN_NOISE_MULTIPLIER: f64 = 1e-3;
/// Largest noise multiplier considered; a target not met here is unreachable.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e4;
/// Relative width of the final bracket.
pub const RELATIVE_TOLERANCE: f64 = 1e-3;

/// The smallest noise multiplier σ (to relative tolerance
/// [`RELATIVE_TOLERANCE`]) such that `steps` Poisson-subsampled Gaussian steps
/// with rate `sample_rate` satisfy ε(σ) ≤ `target_epsilon` at `delta`.
///
/// σ is first bracketed by expanding geometrically from a guess (for PLD,
/// the much cheaper RDP answer, which is slightly larger); then the bracket
/// [lo, hi] with ε(lo) > target ≥ ε(hi) is shrunk to hi/lo − 1 ≤ tolerance by
/// bisection in log σ, each split point placed by interpolating log ε
/// (and plain halving whenever that fails to halve the bracket). The upper end
/// is returned, so the target is always met. The search is limited to
/// [[`MIN_NOISE_MULTIPLIER`], [`MAX_NOISE_MULTIPLIER`]].
pub fn calibrate_noise(
    accountant: Accountant,
    target_epsilon: f64,
    delta: f64,
    sample_rate: f64,
    steps: u64,
) -> Result<f64, PrivacyError> {
    check_epsilon(target_epsilon)?;
    check_delta(delta)?;
    if !(sample_rate > 0.0 && sample_rate <= 1.0) {
        return Err(PrivacyError::invalid(
            "sample rate",
            "in (0, 1] for noise calibration",
            sample_rate,
        ));
    }
    if steps == 0 {
        return Err(PrivacyError::invalid(
            "steps",
            "at least 1 for noise calibration",
            0.0,
        ));
    }
    let eps_at = |sigma: f64| -> Result<f64, PrivacyError> {
        let event = DpEvent {
            sample_rate,
            noise_multiplier: sigma,
            steps,
        };
        epsilon(accountant, &[event], delta)
    };
    let unreachable = |epsilon_at_max: f64| PrivacyError::Unreachable {
        target_epsilon,
        delta,
        max_noise_multiplier: MAX_NOISE_MULTIPLIER,
        epsilon_at_max,
    };

    let guess = match accountant {
        Accountant::Rdp => 1.0,
        Accountant::Pld => {
            match calibrate_noise(Accountant::Rdp, target_epsilon, delta, sample_rate, steps) {
                Ok(sigma) => sigma,
                // PLD is tighter, so it may still succeed; check the far end.
                Err(PrivacyError::Unreachable { .. }) => {
                    let e = eps_at(MAX_NOISE_MULTIPLIER)?;
                    if e.is_nan() || e > target_epsilon {
                        return Err(unreachable(e));
                    }
                    MAX_NOISE_MULTIPLIER
                }
                Err(other) => return Err(other),
            }
        }
    };

    // Bracket: (σ, ε(σ)) pairs with ε(lo) > target ≥ ε(hi).
    let first = (guess, eps_at(guess)?);
    let (mut lo, mut hi);
    let mut factor = 1.25f64;
    if first.1 <= target_epsilon {
        hi = first;
        loop {
            if hi.0 <= MIN_NOISE_MULTIPLIER {
                return Ok(hi.0);
            }
            let s = (hi.0 / factor).max(MIN_NOISE_MULTIPLIER);
            let p = (s, eps_at(s)?);
            if p.1 <= target_epsilon {
                hi = p;
                factor *= factor;
            } else {
                lo = p;
                break;
            }
        }
    } else {
        lo = first;
        loop {
            if lo.0 >= MAX_NOISE_MULTIPLIER {
                return Err(unreachable(lo.1));
            }
            let s = (lo.0 * factor).min(MAX_NOISE_MULTIPLIER);
            let p = (s, eps_at(s)?);
            if p.1 <= target_epsilon {
                hi = p;
                break;
            }
            lo = p;
            factor *= factor;
        }
    }

    // Shrink the bracket (in log σ).
    let log_target = target_epsilon.ln();
    let mut stalls = 0;
    let mut moved_hi = true;
    while hi.0 / lo.0 - 1.0 > RELATIVE_TOLERANCE {
        let (a, b) = (lo.0.ln(), hi.0.ln());
        let width = b - a;
        // f = log ε − log target is positive at lo and ≤ 0 at hi.
        let (fa, fb) = (lo.1.ln() - log_target, hi.1.ln() - log_target);
        let split = if stalls < 2 && fa.is_finite() && fb.is_finite() && fa > fb {
            // Interpolated root, nudged towards the end that did not move
            // last (interpolation tends to approach the root from one side),
            // so an accurate estimate closes the bracket in a step or two.
            let nudge = 0.4 * RELATIVE_TOLERANCE;
            let root = a + fa / (fa - fb) * width;
            let aim = if moved_hi { root - nudge } else { root + nudge };
            aim.clamp(a + nudge, b - nudge)
        } else {
            stalls = 0;
            0.5 * (a + b)
        };
        let s = split.exp();
        let p = (s, eps_at(s)?);
        moved_hi = p.1 <= target_epsilon;
        if moved_hi {
            hi = p;
        } else {
            lo = p;
        }
        if hi.0.ln() - lo.0.ln() > 0.5 * width {
            stalls += 1;
        }
    }
    Ok(hi.0)
}
