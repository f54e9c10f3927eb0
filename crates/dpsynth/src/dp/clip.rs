//! Flat per-example clipping: one norm over all trainable tensors.

use tch::Tensor;

/// Added to the norm before dividing, as Opacus does, so zero gradients need no special case.
pub const CLIP_EPS: f64 = 1e-6;

/// Clip factors `min(1, C / (‖g_b‖ + 1e-6))` from per-example squared total norms `[B]`.
pub fn clip_factors(sq_norms: &Tensor, max_norm: f64) -> Tensor {
    (sq_norms.sqrt() + CLIP_EPS)
        .reciprocal()
        .multiply_scalar(max_norm)
        .clamp_max(1.0)
}
