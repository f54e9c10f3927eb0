//! Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism.
//!
//! RDP of one step follows Mironov, Talwar & Zhang (2019), "Rényi
//! Differential Privacy of the Sampled Gaussian Mechanism": integer orders by
//! the binomial expansion of A_α, fractional orders by its two-series
//! expansion (Sec. 3.3), all in log space. Composition adds RDP curves; the
//! conversion to (ε, δ) is Balle et al. 2020 (Prop. 12) / Canonne, Kamath &
//! Steinke 2020, as in dp_accounting's `compute_epsilon` and Opacus's
//! `get_privacy_spent`. Orders and numerical cut-offs match dp_accounting so
//! that results agree with it to floating-point accuracy.

use crate::special::{log_add, log_binom, log_erfc};
use crate::{DpEvent, PrivacyError};

/// dp_accounting's default orders: 1.1, 1.2, …, 10.9, then 11, …, 63, then
/// 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    orders.extend((11..64).map(|x| x as f64));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Terms of the fractional-order series computed before giving up on an order
/// (which then contributes ε = ∞, as in dp_accounting).
const MAX_FRACTIONAL_TERMS: usize = 1000;

/// log A_α for integer α ≥ 1 and 0 < q < 1 (binomial expansion).
fn log_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let a = alpha as f64;
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = i as f64;
        let term =
            log_binom(a, i) + i * log_q + (a - i) * log_1mq + (i * i - i) / (2.0 * sigma * sigma);
        log_add(acc, term)
    })
}

/// log A_α for fractional α > 1 and 0 < q < 1: the integrals over (−∞, z₀]
/// and [z₀, ∞) expanded as two series. Returns ∞ if they do not converge.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let s2 = sigma * sigma;
    let z0 = s2 * (1.0 / q - 1.0).ln() + 0.5;
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let j = alpha - i;
        let log_coef = log_binom(alpha, i);
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * s2) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * s2) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        // Stop once both series decrease and their terms are negligible.
        if log_s0 < last0 && log_s1 < last1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last0 = log_s0;
        last1 = log_s1;
    }
    f64::INFINITY
}

/// RDP of one Poisson-subsampled Gaussian step at order `alpha` > 1.
///
/// Inputs are assumed valid (q ∈ [0, 1], σ > 0); q = 0 gives 0 and q = 1
/// gives the plain Gaussian α / (2σ²).
pub fn rdp_step(sample_rate: f64, noise_multiplier: f64, alpha: f64) -> f64 {
    let (q, sigma) = (sample_rate, noise_multiplier);
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha as u64)
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// Total RDP of `events` at each of `orders` (sum over steps).
pub fn rdp_curve(events: &[DpEvent], orders: &[f64]) -> Vec<f64> {
    let mut total = vec![0.0; orders.len()];
    for e in events.iter().filter(|e| !e.is_free()) {
        for (t, &a) in total.iter_mut().zip(orders) {
            *t += e.steps as f64 * rdp_step(e.sample_rate, e.noise_multiplier, a);
        }
    }
    total
}

/// Smallest ε over the orders for an RDP curve at `delta` ∈ (0, 1):
/// ε = rdp − (log δ + log α)/(α − 1) + log((α − 1)/α), clamped at 0.
/// Orders ≤ 1.01 are skipped (the bound is unstable there); a curve so small
/// that δ² > 1 − e^{−rdp} is bounded by the KL route and gives ε = 0.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> f64 {
    let mut best = f64::INFINITY;
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best {
            best = eps;
        }
    }
    best.max(0.0)
}

/// ε at `delta` for the composition of `events` under the RDP accountant,
/// using [`default_orders`].
pub fn epsilon(events: &[DpEvent], delta: f64) -> Result<f64, PrivacyError> {
    crate::error::check_delta(delta)?;
    for e in events {
        e.validate()?;
    }
    let orders = default_orders();
    let rdp = rdp_curve(events, &orders);
    Ok(epsilon_from_rdp(&orders, &rdp, delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_match_dp_accounting() {
        let o = default_orders();
        assert_eq!(o.len(), 99 + 53 + 4);
        assert_eq!(o[0], 1.1);
        assert_eq!(o[98], 10.9);
        assert_eq!(o[99], 11.0);
        assert_eq!(*o.last().unwrap(), 1024.0);
    }

    #[test]
    fn full_batch_is_plain_gaussian() {
        assert_eq!(rdp_step(1.0, 2.0, 3.0), 3.0 / 8.0);
        assert_eq!(rdp_step(0.0, 2.0, 3.0), 0.0);
    }

    #[test]
    fn integer_and_fractional_series_agree_near_integers() {
        // A_α is continuous in α: the two expansions must meet.
        let (q, s) = (0.01, 1.0);
        let at_int = rdp_step(q, s, 5.0);
        let near = rdp_step(q, s, 5.0 + 1e-7);
        assert!(
            ((at_int - near) / at_int).abs() < 1e-4,
            "{at_int} vs {near}"
        );
    }
}
