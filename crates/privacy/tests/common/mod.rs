//! Reference vectors computed by `scripts/fixtures/privacy_vectors.py` with
//! dp_accounting 0.6.0 (see the script's docstring for exact versions).
#![allow(dead_code)]

use privacy::DpEvent;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct SingleVector {
    pub sample_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
    pub delta: f64,
    pub epsilon: f64,
}

impl SingleVector {
    pub fn event(&self) -> DpEvent {
        DpEvent {
            sample_rate: self.sample_rate,
            noise_multiplier: self.noise_multiplier,
            steps: self.steps,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LedgerVector {
    pub events: Vec<DpEvent>,
    pub delta: f64,
    pub rdp_epsilon: f64,
    pub pld_epsilon: f64,
}

#[derive(Debug, Deserialize)]
pub struct CalibrationVector {
    pub accountant: String,
    pub target_epsilon: f64,
    pub delta: f64,
    pub sample_rate: f64,
    pub steps: u64,
    pub noise_multiplier: f64,
}

#[derive(Debug, Deserialize)]
pub struct Vectors {
    pub rdp: Vec<SingleVector>,
    pub pld: Vec<SingleVector>,
    pub ledger: Vec<LedgerVector>,
    pub calibration: Vec<CalibrationVector>,
}

pub fn load() -> Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/privacy_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("reference vectors present");
    serde_json::from_str(&text).expect("reference vectors parse")
}
