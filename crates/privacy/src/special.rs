//! Special functions in log space: normal CDF tails, erfc, log-binomials.

use std::f64::consts::{FRAC_1_SQRT_2, LN_2, PI};

/// log(exp(a) + exp(b)), exact for infinite arguments.
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// Standard normal CDF Φ(z).
pub(crate) fn norm_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z * FRAC_1_SQRT_2)
}

/// log Φ(z), accurate far into both tails.
pub(crate) fn log_norm_cdf(z: f64) -> f64 {
    if z > 0.0 {
        // Φ(z) = 1 − Φ(−z), with Φ(−z) ≤ 1/2.
        (-0.5 * libm::erfc(z * FRAC_1_SQRT_2)).ln_1p()
    } else if z > -37.0 {
        // erfc(26.2) ≈ 1e-300 is still a normal double.
        (0.5 * libm::erfc(-z * FRAC_1_SQRT_2)).ln()
    } else {
        // Asymptotic series: Φ(z) ≈ φ(z)/|z| · Σ (−1)^k (2k−1)!! / z^{2k};
        // at |z| ≥ 37 the first omitted term is below 1e-15.
        let w = 1.0 / (z * z);
        let series =
            1.0 - w * (1.0 - 3.0 * w * (1.0 - 5.0 * w * (1.0 - 7.0 * w * (1.0 - 9.0 * w))));
        -0.5 * z * z - (-z).ln() - 0.5 * (2.0 * PI).ln() + series.ln()
    }
}

/// log erfc(x), accurate for large positive x.
pub(crate) fn log_erfc(x: f64) -> f64 {
    // erfc(x) = 2 Φ(−x √2).
    LN_2 + log_norm_cdf(-x * std::f64::consts::SQRT_2)
}

/// log |C(n, k)| = lnΓ(n+1) − lnΓ(k+1) − lnΓ(n−k+1) for real n, k.
pub(crate) fn log_binom(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_norm_cdf_matches_direct_and_asymptotic_regimes() {
        // Values from scipy.special.log_ndtr.
        let cases = [
            (0.0, -std::f64::consts::LN_2),
            (-1.0, -1.841_021_645_009_263_4),
            (-10.0, -53.231_285_150_512_48),
            (-40.0, -804.608_442_013_753_9),
            (3.0, -0.001_350_809_964_748_192_5),
        ];
        for (z, want) in cases {
            let got = log_norm_cdf(z);
            assert!(
                ((got - want) / want).abs() < 1e-12,
                "log_norm_cdf({z}) = {got}, want {want}"
            );
        }
        // Continuity across the switch to the asymptotic series.
        let a = log_norm_cdf(-36.999_999);
        let b = log_norm_cdf(-37.000_001);
        assert!((a - b).abs() < 1e-4);
    }

    #[test]
    fn log_add_handles_infinities() {
        assert_eq!(log_add(f64::NEG_INFINITY, 1.0), 1.0);
        assert!((log_add(0.0, 0.0) - LN_2).abs() < 1e-15);
    }
}
