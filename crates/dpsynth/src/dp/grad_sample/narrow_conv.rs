//! Per-example weight gradients of *narrow* convolutions (few output channels, such as the `A`
//! conv of a LoRA/LoDA adapter, k × k, C_in → r) by scattering the output gradient instead of
//! gathering input patches.
//!
//! Over the input's `P = H·W` pixels, example `b`'s gradient is
//! `G_b[o, c, i, j] = Σ_p S_b[o, i, j, p] · x_b[c, p]`, where the canvas `S` holds `gy_b[o, h, w]`
//! at pixel `(h·s + i·d - pad, w·s + j·d - pad)` when that pixel is inside the input (taps on the
//! zero padding add nothing) and zeros elsewhere. `S` has `O·kh·kw` channels where the patches of
//! [`super::conv`] have `C·kh·kw`, so for `O ≪ C` far less memory is written (the patches of an
//! adapter's `A` on a 48-channel 28 × 28 input at batch 64 are 87 MB, its canvas 7 MB), the
//! input is used as it is, and `G` is one batched matmul `[B, O·kh·kw, K·P] × [B, K·P, C]`. The
//! matmul runs over every input pixel (`P ≥ Ho·Wo` when strided), so the rule is chosen only
//! where the cost estimate below says the saved memory traffic outweighs that; the estimate
//! counts padded pixels, an upper bound.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use super::cost::{Resolved, Strategy, MEMORY_WEIGHT};
use super::{row_sq_norms, LayerGrads, ParamGrads, SumRule};
use crate::dp::layers::ConvConfig;

/// Geometry of one recorded call.
struct Geometry {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    o: i64,
    kh: i64,
    kw: i64,
    ho: i64,
    wo: i64,
}

fn geometry(x_shape: &[i64], w_shape: &[i64], cfg: ConvConfig) -> Option<Geometry> {
    let [n, c, h, w] = <[i64; 4]>::try_from(x_shape).ok()?;
    let [o, ci, kh, kw] = <[i64; 4]>::try_from(w_shape).ok()?;
    let (s, p, d) = (cfg.stride, cfg.padding, cfg.dilation);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let (ekh, ekw) = (d * (kh - 1) + 1, d * (kw - 1) + 1);
    if c != ci || s < 1 || d < 1 || p < 0 || hp < ekh || wp < ekw {
        return None;
    }
    Some(Geometry {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        ho: (hp - ekh) / s + 1,
        wo: (wp - ekw) / s + 1,
    })
}

/// The output positions `q` (of `out`) whose tap at input offset `q·stride + offset` lies inside
/// an input of `size` pixels: `(first, count)`, or `None` when there are none.
fn inside(offset: i64, stride: i64, out: i64, size: i64) -> Option<(i64, i64)> {
    // first q with q·stride + offset ≥ 0, last with q·stride + offset ≤ size - 1
    let first = if offset >= 0 {
        0
    } else {
        (-offset + stride - 1) / stride
    };
    let last_input = size - 1 - offset;
    if last_input < 0 {
        return None;
    }
    let last = (last_input / stride).min(out - 1);
    (last >= first).then_some((first, last - first + 1))
}

/// True when this rule should compute the weight's per-example gradients of a conv with input
/// `x_shape` `[B·K, C, H, W]` and weight `w_shape`: the layer would be materialised anyway (ghost
/// norms are not cheaper), it has fewer output than input channels, and the estimated cost
/// (multiply-adds plus [`MEMORY_WEIGHT`] per element written) is below that of the patches.
pub(super) fn preferred(
    x_shape: &[i64],
    w_shape: &[i64],
    cfg: ConvConfig,
    b: i64,
    k: i64,
    strategy: Strategy,
) -> bool {
    let Some(g) = geometry(x_shape, w_shape, cfg) else {
        return false; // let the general rule report the mismatch
    };
    let kk = g.kh * g.kw;
    let t = k * g.ho * g.wo;
    if g.o >= g.c || strategy.resolve(b, t, g.c * kk, g.o) != Resolved::Materialise {
        return false;
    }
    let (c, o, kk, t) = (g.c as f64, g.o as f64, kk as f64, t as f64);
    let pixels = k as f64 * ((g.h + 2 * cfg.padding) * (g.w + 2 * cfg.padding)) as f64;
    let patches = c * kk * t * o + MEMORY_WEIGHT * c * kk * t;
    let canvas = o * kk * pixels * c + MEMORY_WEIGHT * (o * kk * pixels + c * pixels);
    canvas < patches
}

