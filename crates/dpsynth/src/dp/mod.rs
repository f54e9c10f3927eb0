//! DP-SGD: trainable layers that record activations, per-sample gradient rules, clipping,
//! Gaussian noise and Poisson subsampling.

pub mod layers;
pub mod tape;
