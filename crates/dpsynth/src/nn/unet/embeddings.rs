//! Time conditioning: the sinusoidal timestep features and the MLP that embeds them.

use tch::{nn, Kind, Tensor};

use crate::dp::layers::Linear;

/// Sinusoidal features of (possibly fractional) timesteps, as diffusers' `Timesteps`.
///
/// With `half = dim / 2` frequencies `f_i = exp(-ln(10000) * i / (half - freq_shift))`, the
/// features are `[sin(t f), cos(t f)]`, or `[cos, sin]` with `flip_sin_to_cos`, zero-padded to
/// `dim` when `dim` is odd.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    /// Output width.
    pub dim: i64,
    /// Put the cosines first.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift`.
    pub freq_shift: f64,
}

impl Timesteps {
    /// Features of `t` (shape `[B]`, any numeric kind) as float32 `[B, dim]`.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        let half = self.dim / 2;
        let device = t.device();
        // same float32 operation order as diffusers, so features agree to the last bit
        let exponent = Tensor::arange(half, (Kind::Float, device)) * -(10000f64.ln())
            / (half as f64 - self.freq_shift);
        let args = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
        let (sin, cos) = (args.sin(), args.cos());
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[cos, sin], 1)
        } else {
            Tensor::cat(&[sin, cos], 1)
        };
        if self.dim % 2 == 1 {
            emb.constant_pad_nd([0, 1])
        } else {
            emb
        }
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    /// First projection, `in → dim`.
    pub linear_1: Linear,
    /// Second projection, `dim → dim`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Creates `p/linear_1` and `p/linear_2`.
    pub fn new(p: nn::Path, in_dim: i64, dim: i64) -> Self {
        Self {
            linear_1: Linear::new(&p / "linear_1", in_dim, dim, true),
            linear_2: Linear::new(&p / "linear_2", dim, dim, true),
        }
    }

    /// Embeds `[B, in]` features into `[B, dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_values() {
        let ts = Timesteps {
            dim: 4,
            flip_sin_to_cos: false,
            freq_shift: 0.0,
        };
        let e = ts.forward(&Tensor::from_slice(&[0i64, 3]));
        // half = 2, frequencies 1 and 10000^(-1/2)
        let want = [
            0.0,
            0.0,
            1.0,
            1.0,
            3f64.sin(),
            (0.03f64).sin(),
            3f64.cos(),
            (0.03f64).cos(),
        ];
        let got: Vec<f64> = Vec::try_from(e.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let flipped = Timesteps {
            flip_sin_to_cos: true,
            dim: 5,
            ..ts
        }
        .forward(&Tensor::from_slice(&[0i64]));
        assert_eq!(flipped.size(), [1, 5]);
        let got: Vec<f64> = Vec::try_from(flipped.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(got, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
    }
}
