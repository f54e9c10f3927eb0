//! diffusers' `ResnetBlock2D`: two 3×3 convs with GroupNorm and a non-linearity, conditioned on
//! the time embedding, around a residual connection.

use tch::{nn, Tensor};

use super::activation::Activation;
use super::config::TimeScaleShift;
use crate::dp::layers::{Conv2d, ConvConfig, GroupNorm, Linear};

/// Geometry and options of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Width of the time embedding.
    pub temb_channels: i64,
    /// GroupNorm groups (both norms).
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Non-linearity.
    pub act: Activation,
    /// How the time embedding enters.
    pub time_scale_shift: TimeScaleShift,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

/// `out = (shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))) ⊕ proj(act(temb)))))) / scale`,
/// where ⊕ adds the projection ("default") or applies it as scale and shift after `norm2`.
#[derive(Debug)]
pub struct ResnetBlock2D {
    /// GroupNorm over the input.
    pub norm1: GroupNorm,
    /// First 3×3 conv, `in → out`.
    pub conv1: Conv2d,
    /// Projection of the time embedding to `out` (or `2 out` for scale-shift) channels.
    pub time_emb_proj: Linear,
    /// GroupNorm after the time conditioning.
    pub norm2: GroupNorm,
    /// Second 3×3 conv, `out → out`.
    pub conv2: Conv2d,
    /// 1×1 conv on the residual path when `in != out`.
    pub conv_shortcut: Option<Conv2d>,
    /// Options.
    pub spec: ResnetSpec,
}

impl ResnetBlock2D {
    /// Creates the block's parameters under `p` with diffusers' names.
    pub fn new(p: nn::Path, spec: ResnetSpec) -> Self {
        let (cin, cout) = (spec.in_channels, spec.out_channels);
        let proj_out = match spec.time_scale_shift {
            TimeScaleShift::Default => cout,
            TimeScaleShift::ScaleShift => 2 * cout,
        };
        Self {
            norm1: GroupNorm::new(&p / "norm1", spec.groups, cin, spec.eps),
            conv1: Conv2d::new(&p / "conv1", cin, cout, ConvConfig::same(3), true),
            time_emb_proj: Linear::new(&p / "time_emb_proj", spec.temb_channels, proj_out, true),
            norm2: GroupNorm::new(&p / "norm2", spec.groups, cout, spec.eps),
            conv2: Conv2d::new(&p / "conv2", cout, cout, ConvConfig::same(3), true),
            conv_shortcut: (cin != cout)
                .then(|| Conv2d::new(&p / "conv_shortcut", cin, cout, ConvConfig::same(1), true)),
            spec,
        }
    }

    /// Applies the block to `x` `[B, in, H, W]` with time embedding `temb` `[B, temb]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let act = self.spec.act;
        let h = self.conv1.forward(&act.forward(&self.norm1.forward(x)));
        let t = self
            .time_emb_proj
            .forward(&act.forward(temb))
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = match self.spec.time_scale_shift {
            TimeScaleShift::Default => self.norm2.forward(&(h + t)),
            TimeScaleShift::ScaleShift => {
                let parts = t.chunk(2, 1);
                self.norm2.forward(&h) * (&parts[0] + 1.0) + &parts[1]
            }
        };
        let h = self.conv2.forward(&act.forward(&h));
        let residual = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x.shallow_clone(),
        };
        let out = residual + h;
        if self.spec.output_scale_factor == 1.0 {
            out
        } else {
            out / self.spec.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a conv: a 3×3 stride-2 conv named `conv`.
#[derive(Debug)]
pub struct Downsample2D {
    /// The stride-2 conv.
    pub conv: Conv2d,
    /// diffusers pads right and bottom by one when the conv's padding is 0.
    pub pad_right_bottom: bool,
}

impl Downsample2D {
    /// Creates `p/conv` with the given padding (`downsample_padding`).
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Self {
        let cfg = ConvConfig {
            kernel: 3,
            stride: 2,
            padding,
            dilation: 1,
        };
        Self {
            conv: Conv2d::new(&p / "conv", channels, channels, cfg, true),
            pad_right_bottom: padding == 0,
        }
    }

    /// Halves the spatial size (rounding up).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.pad_right_bottom {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers' `Upsample2D` with a conv: nearest-neighbour ×2 then a 3×3 conv named `conv`.
#[derive(Debug)]
pub struct Upsample2D {
    /// The 3×3 conv after interpolation.
    pub conv: Conv2d,
}

impl Upsample2D {
    /// Creates `p/conv`.
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Self {
            conv: Conv2d::new(&p / "conv", channels, channels, ConvConfig::same(3), true),
        }
    }

    /// Doubles the spatial size.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let up = x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0);
        self.conv.forward(&up)
    }
}
