//! Choosing between materialised per-example gradients and ghost norms for matmul-shaped layers.
//!
//! For a layer in linear form (input `[B, D, T]`, output gradient `[B, O, T]`, T positions per
//! example) the two ways to get per-example norms and the clipped sum cost, in multiply-adds:
//!
//! | | norms | clipped sum | held until the sum |
//! |---|---|---|---|
//! | materialise `G_b = gy_b x_bᵀ` | `B·T·O·D` | `B·O·D` (`cᵀG`) | `B·O·D` |
//! | ghost `‖G_b‖² = ⟨x_bᵀ x_b, gy_bᵀ gy_b⟩` | `B·T²·(D+O)` | `B·T·O·D` (one matmul) | `2·B·T²` (transient) |
//!
//! The materialised `B·O·D` tensor is also written once and read twice (norms, sum), memory
//! traffic that costs far more per element than a multiply-add inside a matmul (and fresh pages
//! on CPU); the estimate charges [`MEMORY_WEIGHT`] multiply-adds per element moved. Ghost then
//! wins with few positions and wide layers (every plain Linear, small late convolutions), and
//! materialising wins for convolutions over many positions. A memory cap overrides the estimate
//! when the preferred variant would hold more than [`MAX_PER_LAYER_ELEMENTS`] elements.

/// Multiply-add equivalents charged per element of memory traffic of a materialised tensor: a
/// rough CPU figure (a streamed f32 element against a multiply-add inside a blocked matmul).
pub const MEMORY_WEIGHT: f64 = 16.0;

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
                let mat_flops = b * t * o * d + b * o * d + 3.0 * MEMORY_WEIGHT * b * o * d;
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
        // MNIST CNN: fc1 (T=1, 512 -> 32), conv1 (T=196, D=64, O=16), conv2 (T=25, D=256, O=32)
        assert_eq!(Strategy::Auto.resolve(256, 1, 512, 32), Resolved::Ghost);
        assert_eq!(
            Strategy::Auto.resolve(256, 196, 64, 16),
            Resolved::Materialise
        );
        assert_eq!(Strategy::Auto.resolve(256, 25, 256, 32), Resolved::Ghost);
        // U-Net 3x3 conv 128 -> 128 at 32x32: materialise; 256 -> 256 at 8x8: ghost
        assert_eq!(
            Strategy::Auto.resolve(32, 1024, 1152, 128),
            Resolved::Materialise
        );
        assert_eq!(Strategy::Auto.resolve(32, 64, 2304, 256), Resolved::Ghost);
    }

    #[test]
    fn memory_cap_overrides_flops() {
        // the estimate favours materialising (T = 256 positions) but 256·1024² elements exceed
        // the cap while the Gram matrices (2·256·256²) do not
        assert_eq!(
            Strategy::Auto.resolve(256, 256, 1024, 1024),
            Resolved::Ghost
        );
        assert_eq!(
            Strategy::Auto.resolve(16, 256, 1024, 1024),
            Resolved::Materialise
        );
        assert_eq!(
            Strategy::Materialise.resolve(256, 1, 512, 32),
            Resolved::Materialise
        );
    }
}
