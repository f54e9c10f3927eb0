//! The U-Net's down, mid and up blocks (diffusers' `DownBlock2D`/`AttnDownBlock2D`,
//! `UNetMidBlock2D`, `UpBlock2D`/`AttnUpBlock2D`).
//!
//! Attention and plain variants share one type: a block with attention has one [`Attention`]
//! after each ResNet layer, a plain block has none.

use tch::{nn, Tensor};

use super::attention::{Attention, AttentionSpec};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetSpec, Upsample2D};

/// Settings shared by every block, from the model config.
#[derive(Debug, Clone, Copy)]
pub struct BlockCommon {
    /// ResNet template: channels are overwritten per layer.
    pub resnet: ResnetSpec,
    /// Channels per attention head; `None` means one head over all channels.
    pub attention_head_dim: Option<i64>,
}

impl BlockCommon {
    fn resnet(&self, in_channels: i64, out_channels: i64) -> ResnetSpec {
        ResnetSpec {
            in_channels,
            out_channels,
            ..self.resnet
        }
    }

    fn attention(&self, channels: i64) -> AttentionSpec {
        let head_dim = self.attention_head_dim.unwrap_or(channels);
        AttentionSpec {
            channels,
            head_dim,
            heads: channels / head_dim,
            norm_groups: Some(self.resnet.groups),
            eps: self.resnet.eps,
            rescale_output_factor: 1.0,
        }
    }
}

/// One resolution level on the way down: ResNet layers (each optionally followed by attention)
/// then an optional stride-2 downsampler.
#[derive(Debug)]
pub struct DownBlock {
    /// ResNet layers (`resnets.{i}`).
    pub resnets: Vec<ResnetBlock2D>,
    /// Attention after each ResNet (`attentions.{i}`); empty for a plain block.
    pub attentions: Vec<Attention>,
    /// Downsampler (`downsamplers.0`), absent on the coarsest level.
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Creates the block under `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        common: &BlockCommon,
        num_layers: i64,
        in_channels: i64,
        out_channels: i64,
        with_attention: bool,
        add_downsample: bool,
        downsample_padding: i64,
    ) -> Self {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let cin = if i == 0 { in_channels } else { out_channels };
            resnets.push(ResnetBlock2D::new(
                &p / "resnets" / i,
                common.resnet(cin, out_channels),
            ));
            if with_attention {
                attentions.push(Attention::new(
                    &p / "attentions" / i,
                    common.attention(out_channels),
                ));
            }
        }
        let downsampler = add_downsample
            .then(|| Downsample2D::new(&p / "downsamplers" / 0, out_channels, downsample_padding));
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Returns the block output and pushes the skip activations (one per ResNet layer, plus the
    /// downsampled output) onto `skips`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h);
            skips.push(h.shallow_clone());
        }
        h
    }
}

/// The bottleneck: ResNet, optional attention, ResNet.
#[derive(Debug)]
pub struct MidBlock {
    /// The two ResNet layers (`resnets.0`, `resnets.1`).
    pub resnets: Vec<ResnetBlock2D>,
    /// The attention between them (`attentions.0`), if `add_attention`.
    pub attention: Option<Attention>,
}

impl MidBlock {
    /// Creates the block under `p`. ResNets and attention divide their output by
    /// `scale_factor`; the attention's GroupNorm has `attn_groups` groups (none if `None`).
    pub fn new(
        p: nn::Path,
        common: &BlockCommon,
        channels: i64,
        scale_factor: f64,
        add_attention: bool,
        attn_groups: Option<i64>,
    ) -> Self {
        let spec = ResnetSpec {
            output_scale_factor: scale_factor,
            ..common.resnet(channels, channels)
        };
        let attention = add_attention.then(|| {
            let a = AttentionSpec {
                norm_groups: attn_groups,
                rescale_output_factor: scale_factor,
                ..common.attention(channels)
            };
            Attention::new(&p / "attentions" / 0, a)
        });
        Self {
            resnets: vec![
                ResnetBlock2D::new(&p / "resnets" / 0, spec),
                ResnetBlock2D::new(&p / "resnets" / 1, spec),
            ],
            attention,
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let mut h = self.resnets[0].forward(x, temb);
        if let Some(attn) = &self.attention {
            h = attn.forward(&h);
        }
        self.resnets[1].forward(&h, temb)
    }
}

/// One resolution level on the way up: ResNet layers over the input concatenated with a skip
/// activation (each optionally followed by attention), then an optional ×2 upsampler.
#[derive(Debug)]
pub struct UpBlock {
    /// ResNet layers (`resnets.{i}`).
    pub resnets: Vec<ResnetBlock2D>,
    /// Attention after each ResNet (`attentions.{i}`); empty for a plain block.
    pub attentions: Vec<Attention>,
    /// Upsampler (`upsamplers.0`), absent on the finest level.
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Creates the block under `p`. `prev_channels` is the width coming from below,
    /// `skip_in_channels` the width of the last skip it consumes (the level below's output).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        common: &BlockCommon,
        num_layers: i64,
        skip_in_channels: i64,
        prev_channels: i64,
        out_channels: i64,
        with_attention: bool,
        add_upsample: bool,
    ) -> Self {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let skip = if i == num_layers - 1 {
                skip_in_channels
            } else {
                out_channels
            };
            let cin = if i == 0 { prev_channels } else { out_channels };
            resnets.push(ResnetBlock2D::new(
                &p / "resnets" / i,
                common.resnet(cin + skip, out_channels),
            ));
            if with_attention {
                attentions.push(Attention::new(
                    &p / "attentions" / i,
                    common.attention(out_channels),
                ));
            }
        }
        let upsampler = add_upsample.then(|| Upsample2D::new(&p / "upsamplers" / 0, out_channels));
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }

    /// Applies the block, popping one skip activation per ResNet layer from `skips`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path pushes one skip per up-path ResNet");
            h = resnet.forward(&Tensor::cat(&[h, skip], 1), temb);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&h),
            None => h,
        }
    }
}
