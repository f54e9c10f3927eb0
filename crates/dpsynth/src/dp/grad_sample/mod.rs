//! Per-sample gradient rules, one per [`LayerKind`].
//!
//! Each rule starts from what the tape recorded for one layer call (its input) and the gradient of
//! the summed loss at the layer's output, and produces, for the weight and the bias separately,
//! (a) the squared norm of every example's gradient and (b) on demand, the clipped weighted sum
//! `Σ_b c_b g_b`. Between the two the rule keeps whatever makes (b) cheapest ("book-keeping"):
//! either the materialised per-example gradients (then (b) is one `c^T G` product) or the input
//! and output-gradient themselves (then (b) is one matmul with the output gradient scaled by `c_b`).
//! A [`LayerKind::PerRowWeight`] entry has a rule (module `per_row`) that only sums each
//! example's rows: the backward pass has already formed each row's gradient.
//!
//! **Noise multiplicity.** A batch has `B·K` rows ordered example-major; rows `bK .. bK+K-1` are the
//! K internal draws of example `b`. The engine backpropagates `Σ rows / K`, so an example's gradient
//! is the *sum* of its rows' contributions. Every rule therefore reshapes the K rows of an example
//! into extra positions of that example (like the spatial positions of a convolution); no per-row
//! gradient is ever formed or clipped.

mod conv;
mod cost;
mod embedding;
mod group_norm;
mod matmul;
mod narrow_conv;
mod per_row;

use anyhow::{bail, ensure, Context, Result};
use tch::Tensor;

pub use cost::{Strategy, MAX_PER_LAYER_ELEMENTS};

use super::tape::{Entry, LayerKind};

/// How the clipped sum of one parameter is formed once the clip factors are known.
#[derive(Debug)]
enum SumRule {
    /// Materialised per-example gradients `[B, P]`: the sum is `cᵀG`.
    PerSample(Tensor),
    /// Materialised transposed per-example gradients `[B, rows·cols]` of a `cols × rows`
    /// parameter: the sum is `cᵀG`, transposed.
    PerSampleTransposed { g: Tensor, rows: i64 },
    /// Linear form: input features `[B, D, T]` and output gradient `[B, O, T]`; the sum is
    /// `(c ⊙ gy) xᵀ` over all `B·T` positions, one matmul (per chunk of examples for convs).
    Matmul { x: matmul::Features, gy: Tensor },
    /// Embedding rows aggregated per (example, index): row ids `[U]`, owning example `[U]` and
    /// the summed output gradients `[U, dim]`; the sum scatters `c_ex · agg` into the table.
    Embedding {
        rows: Tensor,
        example: Tensor,
        agg: Tensor,
        num: i64,
    },
}

/// Per-example gradient information of one parameter of one recorded layer call.
#[derive(Debug)]
pub struct ParamGrads {
    sq_norms: Tensor,
    sum: SumRule,
    shape: Vec<i64>,
}

impl ParamGrads {
    /// Squared norm of each example's gradient for this parameter, `[B]`.
    pub fn sq_norms(&self) -> &Tensor {
        &self.sq_norms
    }

    /// `Σ_b c_b g_b` for clip factors `c` of shape `[B]`, shaped like the parameter.
    pub fn clipped_sum(&self, c: &Tensor) -> Result<Tensor> {
        let b = self.sq_norms.size()[0];
        ensure!(
            c.size() == [b],
            "clip factors have shape {:?}, expected [{b}]",
            c.size()
        );
        let c = c.to_kind(self.sq_norms.kind());
        let flat = match &self.sum {
            SumRule::PerSample(g) => c.unsqueeze(0).f_mm(g)?,
            SumRule::PerSampleTransposed { g, rows } => c
                .unsqueeze(0)
                .f_mm(g)?
                .f_reshape([*rows, -1])?
                .f_transpose(0, 1)?,
            SumRule::Matmul { x, gy } => matmul::clipped_sum(x, gy, &c)?,
            SumRule::Embedding {
                rows,
                example,
                agg,
                num,
            } => embedding::clipped_sum(rows, example, agg, *num, &c)?,
        };
        Ok(flat.f_reshape(self.shape.as_slice())?)
    }
}

/// Per-example gradient information of one recorded layer call.
#[derive(Debug)]
pub struct LayerGrads {
    /// Weight part; `None` when the weight is frozen.
    pub weight: Option<ParamGrads>,
    /// Bias part; `None` when the layer has no bias or it is frozen.
    pub bias: Option<ParamGrads>,
}

impl LayerGrads {
    /// Sum of the weight and bias squared norms, `[B]` (zeros when nothing is trainable).
    pub fn sq_norms(&self) -> Option<Tensor> {
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => Some(w.sq_norms() + b.sq_norms()),
            (Some(w), None) => Some(w.sq_norms().shallow_clone()),
            (None, Some(b)) => Some(b.sq_norms().shallow_clone()),
            (None, None) => None,
        }
    }
}

/// Squared Euclidean norm of each row of `g [B, ...]` (one reduction pass), `[B]`.
fn row_sq_norms(g: &Tensor) -> Result<Tensor> {
    let b = g.size()[0];
    Ok(g.f_reshape([b, -1])?
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?
        .square())
}

/// Splits the leading `B·K` rows of a layer's output into `B` examples of `K` rows each.
fn examples_of(entry: &Entry, grad_out: &Tensor, k: i64) -> Result<i64> {
    ensure!(k >= 1, "noise multiplicity K must be at least 1, got {k}");
    let out_shape = entry.output.size();
    ensure!(
        grad_out.size() == out_shape,
        "output gradient shape {:?} differs from the output shape {out_shape:?}",
        grad_out.size()
    );
    let rows = *out_shape
        .first()
        .context("a recorded layer output has no batch dimension")?;
    ensure!(
        rows % k == 0,
        "a recorded layer has {rows} rows, not a multiple of K = {k}"
    );
    Ok(rows / k)
}

