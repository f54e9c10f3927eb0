//! The rule for GroupNorm's per-channel affine map `y = xhat · w + b`.
//!
//! Per example, `∂w_c = Σ gy·xhat` and `∂b_c = Σ gy` over the channel's spatial positions and the
//! example's K rows. Both are only `C` numbers per example, so they are always materialised.

use anyhow::{ensure, Result};
use tch::Tensor;

use super::{LayerGrads, ParamGrads, SumRule};

fn per_sample(g: Tensor, shape: Vec<i64>) -> Result<ParamGrads> {
    Ok(ParamGrads {
        sq_norms: g.square().f_sum_dim_intlist(1, false, None)?,
        sum: SumRule::PerSample(g),
        shape,
    })
}

/// Per-example gradients from the normalised input `xhat [B·K, C, ...]` and `gy` of equal shape.
pub(super) fn layer_grads(
    xhat: &Tensor,
    gy: &Tensor,
    b: i64,
    k: i64,
    want_weight: bool,
    want_bias: bool,
    channels_shape: Vec<i64>,
) -> Result<LayerGrads> {
    let shape = xhat.size();
    ensure!(
        shape.len() >= 2 && gy.size() == shape && channels_shape == [shape[1]],
        "group norm input {shape:?}, output gradient {:?} and affine {channels_shape:?} disagree",
        gy.size()
    );
    let c = shape[1];
    let grouped = |t: &Tensor| -> Result<Tensor> {
        Ok(t.f_reshape([b, k, c, -1])?
            .f_sum_dim_intlist([1i64, 3].as_slice(), false, None)?)
    };
    let weight = want_weight
        .then(|| per_sample(grouped(&(gy * xhat))?, channels_shape.clone()))
        .transpose()?;
    let bias = want_bias
        .then(|| per_sample(grouped(gy)?, channels_shape.clone()))
        .transpose()?;
    Ok(LayerGrads { weight, bias })
}
