//! DP-SGD: trainable layers that record activations, per-sample gradient rules, clipping,
//! Gaussian noise and Poisson subsampling.
//!
//! A trainer builds its model from [`layers`], hands the trainable tensors to [`DpSgd`], draws
//! logical batches with [`PoissonSampler`], calls [`DpSgd::accumulate`] once per physical
//! micro-batch and [`DpSgd::finish_step`] once per logical batch, and applies the returned
//! gradients with an [`Optimizer`].

pub mod clip;
pub mod engine;
pub mod grad_sample;
pub mod layers;
pub mod optim;
pub mod rng;
pub mod sampling;
pub mod tape;

pub use engine::{AccumulateStats, DpSgd, DpSgdConfig};
pub use grad_sample::{RuleOptions, Strategy};
pub use optim::{Optimizer, OptimizerConfig};
pub use rng::DpRng;
pub use sampling::{LogicalBatch, PoissonSampler};
