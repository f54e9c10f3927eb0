//! Models built from the DP-aware layers in [`crate::dp::layers`].

pub mod classifier;
