//! Noise calibration: the returned σ meets the target and is (nearly) the
//! smallest that does; unreachable targets and bad inputs are errors.

mod common;

use privacy::{calibrate_noise, epsilon, Accountant, DpEvent, PrivacyError};

fn eps(acc: Accountant, q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
    let e = DpEvent {
        sample_rate: q,
        noise_multiplier: sigma,
        steps,
    };
    epsilon(acc, &[e], delta).unwrap()
}

#[test]
fn calibrated_sigma_is_smallest_meeting_target() {
    let v = common::load();
    assert!(!v.calibration.is_empty());
    for case in &v.calibration {
        let acc: Accountant = case.accountant.parse().unwrap();
        let (q, t, d, target) = (
            case.sample_rate,
            case.steps,
            case.delta,
            case.target_epsilon,
        );
        let sigma = calibrate_noise(acc, target, d, q, t).unwrap();
        assert!(
            eps(acc, q, sigma, t, d) <= target,
            "{case:?}: sigma {sigma} misses target"
        );
        assert!(
            eps(acc, q, sigma * 0.99, t, d) > target,
            "{case:?}: sigma {sigma} is not the smallest"
        );
        // dp_accounting's own calibration (tolerance 1e-4) agrees.
        let rel = (sigma - case.noise_multiplier).abs() / case.noise_multiplier;
        assert!(rel < 0.01, "{case:?}: got sigma {sigma}");
    }
}

#[test]
fn full_batch_calibration_matches_gaussian_rdp() {
    // q = 1, one step: RDP ε(σ) is explicit, so check against a direct scan.
    let sigma = calibrate_noise(Accountant::Rdp, 2.0, 1e-5, 1.0, 1).unwrap();
    assert!(eps(Accountant::Rdp, 1.0, sigma, 1, 1e-5) <= 2.0);
    assert!(eps(Accountant::Rdp, 1.0, sigma * 0.999, 1, 1e-5) > 2.0 - 1e-2);
}

#[test]
fn unreachable_target_is_an_error() {
    for acc in [Accountant::Rdp, Accountant::Pld] {
        match calibrate_noise(acc, 1e-6, 1e-5, 1.0, 100_000) {
            Err(PrivacyError::Unreachable { .. }) => {}
            other => panic!("{acc}: expected Unreachable, got {other:?}"),
        }
    }
}

#[test]
fn invalid_calibration_inputs_are_errors() {
    let acc = Accountant::Rdp;
    for (target, delta, q, steps) in [
        (0.0, 1e-5, 0.01, 100),
        (-1.0, 1e-5, 0.01, 100),
        (f64::NAN, 1e-5, 0.01, 100),
        (f64::INFINITY, 1e-5, 0.01, 100),
        (1.0, 0.0, 0.01, 100),
        (1.0, 1.0, 0.01, 100),
        (1.0, 1e-5, 0.0, 100),
        (1.0, 1e-5, 1.5, 100),
        (1.0, 1e-5, f64::NAN, 100),
        (1.0, 1e-5, 0.01, 0),
    ] {
        let r = calibrate_noise(acc, target, delta, q, steps);
        assert!(
            matches!(r, Err(PrivacyError::InvalidParameter { .. })),
            "({target}, {delta}, {q}, {steps}) gave {r:?}"
        );
    }
}
