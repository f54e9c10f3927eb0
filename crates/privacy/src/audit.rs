//! Empirical lower bounds on ε from one training run (Steinke, Nasr and Jagielski, "Privacy
//! Auditing with One (1) Training Run", NeurIPS 2023).
//!
//! `m` canaries are each included in the training set independently with probability 1/2. After
//! training, an auditor guesses membership for `r` of them (abstaining on the rest) and gets `v`
//! right. If training is (ε, δ)-DP, the number of correct guesses is stochastically dominated by
//! Binomial(r, e^ε / (1 + e^ε)), up to a δ term (the paper's Theorem 5.2): [`p_value`] is the
//! probability of `v` or more correct guesses under that hypothesis, and [`epsilon_lower_bound`]
//! the largest ε the observation rejects at a given confidence. A bound above 0 proves that the
//! run is not (ε, δ)-DP for any smaller ε; it is a lower bound, typically far below the
//! accountant's upper bound, because one run and a simple membership score see little.

use crate::error::PrivacyError;
use crate::special::log_binom;

/// ln P[Binomial(r, q) = k].
fn log_pmf(r: u64, k: u64, q: f64) -> f64 {
    log_binom(r as f64, k as f64) + k as f64 * q.ln() + (r - k) as f64 * (-q).ln_1p()
}

/// Probability of `v` or more correct guesses out of `r` (of `m` canaries) if training is
/// (ε, δ)-DP: the paper's Algorithm (Appendix), P[Binomial(r, q) ≥ v] + 2mδ·α with
/// q = e^ε/(1+e^ε) and α = max over i of P[v − i ≤ Binomial(r, q) < v] / i. At most 1.
pub fn p_value(m: u64, r: u64, v: u64, epsilon: f64, delta: f64) -> Result<f64, PrivacyError> {
    if !(v <= r && r <= m) {
        return Err(PrivacyError::Audit(format!(
            "audit counts must satisfy correct ({v}) <= guesses ({r}) <= canaries ({m})"
        )));
    }
    if !(epsilon >= 0.0 && epsilon.is_finite() && (0.0..=1.0).contains(&delta)) {
        return Err(PrivacyError::Audit(format!(
            "audit hypothesis epsilon = {epsilon}, delta = {delta}: need epsilon >= 0 finite, \
             delta in [0, 1]"
        )));
    }
    let q = 1.0 / (1.0 + (-epsilon).exp());
    let pmf = |k: u64| log_pmf(r, k, q).exp();
    let tail: f64 = (v..=r).map(pmf).sum();
    let (mut alpha, mut below) = (0.0f64, 0.0f64);
    for i in 1..=v {
        below += pmf(v - i);
        alpha = alpha.max(below / i as f64);
    }
    Ok((tail + alpha * delta * 2.0 * m as f64).min(1.0))
}

