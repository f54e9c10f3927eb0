//! Privacy accounting for DP-SGD with Poisson subsampling and the Gaussian mechanism.
//!
//! Pure Rust, no torch, so these tests run in seconds.
