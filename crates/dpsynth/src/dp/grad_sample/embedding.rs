//! The rule for `y = W[idx]`.
//!
//! Example `b`'s gradient is non-zero only in the table rows its positions looked up, where it is
//! the sum of the output gradients of those positions. Grouping positions by the key
//! `(example, row)` therefore materialises every per-example gradient *sparsely*, in
//! `O(B·T·dim)` time and memory: never more than ghost norms (`O(B·T²·dim)`) or the dense
//! `B × num × dim` materialisation, so this rule has no strategy choice.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use super::{row_sq_norms, ParamGrads, SumRule};

/// Per-example gradients of the table from indices `idx [B·K, ...]` and the output gradient
/// `gy [B·K, ..., dim]`, for `b` examples.
pub(super) fn weight_grads(
    idx: &Tensor,
    gy: &Tensor,
    b: i64,
    weight_shape: Vec<i64>,
) -> Result<ParamGrads> {
    ensure!(
        weight_shape.len() == 2,
        "embedding table is not 2-D: {weight_shape:?}"
    );
    let (num, dim) = (weight_shape[0], weight_shape[1]);
    ensure!(
        matches!(idx.kind(), Kind::Int64 | Kind::Int),
        "embedding indices must be integers, got {:?}",
        idx.kind()
    );
    let mut expected = idx.size();
    expected.push(dim);
    ensure!(
        gy.size() == expected,
        "embedding output gradient {:?} does not match indices {:?}",
        gy.size(),
        idx.size()
    );
    let n = idx.numel() as i64;
    let per_example = if b == 0 { 0 } else { n / b };
    let idx = idx.f_reshape([n])?.to_kind(Kind::Int64);
    let gy = gy.f_reshape([n, dim])?;
    let example = Tensor::f_arange(n, (Kind::Int64, idx.device()))?
        .f_floor_divide_scalar(per_example.max(1))?;
    let key = &example * num + &idx;
    let (uniq, inverse, _) = key.f_internal_unique2(false, true, false)?;
    let u = uniq.size()[0];
    let agg = Tensor::f_zeros([u, dim], (gy.kind(), gy.device()))?.f_index_add(0, &inverse, &gy)?;
    let row_sq = row_sq_norms(&agg)?;
    let owner = uniq.f_floor_divide_scalar(num)?;
    let sq_norms =
        Tensor::f_zeros([b], (gy.kind(), gy.device()))?.f_index_add(0, &owner, &row_sq)?;
    Ok(ParamGrads {
        sq_norms,
        sum: SumRule::Embedding {
            rows: uniq.f_remainder(num)?,
            example: owner,
            agg,
            num,
        },
        shape: weight_shape,
    })
}

/// `Σ_b c_b G_b` scattered into a `[num, dim]` table.
pub(super) fn clipped_sum(
    rows: &Tensor,
    example: &Tensor,
    agg: &Tensor,
    num: i64,
    c: &Tensor,
) -> Result<Tensor> {
    let dim = agg.size()[1];
    let scaled = agg * c.f_index_select(0, example)?.f_unsqueeze(1)?;
    Ok(Tensor::f_zeros([num, dim], (agg.kind(), agg.device()))?.f_index_add(0, rows, &scaled)?)
}