/// Weight (materialised, `[B, O·C·kh·kw]`) and bias (`[B, O]`) per-example gradients of a conv
/// from its input `x [B·K, C, H, W]` and output gradient `gy [B·K, O, Ho, Wo]`.
pub(super) fn layer_grads(
    x: &Tensor,
    gy: &Tensor,
    weight_shape: Vec<i64>,
    cfg: ConvConfig,
    (b, k): (i64, i64),
    want_bias: bool,
    bias_shape: Option<Vec<i64>>,
) -> Result<LayerGrads> {
    let x_shape = x.size();
    let g = geometry(&x_shape, &weight_shape, cfg).ok_or_else(|| {
        anyhow::anyhow!("conv input {x_shape:?} does not match weight {weight_shape:?}")
    })?;
    let Geometry {
        n,
        c,
        o,
        kh,
        kw,
        ho,
        wo,
        ..
    } = g;
    ensure!(
        n == b * k && gy.size() == [n, o, ho, wo],
        "conv output gradient {:?} does not match {o} channels of {ho}×{wo} for {b}×{k} rows",
        gy.size()
    );
    let (s, p, d) = (cfg.stride, cfg.padding, cfg.dilation);
    let (h, w) = (g.h, g.w);
    let pix = h * w;

    // tap (i, j) of output pixel (y, z) reads input pixel (y·s + i·d - p, z·s + j·d - p); taps
    // that read the zero padding contribute nothing, so only those inside the input are written
    let canvas = Tensor::f_zeros([n, o, kh, kw, h, w], (gy.kind(), gy.device()))?;
    for i in 0..kh {
        let Some((y0, ny)) = inside(i * d - p, s, ho, h) else {
            continue;
        };
        for j in 0..kw {
            let Some((z0, nz)) = inside(j * d - p, s, wo, w) else {
                continue;
            };
            let (hi, wi) = (y0 * s + i * d - p, z0 * s + j * d - p);
            let mut target = canvas
                .f_select(2, i)?
                .f_select(2, j)?
                .f_slice(2, hi, hi + (ny - 1) * s + 1, s)?
                .f_slice(3, wi, wi + (nz - 1) * s + 1, s)?;
            let source = gy.f_slice(2, y0, y0 + ny, 1)?.f_slice(3, z0, z0 + nz, 1)?;
            target.f_copy_(&source)?;
        }
    }
    let xp = x.f_contiguous()?;
    // the K rows of an example become extra pixels: [B, F, K·P]
    let per_example = |t: &Tensor, f: i64| -> Result<Tensor> {
        let t = t.f_reshape([b, k, f, pix])?;
        Ok(if k == 1 {
            t.f_reshape([b, f, pix])?
        } else {
            t.f_permute([0, 2, 1, 3])?.f_reshape([b, f, k * pix])?
        })
    };
    let s_b = per_example(&canvas, o * kh * kw)?;
    let x_b = per_example(&xp, c)?;
    let grads = s_b
        .f_bmm(&x_b.f_transpose(1, 2)?)? // [B, O·kh·kw, C]
        .f_reshape([b, o, kh, kw, c])?
        .f_permute([0, 1, 4, 2, 3])?
        .f_reshape([b, o * c * kh * kw])?;
    let weight = ParamGrads {
        sq_norms: row_sq_norms(&grads)?,
        sum: SumRule::PerSample(grads),
        shape: weight_shape,
    };
    let bias = match (want_bias, bias_shape) {
        (true, Some(shape)) => {
            let gb = gy.f_reshape([b, k, o, ho * wo])?.f_sum_dim_intlist(
                [1i64, 3].as_slice(),
                false,
                None::<Kind>,
            )?;
            Some(ParamGrads {
                sq_norms: row_sq_norms(&gb)?,
                sum: SumRule::PerSample(gb),
                shape,
            })
        }
        _ => None,
    };
    Ok(LayerGrads {
        weight: Some(weight),
        bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The canvas rule equals per-example autograd on strided, dilated, padded convs with K = 2
    /// rows per example and a bias, including a 1×1 input whose outer tap rows and columns lie
    /// wholly in the padding (`inside` returns `None` for them).
    #[test]
    fn matches_brute_force() {
        tch::manual_seed(7);
        let opts = (Kind::Double, Device::Cpu);
        let strided = ConvConfig {
            kernel: 3,
            stride: 2,
            padding: 2,
            dilation: 2,
        };
        for (cfg, h) in [
            (ConvConfig::same(3), 9),
            (strided, 11),
            (ConvConfig::same(1), 5),
            (ConvConfig::same(3), 1),
        ] {
            let (b, k, c, o, kh) = (3, 2, 6, 2, cfg.kernel);
            let x = Tensor::randn([b * k, c, h, h], opts);
            let w = Tensor::randn([o, c, kh, kh], opts).set_requires_grad(true);
            let bias = Tensor::randn([o], opts).set_requires_grad(true);
            let conv = |x: &Tensor| {
                x.conv2d(
                    &w,
                    Some(&bias),
                    [cfg.stride; 2],
                    [cfg.padding; 2],
                    [cfg.dilation; 2],
                    1,
                )
            };
            let gy = conv(&x).detach().randn_like();
            // example e's gradient: d/dθ Σ_{its K rows} <gy, conv(x)>
            let (mut gw, mut gb) = (Vec::new(), Vec::new());
            for e in 0..b {
                let rows = |t: &Tensor| t.narrow(0, e * k, k);
                let l = (conv(&rows(&x)) * rows(&gy)).sum(Kind::Double);
                let g = Tensor::run_backward(&[l], &[&w, &bias], false, false);
                gw.push(g[0].flatten(0, -1));
                gb.push(g[1].shallow_clone());
            }
            let (gw, gb) = (Tensor::stack(&gw, 0), Tensor::stack(&gb, 0));
            let _g = tch::no_grad_guard();
            let got = layer_grads(&x, &gy, w.size(), cfg, (b, k), true, Some(bias.size())).unwrap();
            let cf = Tensor::from_slice(&[0.3f64, -1.0, 2.0]);
            for (part, want) in [(got.weight.unwrap(), gw), (got.bias.unwrap(), gb)] {
                let norms = want.square().sum_dim_intlist(1, false, None::<Kind>);
                assert!(
                    part.sq_norms().allclose(&norms, 1e-9, 1e-9, false),
                    "{cfg:?}"
                );
                let sum = cf.unsqueeze(0).mm(&want).reshape(part.shape.as_slice());
                let got_sum = part.clipped_sum(&cf).unwrap();
                assert!(got_sum.allclose(&sum, 1e-9, 1e-9, false), "{cfg:?}");
            }
        }
    }

    #[test]
    fn chosen_for_adapter_down_projections_only() {
        let same3 = ConvConfig::same(3);
        // LoDA's A on a 48-channel 28×28 input (r = 4): canvas
        assert!(preferred(
            &[64, 48, 28, 28],
            &[4, 48, 3, 3],
            same3,
            64,
            1,
            Strategy::Auto
        ));
        // the MNIST classifier's convs widen: patches
        let c1 = ConvConfig {
            kernel: 8,
            stride: 2,
            padding: 3,
            dilation: 1,
        };
        assert!(!preferred(
            &[256, 1, 28, 28],
            &[16, 1, 8, 8],
            c1,
            256,
            1,
            Strategy::Auto
        ));
        // a U-Net 3×3 conv 128 -> 64 at 7×7: the estimate counts the padded 9×9 pixels (the rule's
        // canvas is 7×7), and by it the canvas costs more than the patches it saves
        assert!(!preferred(
            &[64, 128, 7, 7],
            &[64, 128, 3, 3],
            same3,
            64,
            1,
            Strategy::Auto
        ));
        // forced ghost norms are respected
        assert!(!preferred(
            &[64, 48, 28, 28],
            &[4, 48, 3, 3],
            same3,
            64,
            1,
            Strategy::Ghost
        ));
    }
}
