//! Public API behaviour: accountant names, ledger bookkeeping, validation.

use privacy::{epsilon, pld, Accountant, DpEvent, Ledger, PrivacyError};

fn ev(q: f64, sigma: f64, steps: u64) -> DpEvent {
    DpEvent {
        sample_rate: q,
        noise_multiplier: sigma,
        steps,
    }
}

#[test]
fn accountant_parses_displays_and_serialises() {
    assert_eq!(Accountant::default(), Accountant::Pld);
    assert_eq!("rdp".parse::<Accountant>().unwrap(), Accountant::Rdp);
    assert_eq!(" PLD ".parse::<Accountant>().unwrap(), Accountant::Pld);
    let err = "moments".parse::<Accountant>().unwrap_err();
    assert!(err.to_string().contains("moments"), "{err}");
    assert_eq!(Accountant::Rdp.to_string(), "rdp");
    assert_eq!(Accountant::Pld.to_string(), "pld");
    assert_eq!(serde_json::to_string(&Accountant::Rdp).unwrap(), "\"rdp\"");
    let a: Accountant = serde_json::from_str("\"pld\"").unwrap();
    assert_eq!(a, Accountant::Pld);
}

#[test]
fn ledger_merges_equal_events_and_round_trips_json() {
    let mut ledger = Ledger::new();
    ledger.record(0.01, 1.0, 100);
    ledger.record(0.01, 1.0, 50);
    ledger.record(0.02, 1.0, 10);
    ledger.record(0.02, 1.0, 0);
    ledger.record(0.01, 1.0, 5);
    assert_eq!(
        ledger.events,
        vec![ev(0.01, 1.0, 150), ev(0.02, 1.0, 10), ev(0.01, 1.0, 5)]
    );
    assert_eq!(ledger.total_steps(), 165);
    let json = serde_json::to_string(&ledger).unwrap();
    assert!(json.contains("\"sample_rate\":0.01"), "{json}");
    let back: Ledger = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ledger);
}

#[test]
fn empty_and_free_ledgers_cost_nothing() {
    for acc in [Accountant::Rdp, Accountant::Pld] {
        assert_eq!(Ledger::new().epsilon(acc, 1e-5).unwrap(), 0.0);
        assert_eq!(epsilon(acc, &[ev(0.0, 1.0, 1000)], 1e-5).unwrap(), 0.0);
        assert_eq!(epsilon(acc, &[ev(0.3, 1.0, 0)], 1e-5).unwrap(), 0.0);
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    // A checkpoint split into two events must cost the same as one event.
    for acc in [Accountant::Rdp, Accountant::Pld] {
        let whole = epsilon(acc, &[ev(0.01, 1.1, 3000)], 1e-5).unwrap();
        let split = epsilon(acc, &[ev(0.01, 1.1, 1200), ev(0.01, 1.1, 1800)], 1e-5).unwrap();
        assert!(
            ((whole - split) / whole).abs() < 1e-3,
            "{acc}: {whole} vs {split}"
        );
    }
}

#[test]
fn epsilon_grows_with_steps_and_shrinks_with_noise() {
    for acc in [Accountant::Rdp, Accountant::Pld] {
        let a = epsilon(acc, &[ev(0.01, 1.0, 1000)], 1e-5).unwrap();
        let b = epsilon(acc, &[ev(0.01, 1.0, 2000)], 1e-5).unwrap();
        let c = epsilon(acc, &[ev(0.01, 1.5, 1000)], 1e-5).unwrap();
        assert!(b > a && c < a, "{acc}: {a} {b} {c}");
        let ab = epsilon(acc, &[ev(0.01, 1.0, 1000), ev(0.01, 1.5, 1000)], 1e-5).unwrap();
        assert!(ab > a, "{acc}: composition must cost more");
    }
}

#[test]
fn extreme_but_valid_inputs_do_not_panic() {
    let extremes = [
        ev(1.0, 1e-3, 1),
        ev(0.5, 0.01, 1000),
        ev(1.0, 1e4, 1),
        ev(0.999_999, 0.3, 1000),
        ev(1e-9, 1e4, u64::MAX / 2),
    ];
    for e in extremes {
        let eps = epsilon(Accountant::Rdp, &[e], 1e-5).unwrap();
        assert!(eps >= 0.0 && !eps.is_nan(), "RDP {e:?}: {eps}");
        // PLD on a small grid budget, so the grid-enlarging path is exercised
        // without the cost of the default 2^21 points: an answer or an error
        // (astronomical step counts), never a panic or NaN.
        let config = pld::PldConfig {
            max_grid_points: 1 << 15,
            ..Default::default()
        };
        match pld::epsilon_with_config(&[e], 1e-5, &config) {
            Ok(eps) => assert!(eps >= 0.0 && !eps.is_nan(), "PLD {e:?}: {eps}"),
            Err(err) => assert!(e.steps > 1_000_000, "PLD {e:?}: {err}"),
        }
    }
    // A full-batch Gaussian with μ = 1/σ = 1000 has ε ≈ μ²/2 + μ·z(δ).
    let eps = epsilon(Accountant::Pld, &[ev(1.0, 1e-3, 1)], 1e-5).unwrap();
    assert!((500_000.0..510_000.0).contains(&eps), "{eps}");
}

#[test]
fn invalid_inputs_are_errors_with_clear_messages() {
    for acc in [Accountant::Rdp, Accountant::Pld] {
        let err = epsilon(acc, &[ev(1.5, 1.0, 10)], 1e-5).unwrap_err();
        assert_eq!(err.to_string(), "sample rate must be in [0, 1], got 1.5");
        for bad in [ev(-0.1, 1.0, 10), ev(f64::NAN, 1.0, 10)] {
            assert!(matches!(
                epsilon(acc, &[bad], 1e-5),
                Err(PrivacyError::InvalidParameter {
                    name: "sample rate",
                    ..
                })
            ));
        }
        for sigma in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = epsilon(acc, &[ev(0.1, sigma, 10)], 1e-5).unwrap_err();
            assert!(
                err.to_string().starts_with("noise multiplier must be"),
                "{err}"
            );
        }
        for delta in [0.0, 1.0, -1e-5, 2.0, f64::NAN] {
            let err = epsilon(acc, &[ev(0.1, 1.0, 10)], delta).unwrap_err();
            assert!(
                err.to_string().starts_with("delta must be in (0, 1)"),
                "{err}"
            );
        }
        // Invalid events are reported even when they cost nothing.
        assert!(epsilon(acc, &[ev(0.0, -1.0, 0)], 1e-5).is_err());
    }
}
