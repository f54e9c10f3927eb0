//! Poisson subsampling, the sampling scheme the privacy accountant assumes.
//!
//! Every step, each of the N examples joins the logical batch independently with probability q,
//! so the batch size is Binomial(N, q) and may be zero (the step is then noise only). A logical
//! batch is processed in physical micro-batches of at most a fixed size, so peak memory depends on
//! that size, not on q.

use anyhow::{ensure, Result};

use super::rng::{DpRng, Purpose};

/// Draws Poisson-subsampled logical batches of example indices.
#[derive(Debug, Clone)]
pub struct PoissonSampler {
    n: usize,
    q: f64,
    rng: DpRng,
}

impl PoissonSampler {
    /// Samples from `n` examples with rate `q ∈ [0, 1]`; OS-seeded unless `seed` is given.
    pub fn new(n: usize, q: f64, seed: Option<u64>) -> Result<Self> {
        ensure!(
            q.is_finite() && (0.0..=1.0).contains(&q),
            "sampling rate q must lie in [0, 1], got {q}"
        );
        Ok(Self {
            n,
            q,
            rng: DpRng::new(seed, Purpose::Sampling),
        })
    }

    /// The expected logical batch size q·N (what the noisy gradient sum is divided by).
    pub fn expected_batch_size(&self) -> f64 {
        self.q * self.n as f64
    }

    /// False when the generator was seeded by the caller.
    pub fn is_secure(&self) -> bool {
        self.rng.is_secure()
    }

    /// The sampling generator (for checkpoints: see [`super::rng::StreamPositions`]).
    pub fn rng(&self) -> &DpRng {
        &self.rng
    }

    /// The sampling generator, to move a resumed run's stream to where it stopped.
    pub fn rng_mut(&mut self) -> &mut DpRng {
        &mut self.rng
    }

    /// Draws the next logical batch: every index joins independently with probability q.
    pub fn sample(&mut self) -> LogicalBatch {
        let q = self.q;
        let indices = (0..self.n).filter(|_| self.rng.uniform() < q).collect();
        LogicalBatch { indices }
    }
}

/// The examples of one DP-SGD step, in increasing index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalBatch {
    /// Indices into the dataset.
    pub indices: Vec<usize>,
}

impl LogicalBatch {
    /// Number of examples in the step.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for an empty Poisson draw (the step still happens, with noise only).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Splits the batch into physical micro-batches of at most `max_physical` examples; an empty
    /// batch yields none.
    pub fn micro_batches(&self, max_physical: usize) -> Result<std::slice::Chunks<'_, usize>> {
        ensure!(max_physical > 0, "physical batch size must be positive");
        Ok(self.indices.chunks(max_physical))
    }
}
