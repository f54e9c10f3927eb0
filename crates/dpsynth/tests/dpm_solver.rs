//! DPM-Solver++ (2M) against diffusers' DPMSolverMultistepScheduler (the committed fixture of
//! `scripts/fixtures/dpm_solver.py`): the same "linspace" timesteps and the same trajectory for
//! 5, 10 and 25 steps, driven by the same made-up ε model.

use dpsynth::diffusion::dpm_solver::{dpm_step, DpmState};
use dpsynth::diffusion::sampler::{timesteps, Spacing};
use dpsynth::diffusion::NoiseSchedule;
use tch::{Kind, Tensor};

/// The fixture's ε model: eps(x, t) = 0.3 x cos(t / 97) + 0.2 sin(t / 53 + k), k the index.
fn eps_model(x: &Tensor, t: i64) -> Tensor {
    let k = Tensor::arange(x.numel() as i64, (Kind::Double, x.device())).reshape(x.size());
    x * (0.3 * (t as f64 / 97.0).cos()) + (k + t as f64 / 53.0).sin() * 0.2
}

#[test]
fn dpm_solver_matches_diffusers() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dpm_solver.json"
    ))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let schedule = NoiseSchedule::linear(1000).unwrap();
    let start: Vec<f64> = serde_json::from_value(fixture["start"].clone()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let want_ts: Vec<i64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        let ts = timesteps(1000, steps, Spacing::Linspace).unwrap();
        assert_eq!(ts, want_ts, "{steps} steps");
        let want: Vec<Vec<f64>> = serde_json::from_value(case["x"].clone()).unwrap();
        let mut x = Tensor::from_slice(&start).reshape([1, 6]);
        let mut state = DpmState::default();
        for (i, &t) in ts.iter().enumerate() {
            let t_next = ts.get(i + 1).copied().unwrap_or(-1);
            let eps = eps_model(&x, t);
            x = dpm_step(&schedule, &x, &eps, (t, t_next), false, &mut state).0;
            let got: Vec<f64> = Vec::try_from(x.flatten(0, -1)).unwrap();
            for (g, w) in got.iter().zip(&want[i]) {
                // diffusers computes its schedule in float32 and dpsynth in float64, so values
                // agree to float32 precision, relative to their size (the made-up model lets x
                // grow to the hundreds)
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{steps} steps, step {i}: {got:?} against {:?}",
                    want[i]
                );
            }
        }
    }
}
