//! The rule for [`LayerKind::PerRowWeight`](crate::dp::tape::LayerKind::PerRowWeight): the
//! gradient at a parameter's per-row view is already each row's gradient of the parameter, so an
//! example's gradient is the sum of its K rows (example-major), materialised `[B, P]`.

use anyhow::Result;
use tch::Tensor;

use super::{row_sq_norms, ParamGrads, SumRule};

/// Per-example gradients of a parameter of shape `shape` from the gradient `[B·K, ...]` at its
/// per-row view.
pub(super) fn param_grads(
    grad_rows: &Tensor,
    b: i64,
    k: i64,
    shape: Vec<i64>,
) -> Result<ParamGrads> {
    let g = if k == 1 {
        grad_rows.f_reshape([b, -1])?
    } else {
        grad_rows
            .f_reshape([b, k, -1])?
            .f_sum_dim_intlist(1, false, None)?
    };
    Ok(ParamGrads {
        sq_norms: row_sq_norms(&g)?,
        sum: SumRule::PerSample(g),
        shape,
    })
}
