//! The rule for layers in linear form `y_t = W x_t (+ b)` over positions `t`: Linear (positions are
//! the middle dimensions) and Conv2d (positions are output pixels, `x_t` the unfolded patch). The
//! K rows of an example are already folded into its positions.
//!
//! Tensors are indexed feature-first: input features `[B, D, T]` and output gradient
//! `gy [B, O, T]`. The features of both layer kinds are transposed views of position-major
//! `[B, T, D]` storage (a Linear layer's input as it is; convolution patches are gathered that
//! way), so `[B·T, D]` is a view too. Convolution patches, `k²` times larger than the activation, are gathered a chunk of examples at a time
//! when the whole batch's would exceed a cap (see [`super::RuleOptions`]).

use anyhow::Result;
use tch::Tensor;

use super::conv::Patches;
use super::cost::{Resolved, Strategy};
use super::{row_sq_norms, LayerGrads, ParamGrads, SumRule};

/// The per-position inputs `[B, D, T]` of a layer in linear form.
#[derive(Debug)]
pub(super) enum Features {
    /// Held as a tensor (Linear: a view of the recorded input; Conv2d: patches that fit a chunk).
    Dense(Tensor),
    /// Gathered from a convolution's input on demand, about this many elements at a time.
    Patches(Patches, i64),
}

impl Features {
    /// `(B, D, T)`.
    fn dims(&self) -> Result<(i64, i64, i64)> {
        match self {
            Features::Dense(x) => Ok(x.size3()?),
            Features::Patches(p, _) => Ok(p.dims()),
        }
    }

    /// Features of examples `start .. start + len`, `[len, D, T]`.
    fn examples(&self, start: i64, len: i64) -> Result<Tensor> {
        match self {
            Features::Dense(x) => Ok(x.f_narrow(0, start, len)?),
            Features::Patches(p, _) => p.examples(start, len),
        }
    }

    /// Example ranges `(start, len)` covering the batch in chunks (one for dense features).
    fn chunks(&self) -> Result<Vec<(i64, i64)>> {
        let (b, d, t) = self.dims()?;
        let per = match self {
            Features::Dense(_) => b.max(1),
            Features::Patches(_, chunk) => (chunk / (d * t).max(1)).max(1),
        };
        Ok((0..b)
            .step_by(per as usize)
            .map(|s| (s, per.min(b - s)))
            .collect())
    }
}

/// Per-example squared Frobenius norms `‖gy_b x_bᵀ‖²` without forming the product:
/// `⟨x_bᵀ x_b, gy_bᵀ gy_b⟩` (Gram matrices over positions), `‖x_b‖²‖gy_b‖²` for one position.
fn ghost_sq_norms(x: &Tensor, gy: &Tensor) -> Result<Tensor> {
    if x.size()[2] == 1 {
        return Ok(row_sq_norms(x)? * row_sq_norms(gy)?);
    }
    let gram_x = x.f_transpose(1, 2)?.f_bmm(x)?;
    let gram_g = gy.f_transpose(1, 2)?.f_bmm(gy)?;
    Ok((gram_x * gram_g).f_sum_dim_intlist([1i64, 2].as_slice(), false, None)?)
}

/// Per-example squared norms from `f(features, gy)` applied to each chunk of examples.
fn per_chunk_norms(
    x: &Features,
    gy: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let parts = x
        .chunks()?
        .into_iter()
        .map(|(s, n)| f(&x.examples(s, n)?, &gy.f_narrow(0, s, n)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// Materialised transposed per-example gradients `G_bᵀ = x_b gy_bᵀ`, `[B, D·O]`, written chunk by
/// chunk into one buffer.
fn materialise(x: &Features, gy: &Tensor) -> Result<Tensor> {
    let (b, d, _) = x.dims()?;
    let o = gy.size()[1];
    let chunks = x.chunks()?;
    if let [(0, n)] = chunks.as_slice() {
        let g = x.examples(0, *n)?.f_bmm(&gy.f_transpose(1, 2)?)?;
        return Ok(g.f_reshape([b, d * o])?);
    }
    let g = Tensor::f_empty([b, d, o], (gy.kind(), gy.device()))?;
    for (s, n) in chunks {
        let gy_t = gy.f_narrow(0, s, n)?.f_transpose(1, 2)?;
        let _ = x.examples(s, n)?.f_bmm_out(&g.f_narrow(0, s, n)?, &gy_t)?;
    }
    Ok(g.f_reshape([b, d * o])?)
}

/// Builds the weight and bias parts from features `x [B, D, T]` and `gy [B, O, T]`.
pub(super) fn layer_grads(
    x: Features,
    gy: Tensor,
    want_weight: bool,
    want_bias: bool,
    strategy: Strategy,
    weight_shape: Vec<i64>,
    bias_shape: Option<Vec<i64>>,
) -> Result<LayerGrads> {
    let (b, d, t) = x.dims()?;
    let o = gy.size()[1];
    let bias = match (want_bias, bias_shape) {
        (true, Some(shape)) => {
            let g = gy.f_sum_dim_intlist(2, false, None)?; // [B, O]
            Some(ParamGrads {
                sq_norms: row_sq_norms(&g)?,
                sum: SumRule::PerSample(g),
                shape,
            })
        }
        _ => None,
    };
    let weight = if want_weight {
        Some(match strategy.resolve(b, t, d, o) {
            Resolved::Materialise => {
                // G_bᵀ, [B, D·O]; the clipped sum transposes back
                let gt = materialise(&x, &gy)?;
                ParamGrads {
                    sq_norms: row_sq_norms(&gt)?,
                    sum: SumRule::PerSampleTransposed { g: gt, rows: d },
                    shape: weight_shape,
                }
            }
            Resolved::Ghost => ParamGrads {
                sq_norms: per_chunk_norms(&x, &gy, ghost_sq_norms)?,
                sum: SumRule::Matmul { x, gy },
                shape: weight_shape,
            },
        })
    } else {
        None
    };
    Ok(LayerGrads { weight, bias })
}

/// `Σ_b c_b gy_b x_bᵀ` as one matmul per chunk over all its positions: `(c ⊙ gy) xᵀ`, `[O, D]`.
pub(super) fn clipped_sum(x: &Features, gy: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (_, d, t) = x.dims()?;
    let o = gy.size()[1];
    let mut total: Option<Tensor> = None;
    for (s, n) in x.chunks()? {
        let gy_c = (gy.f_narrow(0, s, n)? * c.f_narrow(0, s, n)?.f_view([n, 1, 1])?)
            .f_permute([1, 0, 2])?
            .f_reshape([o, n * t])?;
        let xs = x
            .examples(s, n)?
            .f_permute([1, 0, 2])?
            .f_reshape([d, n * t])?;
        let part = gy_c.f_mm(&xs.f_transpose(0, 1)?)?;
        total = Some(match total {
            Some(acc) => acc + part,
            None => part,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Ok(Tensor::f_zeros([o, d], (gy.kind(), gy.device()))?),
    }
}
