//! Gradient canaries: a white-box audit of the DP-SGD mechanism as a run executes it (the
//! "Dirac canaries" of Steinke, Nasr and Jagielski 2023; the statistics are `privacy::audit`).
//!
//! M canaries, each a gradient of norm C on its own coordinate of an extra tensor that no loss
//! touches and no optimizer steps, are each put in the training set with probability 1/2. Every
//! step, each member joins the logical batch with the run's Poisson rate q, and its gradient
//! goes through the engine's clipping and noise with the real examples'. The auditor reads the
//! released noisy sum on each canary's coordinate; a canary's score is its sum over the steps.
//! Without noise a member scores C × (steps it was sampled) and a non-member exactly 0; with
//! the calibrated noise the scores may tell members from non-members no better than ε allows.
//!
//! What this audits: the sampling, noise, calibration and accounting of the run (per-example
//! clipping is tested against brute force elsewhere). It does not measure how much a model
//! memorizes its images: input-space canaries do that, and bound ε far more loosely.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dp::engine::DpSgd;
use crate::dp::sampling::PoissonSampler;

/// Offsets of the canaries' streams from a seeded run's seed (distinct from its own streams).
const INCLUSION_SEED_OFFSET: u64 = 0xca7a_0001;
const SAMPLING_SEED_OFFSET: u64 = 0xca7a_0002;

/// What an audited run releases about its canaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryScores {
    /// Whether each canary was put in the training set (probability 1/2 each).
    pub included: Vec<bool>,
    /// Each canary's score: the sum over steps of the noisy gradient sum on its coordinate.
    pub scores: Vec<f64>,
}

/// The canaries of one run: their membership, their sampler and their running scores.
#[derive(Debug)]
pub struct GradientCanaries {
    included: Vec<bool>,
    sampler: PoissonSampler,
    tensor: Tensor,
    scores: Tensor,
}

impl GradientCanaries {
    /// `m` canaries sampled at the run's rate `q`; their randomness is OS-seeded unless the run
    /// is seeded.
    pub fn new(m: usize, q: f64, seed: Option<u64>, device: Device) -> Result<Self> {
        ensure!(m > 0, "an audit needs at least one gradient canary");
        let members = PoissonSampler::new(m, 0.5, seed.map(|s| s ^ INCLUSION_SEED_OFFSET))?
            .sample()
            .indices;
        let mut included = vec![false; m];
        members.into_iter().for_each(|i| included[i] = true);
        let zeros = Tensor::zeros([m as i64], (Kind::Float, device));
        Ok(Self {
            included,
            sampler: PoissonSampler::new(m, q, seed.map(|s| s ^ SAMPLING_SEED_OFFSET))?,
            tensor: zeros.set_requires_grad(true),
            scores: Tensor::zeros([m as i64], (Kind::Double, device)),
        })
    }

    /// The canaries' own coordinates, to be listed among the engine's parameters (and given
    /// to no optimizer).
    pub fn tensor(&self) -> Tensor {
        self.tensor.shallow_clone()
    }

    /// Adds this step's sampled members to the engine's sum: for each, a gradient of norm
    /// `c` on its coordinate of parameter `idx` (the engine's index of [`Self::tensor`]).
    pub fn plant(&mut self, engine: &mut DpSgd, idx: usize, c: f64) -> Result<()> {
        let sampled: Vec<i64> = (self.sampler.sample().indices.into_iter())
            .filter(|&i| self.included[i])
            .map(|i| i as i64)
            .collect();
        let m = self.included.len() as i64;
        let mut rows = Tensor::zeros(
            [sampled.len() as i64, m],
            (Kind::Float, self.tensor.device()),
        );
        if !sampled.is_empty() {
            let at = Tensor::from_slice(&sampled)
                .to_device(rows.device())
                .unsqueeze(1);
            let _ = rows.scatter_value_(1, &at, c);
        }
        engine.accumulate_direct(idx, &rows)
    }

    /// Records the released gradient of the canaries' tensor, `(Σ + noise) / expected_batch`.
    pub fn observe(&mut self, released: &Tensor, expected_batch: f64) {
        let sum = released.to_kind(Kind::Double) * expected_batch;
        self.scores += sum;
    }

    /// The membership and the scores, for `privacy::audit`.
    pub fn finish(self) -> Result<CanaryScores> {
        Ok(CanaryScores {
            included: self.included,
            scores: Vec::<f64>::try_from(&self.scores)?,
        })
    }
}
