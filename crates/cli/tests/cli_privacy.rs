//! `dpsynth privacy`: the JSON output carries the accountant's value (checked against the
//! dp_accounting reference for one case) and bad input fails cleanly.

mod common;

use common::dpsynth;

#[test]
fn epsilon_json_matches_dp_accounting() {
    let (code, out, err) = dpsynth(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // dp_accounting 0.6.0 PLDAccountant: 1.828244
    assert!((v["epsilon"].as_f64().unwrap() - 1.828244).abs() < 0.02 * 1.828244);
    assert_eq!(v["accountant"], "pld");
}

#[test]
fn sigma_meets_the_target() {
    let (code, out, err) = dpsynth(&[
        "privacy",
        "sigma",
        "--epsilon",
        "1",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--accountant",
        "rdp",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["epsilon"].as_f64().unwrap() <= 1.0);
    assert!(v["noise_multiplier"].as_f64().unwrap() > 1.0);
}

#[test]
fn bad_values_fail_cleanly() {
    let (code, _, err) = dpsynth(&[
        "privacy",
        "sigma",
        "--epsilon",
        "1",
        "--sample-rate",
        "1.5",
        "--steps",
        "10",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("sample rate must be in (0, 1]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = dpsynth(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.1",
        "--noise-multiplier",
        "1",
        "--steps",
        "5",
        "--accountant",
        "foo",
    ]);
    assert_eq!(code, 2, "clap rejects the flag");
    assert!(err.contains("unknown accountant"), "{err}");
}
