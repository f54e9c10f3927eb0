//! The one-run audit bound against values computed with scipy's binomial distribution
//! (`scripts/fixtures/audit_bound.py`, committed as `tests/data/audit_vectors.json`).

use privacy::audit::{epsilon_lower_bound, p_value};
use serde_json::Value;

/// p-values are sums of binomial probabilities from log-gamma here and from scipy's own
/// routines there: they agree to about 1e-12 relative; 1e-8 leaves room across libms.
const P_TOL: f64 = 1e-8;
/// The bound is found by bisection to 1e-6 relative here (60 halvings in the fixture).
const EPS_TOL: f64 = 1e-5;

#[test]
fn audit_bound_matches_scipy() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/audit_vectors.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 16);
    let mut positive = 0;
    for c in cases {
        let n = |k: &str| c[k].as_u64().unwrap();
        let (m, r, v, delta) = (n("m"), n("r"), n("v"), c["delta"].as_f64().unwrap());
        for (eps, key) in [(1.0, "p_value_eps1"), (2.0, "p_value_eps2")] {
            let want = c[key].as_f64().unwrap();
            let got = p_value(m, r, v, eps, delta).unwrap();
            assert!(
                (got - want).abs() <= P_TOL * want.max(1e-300),
                "{c}: p at eps {eps} = {got}"
            );
        }
        let want = c["lower_bound_95"].as_f64().unwrap();
        let got = epsilon_lower_bound(m, r, v, delta, 0.05).unwrap();
        assert!(
            (got - want).abs() <= EPS_TOL * want.max(1e-3),
            "{c}: bound {got}"
        );
        positive += usize::from(want > 0.0);
    }
    assert!(positive >= 8, "the fixture should hold positive bounds");
}
