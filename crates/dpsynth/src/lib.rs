//! dpsynth: differentially private synthetic image data on libtorch.
//!
//! Data readers, DP-SGD (per-sample gradients, clipping, noise, Poisson sampling), the diffusion
//! U-Net with LoDA adapters, samplers and downstream evaluation.

pub mod data;
pub mod diffusion;
pub mod dp;
pub mod fidelity;
pub mod fsutil;
pub mod memorization;
pub mod metrics;
pub mod nn;
pub mod pipeline;
pub mod synth;
pub mod train;
