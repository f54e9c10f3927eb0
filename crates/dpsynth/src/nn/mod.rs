//! Neural network models built from the DP-aware layers of [`crate::dp::layers`].

pub mod adapter;
pub mod arch;
pub mod classifier;
pub mod inception;
pub mod resnet;
pub mod unet;
