//! The record of noisy steps taken so far, and its total privacy cost.

use serde::{Deserialize, Serialize};

use crate::error::{check_noise_multiplier, check_sample_rate};
use crate::{Accountant, PrivacyError};

/// `steps` DP-SGD steps, each a Poisson-subsampled Gaussian mechanism:
/// every example joins the batch independently with probability
/// `sample_rate`, and Gaussian noise of standard deviation
/// `noise_multiplier` × (clipping norm) is added to the summed gradients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpEvent {
    /// Poisson sampling probability q, in [0, 1].
    pub sample_rate: f64,
    /// Noise standard deviation relative to the clipping norm, σ > 0.
    pub noise_multiplier: f64,
    /// Number of steps with these parameters.
    pub steps: u64,
}

impl DpEvent {
    /// Checks q ∈ [0, 1] and σ > 0 finite.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        check_sample_rate(self.sample_rate)?;
        check_noise_multiplier(self.noise_multiplier)
    }

    /// True when the event costs no privacy (no steps, or nobody sampled).
    pub(crate) fn is_free(&self) -> bool {
        self.steps == 0 || self.sample_rate == 0.0
    }
}

/// Every noisy step of a training run, in order. Serialises to JSON so it can
/// be stored in checkpoints: a resumed run, or one that changes its batch
/// size, is accounted correctly by composing all recorded events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The recorded events, oldest first.
    pub events: Vec<DpEvent>,
}

impl Ledger {
    /// An empty ledger (ε = 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `steps` steps with sampling rate `sample_rate` and noise
    /// multiplier `noise_multiplier`, merging into the last event when both
    /// parameters are equal. Recording zero steps does nothing. Parameters
    /// are validated when the ledger is accounted, not here.
    pub fn record(&mut self, sample_rate: f64, noise_multiplier: f64, steps: u64) {
        if steps == 0 {
            return;
        }
        if let Some(last) = self.events.last_mut() {
            if last.sample_rate == sample_rate && last.noise_multiplier == noise_multiplier {
                last.steps = last.steps.saturating_add(steps);
                return;
            }
        }
        self.events.push(DpEvent {
            sample_rate,
            noise_multiplier,
            steps,
        });
    }

    /// Total number of steps recorded.
    pub fn total_steps(&self) -> u64 {
        self.events
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(e.steps))
    }

    /// ε at `delta` for the composition of all recorded events.
    pub fn epsilon(&self, accountant: Accountant, delta: f64) -> Result<f64, PrivacyError> {
        crate::epsilon(accountant, &self.events, delta)
    }
}
