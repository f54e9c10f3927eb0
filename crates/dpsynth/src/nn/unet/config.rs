//! The U-Net's `config.json`, with the keys and defaults of diffusers' `UNet2DModel`.
//!
//! Unknown keys (`_class_name`, `_diffusers_version`, …) are ignored and missing keys take the
//! diffusers default, so a `config.json` written by `UNet2DModel.save_pretrained` loads as is.
//! [`UNetConfig::validate`] rejects the values this implementation does not support, naming the
//! key.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::activation::Activation;

/// `sample_size`: one side for square images, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square `n × n` images.
    Square(i64),
    /// `[height, width]`.
    HeightWidth([i64; 2]),
}

impl SampleSize {
    /// `(height, width)`.
    pub fn hw(self) -> (i64, i64) {
        match self {
            SampleSize::Square(n) => (n, n),
            SampleSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// How the time embedding enters each ResNet block (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// `h = norm2(conv1(..) + proj(temb))` (diffusers "default").
    Default,
    /// `h = norm2(conv1(..)) * (1 + scale) + shift` with `[scale, shift] = proj(temb)`.
    ScaleShift,
}

/// The kind of a down block in `down_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockKind {
    /// `DownBlock2D`: ResNet layers only.
    Plain,
    /// `AttnDownBlock2D`: each ResNet layer followed by self-attention.
    Attn,
}

/// The kind of an up block in `up_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockKind {
    /// `UpBlock2D`: ResNet layers only.
    Plain,
    /// `AttnUpBlock2D`: each ResNet layer followed by self-attention.
    Attn,
}

fn d_in_channels() -> i64 {
    3
}
fn d_out_channels() -> i64 {
    3
}
fn d_time_embedding_type() -> String {
    "positional".into()
}
fn d_true() -> bool {
    true
}
fn d_down_block_types() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_up_block_types() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_block_out_channels() -> Vec<i64> {
    vec![224, 448, 672, 896]
}
fn d_layers_per_block() -> i64 {
    2
}
fn d_one() -> f64 {
    1.0
}
fn d_downsample_padding() -> i64 {
    1
}
fn d_conv() -> String {
    "conv".into()
}
fn d_act_fn() -> String {
    "silu".into()
}
fn d_attention_head_dim() -> Option<i64> {
    Some(8)
}
fn d_norm_num_groups() -> i64 {
    32
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_default() -> String {
    "default".into()
}

/// The configuration of a [`UNet`](super::UNet), field for field diffusers' `UNet2DModel`
/// constructor arguments (same JSON keys, same defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image size; informational for the model, used by samplers to shape the noise.
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Input image channels.
    #[serde(default = "d_in_channels")]
    pub in_channels: i64,
    /// Output channels (ε prediction: same as `in_channels`).
    #[serde(default = "d_out_channels")]
    pub out_channels: i64,
    /// Map the input from [0, 1] to [-1, 1] before the first conv.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Only "positional" (sinusoidal) is supported.
    #[serde(default = "d_time_embedding_type")]
    pub time_embedding_type: String,
    /// Width of the time embedding MLP; `None` means `4 * block_out_channels[0]`.
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Order the sinusoidal embedding `cos, sin` instead of `sin, cos`.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// "DownBlock2D" or "AttnDownBlock2D", one per resolution.
    #[serde(default = "d_down_block_types")]
    pub down_block_types: Vec<String>,
    /// "UNetMidBlock2D" or null (no mid block).
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// "UpBlock2D" or "AttnUpBlock2D", one per resolution, coarsest first.
    #[serde(default = "d_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Channels of each resolution level, finest first.
    #[serde(default = "d_block_out_channels")]
    pub block_out_channels: Vec<i64>,
    /// ResNet layers per down block (up blocks have one more).
    #[serde(default = "d_layers_per_block")]
    pub layers_per_block: i64,
    /// Output scale of the mid block's ResNets and attention (outputs are divided by it).
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    /// Padding of the stride-2 downsampling conv (0 pads right/bottom by one, as diffusers).
    #[serde(default = "d_downsample_padding")]
    pub downsample_padding: i64,
    /// Only "conv" is supported.
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    /// Only "conv" is supported.
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    /// Only 0 is supported.
    #[serde(default)]
    pub dropout: f64,
    /// "silu"/"swish", "mish", "gelu" or "relu".
    #[serde(default = "d_act_fn")]
    pub act_fn: String,
    /// Channels per attention head; `None` means one head over all channels.
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: Option<i64>,
    /// Groups of every GroupNorm.
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: i64,
    /// Groups of the mid block attention's GroupNorm; `None` follows diffusers (the ResNet
    /// groups with "default" time scale shift, no norm with "scale_shift").
    #[serde(default)]
    pub attn_norm_num_groups: Option<i64>,
    /// GroupNorm epsilon.
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    /// "default" or "scale_shift".
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has self-attention.
    #[serde(default = "d_true")]
    pub add_attention: bool,
    /// Only null (a learned table of `num_class_embeds` rows) is supported.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Rows of the class embedding table; null for an unconditional model. dpsynth uses
    /// `classes + 1`, the last row being the "null" class of classifier-free guidance.
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
}

