//! Choosing between materialised per-example gradients and ghost norms for matmul-shaped layers.
//!
//! For a layer in linear form (input `[B, T, D]`, output gradient `[B, T, O]`, T positions per
//! example) the two ways to get per-example norms and the clipped sum cost, in multiply-adds:
//!
//! | | norms | clipped sum | held until the sum |
//! |---|---|---|---|
//! | materialise `G_b = gy_bᵀ x_b` | `B·T·O·D` | `B·O·D` (`cᵀG`) | `B·O·D` |
//! | ghost `‖G_b‖² = ⟨x_b x_bᵀ, gy_b gy_bᵀ⟩` | `B·T²·(D+O)` | `B·T·O·D` (one matmul) | `2·B·T²` (transient) |
//!
//! so ghost wins when `T²·(D+O) < O·D` (few positions, wide layer: every plain Linear), and
//! materialising wins for convolutions over many positions. A memory cap overrides the FLOP choice
//! when the preferred variant would hold more than [`MAX_PER_LAYER_ELEMENTS`] elements.

/// Above this many elements (per layer call) the memory-hungrier variant is avoided if the other
/// one fits: 2^27 elements, 512 MiB in f32.
pub const MAX_PER_LAYER_ELEMENTS: f64 = (1u64 << 27) as f64;

/// How per-example norms of matmul-shaped (Linear, Conv2d) weights are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Pick per layer by the FLOP/memory estimate above.
    #[default]
    Auto,
    /// Always materialise the `B × P` per-example gradients.
    Materialise,
    /// Always use ghost norms (Gram matrices over positions).
    Ghost,
}

/// The variant a layer ends up using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolved {
    Materialise,
    Ghost,
}

impl Strategy {
    /// Resolves `Auto` for a layer with `b` examples, `t` positions each, `d` inputs, `o` outputs.
    pub(super) fn resolve(self, b: i64, t: i64, d: i64, o: i64) -> Resolved {
        match self {
            Strategy::Materialise => Resolved::Materialise,
            Strategy::Ghost => Resolved::Ghost,
            Strategy::Auto => {
                let (b, t, d, o) = (b as f64, t as f64, d as f64, o as f64);
                let ghost_flops = b * t * t * (d + o) + b * t * o * d;
                let mat_flops = b * t * o * d + b * o * d;
                let ghost_mem = 2.0 * b * t * t;
                let mat_mem = b * o * d;
                let by_flops = if ghost_flops < mat_flops {
                    Resolved::Ghost
                } else {
                    Resolved::Materialise
                };
                match by_flops {
                    Resolved::Ghost
                        if ghost_mem > MAX_PER_LAYER_ELEMENTS && mat_mem <= ghost_mem =>
                    {
                        Resolved::Materialise
                    }
                    Resolved::Materialise
                        if mat_mem > MAX_PER_LAYER_ELEMENTS && ghost_mem < mat_mem =>
                    {
                        Resolved::Ghost
                    }
                    r => r,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_linear_uses_ghost_and_wide_conv_materialises() {
        // MNIST CNN: fc1 (T=1, 512 -> 32) and conv1 (T=196, D=64, O=16)
        assert_eq!(Strategy::Auto.resolve(256, 1, 512, 32), Resolved::Ghost);
        assert_eq!(
            Strategy::Auto.resolve(256, 196, 64, 16),
            Resolved::Materialise
        );
    }

    #[test]
    fn memory_cap_overrides_flops() {
        // FLOPs favour materialising (T²(D+O) > OD) but 256·1024² elements exceed the cap
        assert_eq!(Strategy::Auto.resolve(256, 64, 1024, 1024), Resolved::Ghost);
        assert_eq!(
            Strategy::Materialise.resolve(256, 1, 512, 32),
            Resolved::Materialise
        );
    }
}