/// The largest ε (to within 1e-6 relative, by bisection) at which `v` correct guesses out of
/// `r` (of `m` canaries) have a p-value below `significance` (0.05 for 95% confidence): training
/// is not (ε, δ)-DP for any smaller ε. 0 when even ε = 0 is not rejected.
pub fn epsilon_lower_bound(
    m: u64,
    r: u64,
    v: u64,
    delta: f64,
    significance: f64,
) -> Result<f64, PrivacyError> {
    if !(significance > 0.0 && significance < 1.0) {
        return Err(PrivacyError::Audit(format!(
            "audit significance {significance}: it must lie in (0, 1)"
        )));
    }
    let rejected = |eps: f64| p_value(m, r, v, eps, delta).map(|p| p < significance);
    if !rejected(0.0)? {
        return Ok(0.0);
    }
    // p_value grows with ε; find an ε it does not reject, then bisect
    let (mut lo, mut hi) = (0.0, 1.0);
    while rejected(hi)? {
        lo = hi;
        hi *= 2.0;
        if hi > 1e4 {
            return Ok(lo);
        }
    }
    while hi - lo > 1e-6 * hi {
        let mid = 0.5 * (lo + hi);
        if rejected(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The guess sizes (k+, k−) an auditor of `m` canaries tries, tested together under one union
/// bound by [`audit`]: k ∈ {10, 25, 50, 100, 250, 500} with 2k ≤ m, each both as k "in" and k
/// "out" guesses and as k "in" guesses alone (when non-members and members never sampled tie
/// at the bottom, the "in" guesses alone are the informative ones).
pub fn standard_guesses(m: usize) -> Vec<(usize, usize)> {
    [10, 25, 50, 100, 250, 500]
        .into_iter()
        .filter(|&k| 2 * k <= m)
        .flat_map(|k| [(k, k), (k, 0)])
        .collect()
}

/// The auditor's guesses from membership scores (higher: more likely a member), and the bound
/// they give. For each (k+, k−) in `guesses`, it guesses "in" for the k+ highest scores and
/// "out" for the k− lowest; the best bound over the list is reported at confidence
/// `1 − significance` overall (each pair is tested at `significance / guesses.len()`, a union
/// bound, so trying several does not overstate the result).
pub fn audit(
    scores: &[f64],
    included: &[bool],
    guesses: &[(usize, usize)],
    delta: f64,
    significance: f64,
) -> Result<AuditResult, PrivacyError> {
    if scores.len() != included.len() || scores.is_empty() {
        return Err(PrivacyError::Audit(format!(
            "audit: {} scores for {} canaries",
            scores.len(),
            included.len()
        )));
    }
    if scores.iter().any(|s| s.is_nan()) {
        return Err(PrivacyError::Audit(
            "audit: a membership score is NaN".into(),
        ));
    }
    let m = scores.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let per_test = significance / guesses.len().max(1) as f64;
    let mut best = AuditResult {
        epsilon: 0.0,
        guesses: 0,
        correct: 0,
        k_in: 0,
        k_out: 0,
        canaries: m,
    };
    for &(k_in, k_out) in guesses {
        if k_in + k_out > m {
            return Err(PrivacyError::Audit(format!(
                "audit: {k_in} + {k_out} guesses for {m} canaries"
            )));
        }
        let correct = order[..k_in].iter().filter(|&&i| included[i]).count()
            + order[m - k_out..].iter().filter(|&&i| !included[i]).count();
        let r = k_in + k_out;
        let eps = epsilon_lower_bound(m as u64, r as u64, correct as u64, delta, per_test)?;
        if eps > best.epsilon || best.guesses == 0 {
            best = AuditResult {
                epsilon: eps,
                guesses: r,
                correct,
                k_in,
                k_out,
                canaries: m,
            };
        }
    }
    Ok(best)
}

/// What an audit found.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AuditResult {
    /// The ε lower bound (0: nothing shown).
    pub epsilon: f64,
    /// Guesses made (k+ + k−).
    pub guesses: usize,
    /// Correct guesses.
    pub correct: usize,
    /// Canaries guessed "in" (highest scores).
    pub k_in: usize,
    /// Canaries guessed "out" (lowest scores).
    pub k_out: usize,
    /// Canaries.
    pub canaries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half the guesses right is what chance gives: no bound.
    #[test]
    fn chance_gives_no_bound() {
        assert_eq!(epsilon_lower_bound(1000, 100, 50, 0.0, 0.05).unwrap(), 0.0);
    }

    /// The bound is the ε at which the p-value crosses the significance level.
    #[test]
    fn the_bound_sits_where_the_p_value_crosses() {
        let eps = epsilon_lower_bound(1000, 100, 90, 1e-5, 0.05).unwrap();
        assert!(eps > 1.0, "{eps}");
        assert!(p_value(1000, 100, 90, eps * 0.999, 1e-5).unwrap() < 0.05);
        assert!(p_value(1000, 100, 90, eps * 1.001, 1e-5).unwrap() >= 0.05);
    }

    /// Perfect separation of members from non-members gives a large bound, and the union bound
    /// over several guess sizes lowers it only a little.
    #[test]
    fn perfect_scores_give_a_large_bound() {
        let included: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let scores: Vec<f64> = included
            .iter()
            .map(|&b| if b { 1.0 } else { 0.0 })
            .collect();
        let one = audit(&scores, &included, &[(100, 100)], 0.0, 0.05).unwrap();
        let four = audit(
            &scores,
            &included,
            &[(10, 10), (50, 50), (100, 100), (200, 200)],
            0.0,
            0.05,
        )
        .unwrap();
        assert_eq!(one.correct, 200);
        assert!(one.epsilon > 3.0, "{one:?}");
        assert!(four.epsilon >= one.epsilon * 0.9, "{four:?} {one:?}");
    }

    #[test]
    fn bad_counts_are_refused() {
        assert!(p_value(10, 20, 5, 1.0, 0.0).is_err());
        assert!(p_value(10, 5, 6, 1.0, 0.0).is_err());
        assert!(audit(&[1.0], &[true, false], &[(1, 0)], 0.0, 0.05).is_err());
        assert!(audit(&[f64::NAN], &[true], &[(1, 0)], 0.0, 0.05).is_err());
    }
}
