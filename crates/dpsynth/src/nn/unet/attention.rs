//! Spatial self-attention as diffusers' `Attention` in the U-Net blocks (GroupNorm, multi-head
//! scaled dot-product attention over the `H·W` positions, residual connection).

use tch::{nn, Tensor};

use crate::dp::layers::{GroupNorm, Linear};

/// Options of one [`Attention`] block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Channels of the feature map (query and output width).
    pub channels: i64,
    /// Channels per head.
    pub head_dim: i64,
    /// Number of heads (`channels / head_dim`, rounded down).
    pub heads: i64,
    /// GroupNorm groups; `None` for no input norm.
    pub norm_groups: Option<i64>,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The output (after the residual) is divided by this.
    pub rescale_output_factor: f64,
}

/// `out = (x + to_out(attention(to_q(n), to_k(n), to_v(n)))) / rescale` with `n = norm(x)`
/// seen as a sequence of `H·W` tokens of `channels` features.
#[derive(Debug)]
pub struct Attention {
    /// GroupNorm over the input (`group_norm`).
    pub group_norm: Option<GroupNorm>,
    /// Query projection, `channels → heads·head_dim`.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection `heads·head_dim → channels` (`to_out.0`).
    pub to_out: Linear,
    /// Options.
    pub spec: AttentionSpec,
}

impl Attention {
    /// Creates the parameters under `p` with diffusers' names.
    pub fn new(p: nn::Path, spec: AttentionSpec) -> Self {
        let c = spec.channels;
        let inner = spec.heads * spec.head_dim;
        Self {
            group_norm: spec
                .norm_groups
                .map(|g| GroupNorm::new(&p / "group_norm", g, c, spec.eps)),
            to_q: Linear::new(&p / "to_q", c, inner, true),
            to_k: Linear::new(&p / "to_k", c, inner, true),
            to_v: Linear::new(&p / "to_v", c, inner, true),
            to_out: Linear::new(&p / "to_out" / "0", inner, c, true),
            spec,
        }
    }

    /// Applies the block to `x` `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input must be 4-D");
        let normed = match &self.group_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        let tokens = normed.view([b, c, h * w]).transpose(1, 2);
        let (heads, d) = (self.spec.heads, self.spec.head_dim);
        let split = |t: Tensor| t.view([b, h * w, heads, d]).transpose(1, 2);
        let q = split(self.to_q.forward(&tokens));
        let k = split(self.to_k.forward(&tokens));
        let v = split(self.to_v.forward(&tokens));
        let att = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let att = att.transpose(1, 2).reshape([b, h * w, heads * d]);
        let out = self
            .to_out
            .forward(&att)
            .transpose(1, 2)
            .reshape([b, c, h, w]);
        let out = out + x;
        if self.spec.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.spec.rescale_output_factor
        }
    }
}
