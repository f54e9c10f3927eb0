//! A U-Net (class-conditional, or unconditional as many public checkpoints are) with the
//! structure, parameter names and `config.json` of diffusers' `UNet2DModel`, built only from the
//! DP-aware layers so DP-SGD can train any subset of it.
//!
//! Layout of the modules follows diffusers: [`config`] (the JSON config), [`embeddings`] (time
//! features and MLP), [`resnet`] (ResNet block, down/upsamplers), [`attention`] (spatial
//! self-attention), [`blocks`] (down/mid/up blocks), [`model`] (the U-Net), [`weights`]
//! (safetensors interchange).

pub mod activation;
pub mod attention;
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod resnet;
pub mod weights;

pub use config::UNetConfig;
pub use model::{LayerMut, Site, UNet, CONFIG_FILE, WEIGHTS_FILE};