impl Default for UNetConfig {
    /// diffusers' defaults (what `{}` deserialises to).
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl UNetConfig {
    /// `(channels, height, width)` of the images the model takes, if `sample_size` is set.
    pub fn sample_shape(&self) -> Option<[i64; 3]> {
        let (h, w) = self.sample_size?.hw();
        Some([self.in_channels, h, w])
    }

    /// Parses a `config.json` text; see [`UNetConfig::load`].
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let map = value
            .as_object()
            .context("the U-Net config must be a JSON object")?;
        match serde_json::from_value::<Self>(value.clone()) {
            Ok(cfg) => {
                cfg.validate()?;
                Ok(cfg)
            }
            Err(err) => {
                // serde names the type, not the key: find the key by parsing each alone
                for (key, v) in map {
                    let mut one = serde_json::Map::new();
                    one.insert(key.clone(), v.clone());
                    if let Err(e) = serde_json::from_value::<Self>(one.into()) {
                        bail!("bad value for key `{key}`: {e}");
                    }
                }
                Err(err).context("cannot parse the U-Net config")
            }
        }
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read U-Net config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in U-Net config {}", path.display()))
    }

    /// The config as diffusers writes it (with `_class_name`, so `UNet2DModel.from_pretrained`
    /// accepts the folder).
    pub fn to_json(&self) -> Result<String> {
        let mut value = serde_json::to_value(self)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), "UNet2DModel".into());
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// Width of the time (and class) embedding.
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels.first().copied().unwrap_or(0))
    }

    /// The activation named by `act_fn`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_name(&self.act_fn)
            .with_context(|| format!("unsupported `act_fn` {:?}", self.act_fn))
    }

    /// The parsed `resnet_time_scale_shift`.
    pub fn time_scale_shift(&self) -> Result<TimeScaleShift> {
        match self.resnet_time_scale_shift.as_str() {
            "default" => Ok(TimeScaleShift::Default),
            "scale_shift" => Ok(TimeScaleShift::ScaleShift),
            other => bail!(
                "unsupported `resnet_time_scale_shift` {other:?} (supported: \"default\", \"scale_shift\")"
            ),
        }
    }

    /// The parsed `down_block_types`.
    pub fn down_blocks(&self) -> Result<Vec<DownBlockKind>> {
        self.down_block_types
            .iter()
            .map(|s| match s.strip_prefix("UNetRes").unwrap_or(s) {
                "DownBlock2D" => Ok(DownBlockKind::Plain),
                "AttnDownBlock2D" => Ok(DownBlockKind::Attn),
                other => bail!(
                    "unsupported entry {other:?} in `down_block_types` (supported: \"DownBlock2D\", \"AttnDownBlock2D\")"
                ),
            })
            .collect()
    }

    /// The parsed `up_block_types`.
    pub fn up_blocks(&self) -> Result<Vec<UpBlockKind>> {
        self.up_block_types
            .iter()
            .map(|s| match s.strip_prefix("UNetRes").unwrap_or(s) {
                "UpBlock2D" => Ok(UpBlockKind::Plain),
                "AttnUpBlock2D" => Ok(UpBlockKind::Attn),
                other => bail!(
                    "unsupported entry {other:?} in `up_block_types` (supported: \"UpBlock2D\", \"AttnUpBlock2D\")"
                ),
            })
            .collect()
    }

    /// Channels per head and number of heads of an attention layer over `channels`.
    pub fn attention_heads(&self, channels: i64) -> Result<(i64, i64)> {
        let head_dim = self.attention_head_dim.unwrap_or(channels);
        ensure!(
            head_dim > 0 && head_dim <= channels,
            "`attention_head_dim` {head_dim} must be in 1..={channels} (the attention's channels)"
        );
        Ok((head_dim, channels / head_dim))
    }

    /// Channels of every attention layer the config asks for (down, mid and up blocks).
    fn attention_channels(&self) -> Result<Vec<i64>> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let mut out = Vec::new();
        for (i, kind) in self.down_blocks()?.into_iter().enumerate() {
            if kind == DownBlockKind::Attn {
                out.push(ch[i]);
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            out.push(ch[n - 1]);
        }
        for (i, kind) in self.up_blocks()?.into_iter().enumerate() {
            if kind == UpBlockKind::Attn {
                out.push(ch[n - 1 - i]);
            }
        }
        Ok(out)
    }

    /// Checks every key against what this implementation supports; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        ensure!(n > 0, "`block_out_channels` must not be empty");
        ensure!(
            self.block_out_channels.iter().all(|&c| c > 0),
            "`block_out_channels` must be positive, got {:?}",
            self.block_out_channels
        );
        ensure!(
            self.down_block_types.len() == n,
            "`down_block_types` has {} entries but `block_out_channels` has {n}",
            self.down_block_types.len()
        );
        ensure!(
            self.up_block_types.len() == n,
            "`up_block_types` has {} entries but `block_out_channels` has {n}",
            self.up_block_types.len()
        );
        self.down_blocks()?;
        self.up_blocks()?;
        ensure!(
            self.in_channels > 0,
            "`in_channels` must be positive, got {}",
            self.in_channels
        );
        ensure!(
            self.out_channels > 0,
            "`out_channels` must be positive, got {}",
            self.out_channels
        );
        ensure!(
            self.layers_per_block > 0,
            "`layers_per_block` must be positive, got {}",
            self.layers_per_block
        );
        if self.time_embedding_type != "positional" {
            bail!(
                "unsupported `time_embedding_type` {:?} (supported: \"positional\")",
                self.time_embedding_type
            );
        }
        if let Some(d) = self.time_embedding_dim {
            ensure!(d > 0, "`time_embedding_dim` must be positive, got {d}");
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(other) => bail!(
                "unsupported `mid_block_type` {other:?} (supported: \"UNetMidBlock2D\", null)"
            ),
        }
        ensure!(
            self.downsample_type == "conv",
            "unsupported `downsample_type` {:?} (supported: \"conv\")",
            self.downsample_type
        );
        ensure!(
            self.upsample_type == "conv",
            "unsupported `upsample_type` {:?} (supported: \"conv\")",
            self.upsample_type
        );
        ensure!(
            self.downsample_padding >= 0,
            "`downsample_padding` must be >= 0, got {}",
            self.downsample_padding
        );
        ensure!(
            self.dropout == 0.0,
            "unsupported `dropout` {} (only 0 is supported)",
            self.dropout
        );
        self.activation()?;
        self.time_scale_shift()?;
        ensure!(
            self.mid_block_scale_factor > 0.0,
            "`mid_block_scale_factor` must be positive, got {}",
            self.mid_block_scale_factor
        );
        ensure!(
            self.norm_eps > 0.0,
            "`norm_eps` must be positive, got {}",
            self.norm_eps
        );
        let g = self.norm_num_groups;
        ensure!(g > 0, "`norm_num_groups` must be positive, got {g}");
        for &c in &self.block_out_channels {
            ensure!(
                c % g == 0,
                "`norm_num_groups` {g} does not divide block_out_channels entry {c}"
            );
        }
        for c in self.attention_channels()? {
            self.attention_heads(c)
                .with_context(|| format!("attention over {c} channels"))?;
        }
        if let Some(ag) = self.attn_norm_num_groups {
            let c = self.block_out_channels[n - 1];
            ensure!(
                ag > 0 && c % ag == 0,
                "`attn_norm_num_groups` {ag} must be positive and divide {c}"
            );
        }
        if let Some(t) = &self.class_embed_type {
            bail!("unsupported `class_embed_type` {t:?} (supported: null, a learned class table)");
        }
        if let Some(k) = self.num_class_embeds {
            ensure!(k > 0, "`num_class_embeds` must be positive, got {k}");
        }
        if let Some(s) = self.sample_size {
            let (h, w) = s.hw();
            let f = 1i64 << (n - 1);
            ensure!(
                h > 0 && w > 0,
                "`sample_size` must be positive, got {h}x{w}"
            );
            // stride-2 convs round up, nearest upsampling doubles: sizes must halve exactly
            ensure!(
                h % f == 0 && w % f == 0,
                "`sample_size` {h}x{w} must be divisible by 2^(levels-1) = {f}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_gives_diffusers_defaults() {
        let c = UNetConfig::default();
        assert_eq!(c.in_channels, 3);
        assert_eq!(c.block_out_channels, vec![224, 448, 672, 896]);
        assert_eq!(c.attention_head_dim, Some(8));
        assert_eq!(c.norm_num_groups, 32);
        assert!(c.flip_sin_to_cos);
        assert_eq!(c.time_embed_dim(), 896);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_ignored_and_nulls_accepted() {
        let c = UNetConfig::from_json(
            r#"{"_class_name": "UNet2DModel", "_diffusers_version": "0.30.0",
                "sample_size": [16, 16], "attention_head_dim": null, "num_class_embeds": null,
                "class_embed_type": null, "block_out_channels": [32, 64],
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}"#,
        )
        .unwrap();
        assert_eq!(c.sample_size.unwrap().hw(), (16, 16));
        assert_eq!(c.attention_head_dim, None);
    }

    #[test]
    fn unsupported_values_name_the_key() {
        let base = r#""block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]"#;
        for (extra, key) in [
            (r#""time_embedding_type": "fourier""#, "time_embedding_type"),
            (r#""class_embed_type": "timestep""#, "class_embed_type"),
            (r#""act_fn": "tanh""#, "act_fn"),
            (r#""downsample_type": "resnet""#, "downsample_type"),
            (
                r#""resnet_time_scale_shift": "spatial""#,
                "resnet_time_scale_shift",
            ),
            (r#""norm_num_groups": 7"#, "norm_num_groups"),
            (r#""norm_eps": "small""#, "norm_eps"),
            (r#""dropout": 0.1"#, "dropout"),
        ] {
            let err = UNetConfig::from_json(&format!("{{{base}, {extra}}}")).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(key), "{msg}");
        }
        let err =
            UNetConfig::from_json(r#"{"down_block_types": ["CrossAttnDownBlock2D"]}"#).unwrap_err();
        assert!(format!("{err:#}").contains("down_block_types"));
    }

    #[test]
    fn head_dim_only_matters_where_there_is_attention() {
        let ok = r#"{"block_out_channels": [4, 16], "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}"#;
        UNetConfig::from_json(ok).unwrap();
        let bad = ok.replace(
            "[\"DownBlock2D\", \"AttnDownBlock2D\"]",
            "[\"AttnDownBlock2D\", \"DownBlock2D\"]",
        );
        let msg = format!("{:#}", UNetConfig::from_json(&bad).unwrap_err());
        assert!(msg.contains("attention_head_dim"), "{msg}");
    }

    #[test]
    fn json_round_trip() {
        let c = UNetConfig {
            num_class_embeds: Some(11),
            sample_size: Some(SampleSize::Square(32)),
            ..UNetConfig::default()
        };
        let back = UNetConfig::from_json(&c.to_json().unwrap()).unwrap();
        assert_eq!(c, back);
    }
}