/// Tuning of the per-sample rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOptions {
    /// Materialised vs ghost norms for Linear and Conv2d weights (the other kinds have a single
    /// best rule).
    pub strategy: Strategy,
    /// Most elements of unfolded convolution patches gathered at once; larger batches are
    /// processed a chunk of examples at a time. Smaller chunks do not pay off on CPU, where each
    /// chunk's fresh allocations cost more in page faults than cache misses do.
    pub chunk_elements: i64,
}

impl Default for RuleOptions {
    /// Per-layer cost estimate; patches capped at 2^24 elements (64 MiB in f32).
    fn default() -> Self {
        Self {
            strategy: Strategy::Auto,
            chunk_elements: 1 << 24,
        }
    }
}

/// Applies the rule for `entry.kind` to one recorded layer call with default options but the
/// given `strategy`; see [`per_sample_with`].
pub fn per_sample(
    entry: &Entry,
    grad_out: &Tensor,
    k: i64,
    strategy: Strategy,
) -> Result<LayerGrads> {
    let options = RuleOptions {
        strategy,
        ..RuleOptions::default()
    };
    per_sample_with(entry, grad_out, k, &options)
}

/// Memory a rule reuses from one call to the next (the gathered patches of a convolution), so
/// that every step does not pay for fresh pages. [`super::DpSgd`] keeps one per tape position.
/// The [`LayerGrads`] of a call may be views of it: drop them before the next call that is given
/// the same scratch.
#[derive(Debug, Default)]
pub struct Scratch {
    patches: Option<Tensor>,
}

/// Applies the rule for `entry.kind` to one recorded layer call.
///
/// `grad_out` is the gradient of the summed loss (`Σ rows / K`) at `entry.output`; `k` is the
/// noise multiplicity. Must be called under `no_grad`.
pub fn per_sample_with(
    entry: &Entry,
    grad_out: &Tensor,
    k: i64,
    options: &RuleOptions,
) -> Result<LayerGrads> {
    per_sample_in(entry, grad_out, k, options, &mut Scratch::default())
}

/// [`per_sample_with`], reusing `scratch` for the memory the rule needs.
pub fn per_sample_in(
    entry: &Entry,
    grad_out: &Tensor,
    k: i64,
    options: &RuleOptions,
    scratch: &mut Scratch,
) -> Result<LayerGrads> {
    let strategy = options.strategy;
    let b = examples_of(entry, grad_out, k)?;
    let want_w = entry.weight.requires_grad();
    let want_b = entry.bias.as_ref().is_some_and(Tensor::requires_grad);
    let w_shape = entry.weight.size();
    let b_shape = entry.bias.as_ref().map(Tensor::size);
    match entry.kind {
        LayerKind::Linear => {
            let d = *w_shape.get(1).context("linear weight is not 2-D")?;
            let o = w_shape[0];
            let x_shape = entry.input.size();
            ensure!(
                x_shape.len() >= 2 && x_shape.last() == Some(&d),
                "linear input {x_shape:?} does not end in the weight's input size {d}"
            );
            let x = entry.input.f_reshape([b, -1, d])?.f_transpose(1, 2)?;
            let gy = grad_out.f_reshape([b, -1, o])?.f_transpose(1, 2)?;
            let x = matmul::Features::Dense(x);
            matmul::layer_grads(x, gy, want_w, want_b, strategy, w_shape, b_shape)
        }
        LayerKind::Conv2d(cfg) => {
            // narrow convs (adapters' A: C_in -> r) scatter the output gradient instead
            let x_shape = entry.input.size();
            if want_w && narrow_conv::preferred(&x_shape, &w_shape, cfg, b, k, strategy) {
                let rows = (b, k);
                return narrow_conv::layer_grads(
                    &entry.input,
                    grad_out,
                    w_shape,
                    cfg,
                    rows,
                    want_b,
                    b_shape,
                );
            }
            let (x, gy) = conv::linear_form(&entry.input, grad_out, &w_shape, cfg, b, k)?;
            // gather once when the whole batch fits in a chunk, else a chunk at a time
            let (n, d, t) = x.dims();
            let chunk = options.chunk_elements.max(1);
            let x = if n * d * t <= chunk {
                matmul::Features::Dense(x.examples_in(0, n, &mut scratch.patches)?)
            } else {
                matmul::Features::Patches(x, chunk)
            };
            matmul::layer_grads(x, gy, want_w, want_b, strategy, w_shape, b_shape)
        }
        LayerKind::Embedding => {
            if entry.bias.is_some() {
                bail!("an embedding has no bias");
            }
            let weight = want_w
                .then(|| embedding::weight_grads(&entry.input, grad_out, b, w_shape))
                .transpose()?;
            Ok(LayerGrads { weight, bias: None })
        }
        LayerKind::PerRowWeight => {
            ensure!(
                entry.bias.is_none(),
                "a per-row weight entry records one parameter"
            );
            ensure!(
                grad_out.numel() as i64 == b * k * entry.weight.numel() as i64,
                "per-row gradient {:?} does not hold one weight {w_shape:?} per row",
                grad_out.size()
            );
            let weight = want_w
                .then(|| per_row::param_grads(grad_out, b, k, w_shape))
                .transpose()?;
            Ok(LayerGrads { weight, bias: None })
        }
        LayerKind::GroupNorm { groups, eps } => group_norm::layer_grads(
            &entry.input,
            grad_out,
            group_norm::Layout { groups, eps, b, k },
            want_w,
            want_b,
            w_shape,
        ),
    }
}
