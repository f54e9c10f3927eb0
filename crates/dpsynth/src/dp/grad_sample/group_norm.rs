//! The rule for GroupNorm's per-channel affine map `y = xhat · w + b`.
//!
//! Per example, `∂w_c = Σ gy·xhat` and `∂b_c = Σ gy` over the channel's spatial positions and the
//! example's K rows. Both are only `C` numbers per example, so they are always materialised.
//! `xhat` is recomputed from the recorded input (one normalisation pass), which lets the forward
//! use the fused GroupNorm op.

use anyhow::{ensure, Result};
use tch::Tensor;

use super::{row_sq_norms, LayerGrads, ParamGrads, SumRule};

fn per_sample(g: Tensor, shape: Vec<i64>) -> Result<ParamGrads> {
    Ok(ParamGrads {
        sq_norms: row_sq_norms(&g)?,
        sum: SumRule::PerSample(g),
        shape,
    })
}

/// Normalisation parameters and the example layout of one recorded GroupNorm call.
pub(super) struct Layout {
    /// Number of groups.
    pub groups: i64,
    /// Variance epsilon.
    pub eps: f64,
    /// Examples.
    pub b: i64,
    /// Rows per example.
    pub k: i64,
}

/// Per-example gradients from the GroupNorm input `x [B·K, C, ...]` and `gy` of equal shape.
pub(super) fn layer_grads(
    x: &Tensor,
    gy: &Tensor,
    layout: Layout,
    want_weight: bool,
    want_bias: bool,
    channels_shape: Vec<i64>,
) -> Result<LayerGrads> {
    let shape = x.size();
    ensure!(
        shape.len() >= 2 && gy.size() == shape && channels_shape == [shape[1]],
        "group norm input {shape:?}, output gradient {:?} and affine {channels_shape:?} disagree",
        gy.size()
    );
    let Layout { groups, eps, b, k } = layout;
    let c = shape[1];
    // [B·K, C, ...] -> [B, K, C, S]
    let grouped = |t: &Tensor| t.f_reshape([b, k, c, -1]);
    let weight = if want_weight {
        let xhat = x.f_group_norm::<Tensor>(groups, None, None, eps, false)?;
        let g = Tensor::f_einsum(
            "bkcs,bkcs->bc",
            &[grouped(gy)?, grouped(&xhat)?],
            None::<&[i64]>,
        )?;
        Some(per_sample(g, channels_shape.clone())?)
    } else {
        None
    };
    let bias = if want_bias {
        let g = grouped(gy)?.f_sum_dim_intlist([1i64, 3].as_slice(), false, None)?;
        Some(per_sample(g, channels_shape)?)
    } else {
        None
    };
    Ok(LayerGrads { weight, bias })
}
