//! The rule for layers in linear form `y_t = W x_t (+ b)` over positions `t`: Linear (positions are
//! the middle dimensions) and Conv2d (positions are output pixels, `x_t` the unfolded patch). The
//! K rows of an example are already folded into its positions by the caller.

use anyhow::Result;
use tch::Tensor;

use super::cost::{Resolved, Strategy};
use super::{LayerGrads, ParamGrads, SumRule};

/// Per-example squared Frobenius norms `‖gy_bᵀ x_b‖²` without forming the product:
/// `⟨x_b x_bᵀ, gy_b gy_bᵀ⟩`, which for a single position is `‖x_b‖²‖gy_b‖²`.
fn ghost_sq_norms(x: &Tensor, gy: &Tensor) -> Result<Tensor> {
    let t = x.size()[1];
    if t == 1 {
        let xn = x
            .square()
            .f_sum_dim_intlist([1i64, 2].as_slice(), false, None)?;
        let gn = gy
            .square()
            .f_sum_dim_intlist([1i64, 2].as_slice(), false, None)?;
        return Ok(xn * gn);
    }
    let gram_x = x.f_bmm(&x.f_transpose(1, 2)?)?;
    let gram_g = gy.f_bmm(&gy.f_transpose(1, 2)?)?;
    Ok((gram_x * gram_g).f_sum_dim_intlist([1i64, 2].as_slice(), false, None)?)
}

/// Builds the weight and bias parts from input `x [B, T, D]` and output gradient `gy [B, T, O]`.
pub(super) fn layer_grads(
    x: Tensor,
    gy: Tensor,
    want_weight: bool,
    want_bias: bool,
    strategy: Strategy,
    weight_shape: Vec<i64>,
    bias_shape: Option<Vec<i64>>,
) -> Result<LayerGrads> {
    let (b, t, d) = x.size3()?;
    let o = gy.size()[2];
    let bias = match (want_bias, bias_shape) {
        (true, Some(shape)) => {
            let g = gy.f_sum_dim_intlist(1, false, None)?; // [B, O]
            Some(ParamGrads {
                sq_norms: g.square().f_sum_dim_intlist(1, false, None)?,
                sum: SumRule::PerSample(g),
                shape,
            })
        }
        _ => None,
    };
    let weight = if want_weight {
        Some(match strategy.resolve(b, t, d, o) {
            Resolved::Materialise => {
                let g = gy.f_transpose(1, 2)?.f_bmm(&x)?.f_reshape([b, o * d])?;
                ParamGrads {
                    sq_norms: g.square().f_sum_dim_intlist(1, false, None)?,
                    sum: SumRule::PerSample(g),
                    shape: weight_shape,
                }
            }
            Resolved::Ghost => ParamGrads {
                sq_norms: ghost_sq_norms(&x, &gy)?,
                sum: SumRule::Matmul { x, gy },
                shape: weight_shape,
            },
        })
    } else {
        None
    };
    Ok(LayerGrads { weight, bias })
}

/// `Σ_b c_b gy_bᵀ x_b` as one matmul over all positions: `(c ⊙ gy)ᵀ x`, shape `[O, D]`.
pub(super) fn clipped_sum(x: &Tensor, gy: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.size3()?;
    let o = gy.size()[2];
    let gy_c = (gy * c.f_view([b, 1, 1])?).f_reshape([b * t, o])?;
    Ok(gy_c.f_transpose(0, 1)?.f_mm(&x.f_reshape([b * t, d])?)?)
}
