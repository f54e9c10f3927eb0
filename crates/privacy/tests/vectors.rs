//! ε from both accountants against dp_accounting's reference values.

mod common;

use std::time::Instant;

use privacy::{pld, rdp, Accountant, DpEvent, Ledger};

/// RDP: same orders and formulas as dp_accounting, so 1% is generous.
const RDP_REL_TOL: f64 = 0.01;
/// PLD: at most 2% above the reference...
const PLD_REL_TOL: f64 = 0.02;
/// ...and never below it by more than the discretisation/round-off difference
/// documented in `privacy::pld` (same grid and algorithm as dp_accounting).
const PLD_UNDERSHOOT_REL: f64 = 1e-4;
const PLD_UNDERSHOOT_ABS: f64 = 1e-6;

fn rel_err(got: f64, want: f64) -> f64 {
    if want == 0.0 {
        got.abs()
    } else {
        (got - want).abs() / want
    }
}

#[test]
fn rdp_matches_dp_accounting() {
    let v = common::load();
    assert!(v.rdp.len() >= 150);
    let mut worst = 0.0f64;
    for case in &v.rdp {
        let got = rdp::epsilon(&[case.event()], case.delta).unwrap();
        let err = rel_err(got, case.epsilon);
        worst = worst.max(err);
        assert!(err <= RDP_REL_TOL, "{case:?}: got {got}");
    }
    eprintln!(
        "RDP: {} vectors, worst relative error {worst:.2e}",
        v.rdp.len()
    );
}

fn check_pld(got: f64, want: f64, what: &str) -> f64 {
    assert!(
        got <= want * (1.0 + PLD_REL_TOL),
        "{what}: got {got}, reference {want} (more than 2% above)"
    );
    assert!(
        got >= want * (1.0 - PLD_UNDERSHOOT_REL) - PLD_UNDERSHOOT_ABS,
        "{what}: got {got}, reference {want} (below the reference)"
    );
    rel_err(got, want)
}

#[test]
fn pld_matches_dp_accounting_and_beats_rdp() {
    let v = common::load();
    assert!(v.pld.len() >= 50);
    let mut worst = 0.0f64;
    let start = Instant::now();
    for case in &v.pld {
        let got = pld::epsilon(&[case.event()], case.delta).unwrap();
        worst = worst.max(check_pld(got, case.epsilon, &format!("{case:?}")));
        if case.steps >= 1000 {
            // PLD is tight; RDP is an upper bound that is never better here.
            let r = rdp::epsilon(&[case.event()], case.delta).unwrap();
            assert!(got <= r, "{case:?}: PLD {got} > RDP {r}");
        }
    }
    eprintln!(
        "PLD: {} vectors in {:.2?}, worst relative error {worst:.2e}",
        v.pld.len(),
        start.elapsed()
    );
}

#[test]
fn heterogeneous_ledgers_match_dp_accounting() {
    let v = common::load();
    assert!(!v.ledger.is_empty());
    for case in &v.ledger {
        let mut ledger = Ledger::new();
        for e in &case.events {
            ledger.record(e.sample_rate, e.noise_multiplier, e.steps);
        }
        let got_rdp = ledger.epsilon(Accountant::Rdp, case.delta).unwrap();
        assert!(
            rel_err(got_rdp, case.rdp_epsilon) <= RDP_REL_TOL,
            "{case:?}: RDP got {got_rdp}"
        );
        let got_pld = ledger.epsilon(Accountant::Pld, case.delta).unwrap();
        check_pld(got_pld, case.pld_epsilon, &format!("{case:?}"));
    }
}

#[test]
fn pld_at_100k_steps_is_fast() {
    let event = DpEvent {
        sample_rate: 0.01,
        noise_multiplier: 1.0,
        steps: 100_000,
    };
    let start = Instant::now();
    let eps = pld::epsilon(&[event], 1e-5).unwrap();
    let took = start.elapsed();
    eprintln!("PLD q=0.01 sigma=1 T=100000: eps={eps:.4} in {took:.2?}");
    assert!(eps.is_finite());
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
}
