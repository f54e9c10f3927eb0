//! DP-SGD: trainable layers that record activations, per-sample gradient rules, clipping,
//! Gaussian noise and Poisson subsampling.
//!
//! A trainer builds its model from [`layers`], hands the trainable tensors to [`DpSgd`], draws
//! logical batches with [`PoissonSampler`], calls [`DpSgd::accumulate`] once per physical
//! micro-batch and [`DpSgd::finish_step`] once per logical batch, and applies the returned
//! gradients with an [`Optimizer`].
//!
//! ```text
//! let mut dp = DpSgd::new(vs.trainable_variables(), DpSgdConfig::new(c, sigma, q * n), None)?;
//! let mut opt = Optimizer::new(vs.trainable_variables(), OptimizerConfig::AdamW { .. })?;
//! let mut sampler = PoissonSampler::new(n, q, None)?;
//! for _ in 0..steps {
//!     let batch = sampler.sample();
//!     for micro in batch.micro_batches(max_physical)? {
//!         // rows ordered example-major: K noise draws per example
//!         dp.accumulate(k, || per_row_losses(&model, micro))?;
//!     }
//!     opt.step(&dp.finish_step()?)?;  // an empty batch still yields a noise-only step
//! }
//! ```
//!
//! Design notes:
//! - One `run_backward` from the summed loss to all recorded layer outputs gives the output
//!   gradients; no `.grad` is filled. Layers run with per-row weights (the adapters' `B`, `D1`,
//!   `D2`, 1 × 1 and linear `A`: [`layers::Conv2d::forward_per_row`]) are recorded at their
//!   weights instead: autograd forms each row's weight gradient during the backward pass and
//!   frees the layer's input and output as it goes, as in a non-private step.
//! - Per-example norms of Linear/Conv2d weights come from materialised per-example gradients or
//!   from ghost norms (Gram matrices over positions), chosen per layer by a FLOP and memory
//!   estimate ([`grad_sample::Strategy`]); the clipped sum is then `cᵀG` or one matmul with the
//!   output gradient scaled by the clip factors (book-keeping).
//! - The K noise draws of an example are extra positions of that example in every rule, so the
//!   gradient that is clipped is the example's, never a row's.
//! - Updates are applied by the small [`Optimizer`] here rather than `tch::nn::Optimizer`, which
//!   reads `.grad` (not settable in tch 0.24) and covers a whole `VarStore`.

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
pub use rng::{DpRng, StreamPositions};
pub use sampling::{LogicalBatch, PoissonSampler};
