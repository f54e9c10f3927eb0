//! Conv2d in linear form: every output pixel is a position whose input is the receptive-field
//! patch (im2col), so the conv weight's per-example gradients follow the matmul rule.
//!
//! Patches are gathered a chunk of examples at a time with one `index_select` of precomputed
//! offsets along the flattened (zero-padded) input of each row, which copies into a
//! position-major `[rows, positions, features]` tensor. On CPU this is the fastest gather we
//! measured: for the MNIST CNN at batch 256 (one thread) about 2 ms for conv1 and 0.8 ms for
//! conv2, against 3 ms and 3.3 ms for a copy of a 6-D strided view of the input (feature-major),
//! and 7.4 ms for `F.unfold` (conv1).

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use crate::dp::layers::ConvConfig;

/// A convolution's input, ready to be unfolded into per-example patches `[B, D, K·L]`.
#[derive(Debug)]
pub(super) struct Patches {
    /// Recorded input `[B·K, C, H, W]`.
    input: Tensor,
    kh: i64,
    kw: i64,
    cfg: ConvConfig,
    /// Rows per example.
    k: i64,
    /// Output size.
    ho: i64,
    wo: i64,
    /// Offsets of all patches into one flattened padded input row (see [`patch_index`]).
    index: Tensor,
}

impl Patches {
    /// Checks the geometry of a conv with weight `[O, C, kh, kw]` on `input [B·K, C, H, W]`.
    fn new(input: &Tensor, weight_shape: &[i64], cfg: ConvConfig, k: i64) -> Result<Self> {
        let x_shape = input.size();
        ensure!(
            x_shape.len() == 4 && weight_shape.len() == 4 && x_shape[1] == weight_shape[1],
            "conv input {x_shape:?} does not match weight {weight_shape:?}"
        );
        let (h, w) = (x_shape[2], x_shape[3]);
        let (kh, kw) = (weight_shape[2], weight_shape[3]);
        let (s, p, d) = (cfg.stride, cfg.padding, cfg.dilation);
        ensure!(
            s >= 1 && d >= 1 && p >= 0 && kh >= 1 && kw >= 1,
            "invalid conv geometry {cfg:?} with kernel {kh}×{kw}"
        );
        let (ekh, ekw) = (d * (kh - 1) + 1, d * (kw - 1) + 1);
        ensure!(
            h + 2 * p >= ekh && w + 2 * p >= ekw,
            "conv input {h}×{w} (padding {p}) is smaller than the dilated kernel {ekh}×{ekw}"
        );
        let (ho, wo) = ((h + 2 * p - ekh) / s + 1, (w + 2 * p - ekw) / s + 1);
        let index = patch_index(
            x_shape[1],
            (h + 2 * p, w + 2 * p),
            (kh, kw),
            (ho, wo),
            cfg,
            input.device(),
        )?;
        Ok(Self {
            input: input.shallow_clone(),
            kh,
            kw,
            cfg,
            k,
            ho,
            wo,
            index,
        })
    }

    /// `(B, D, K·L)`.
    pub(super) fn dims(&self) -> (i64, i64, i64) {
        let s = self.input.size();
        (
            s[0] / self.k,
            s[1] * self.kh * self.kw,
            self.k * self.ho * self.wo,
        )
    }

    /// Patches of examples `start .. start + len` as a `[len, C·kh·kw, K·Ho·Wo]` view of a
    /// position-major `[len, K·Ho·Wo, C·kh·kw]` tensor, features ordered like the weight
    /// (`c, i, j`). Position-major storage is the layout of a Linear layer's input: the
    /// per-example matmuls take it as a transposed batch and the one-matmul clipped sum over all
    /// positions as a `[len·K·L, D]` matrix, both without a copy.
    pub(super) fn examples(&self, start: i64, len: i64) -> Result<Tensor> {
        self.gather(start, len, None)
    }

    /// Like [`Patches::examples`], but written into `buf` (grown when too small) rather than
    /// into fresh memory: on CPU, fresh pages for the patches of every step cost about as much
    /// as gathering them.
    pub(super) fn examples_in(
        &self,
        start: i64,
        len: i64,
        buf: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        self.gather(start, len, Some(buf))
    }

    fn gather(&self, start: i64, len: i64, buf: Option<&mut Option<Tensor>>) -> Result<Tensor> {
        let p = self.cfg.padding;
        let x = self.input.f_narrow(0, start * self.k, len * self.k)?;
        let xp = if p > 0 {
            x.f_constant_pad_nd([p, p, p, p])?
        } else {
            x
        };
        let s = xp.size();
        let rows = xp.f_reshape([s[0], s[1] * s[2] * s[3]])?;
        let (_, f, t) = self.dims();
        let gathered = match buf {
            None => rows.f_index_select(1, &self.index)?,
            Some(buf) => {
                let per_row = self.index.size()[0];
                let numel = s[0] * per_row;
                let (kind, device) = (rows.kind(), rows.device());
                let b = match buf.take() {
                    Some(b)
                        if b.numel() as i64 >= numel
                            && b.kind() == kind
                            && b.device() == device =>
                    {
                        b
                    }
                    _ => Tensor::f_empty([numel], (kind, device))?,
                };
                let out = b.f_narrow(0, 0, numel)?.f_view([s[0], per_row])?;
                *buf = Some(b);
                rows.f_index_select_out(&out, 1, &self.index)?
            }
        };
        Ok(gathered.f_view([len, t, f])?.f_transpose(1, 2)?)
    }
}

/// Flat offsets into one zero-padded input `[C, Hp, Wp]` of every output position's patch,
/// `[Ho·Wo·C·kh·kw]`, positions major and features ordered like the weight (`c, i, j`).
fn patch_index(
    c: i64,
    (hp, wp): (i64, i64),
    (kh, kw): (i64, i64),
    (ho, wo): (i64, i64),
    cfg: ConvConfig,
    device: Device,
) -> Result<Tensor> {
    let (s, d) = (cfg.stride, cfg.dilation);
    let offsets = Tensor::f_arange(c * hp * wp, (Kind::Int64, device))?;
    Ok(offsets
        .f_as_strided([ho, wo, c, kh, kw], [wp * s, s, hp * wp, wp * d, d], None)?
        .f_contiguous()?
        .f_view([-1])?)
}

/// `[B·K, F, L]` -> `[B, F, K·L]`: the K rows of an example become positions (a view for K = 1).
fn fold_rows(t: &Tensor, b: i64, k: i64, f: i64, l: i64) -> Result<Tensor> {
    Ok(t.f_reshape([b, k, f, l])?
        .f_permute([0, 2, 1, 3])?
        .f_reshape([b, f, k * l])?)
}

/// The patch source and output gradient `[B, O, K·L]` of a conv with weight `[O, C, kh, kw]`, for
/// `b` examples of `k` rows.
pub(super) fn linear_form(
    x: &Tensor,
    gy: &Tensor,
    weight_shape: &[i64],
    cfg: ConvConfig,
    b: i64,
    k: i64,
) -> Result<(Patches, Tensor)> {
    let patches = Patches::new(x, weight_shape, cfg, k)?;
    let (o, ho, wo) = (weight_shape[0], patches.ho, patches.wo);
    let gy_shape = gy.size();
    ensure!(
        gy_shape.len() == 4 && gy_shape[1] == o && gy_shape[2] == ho && gy_shape[3] == wo,
        "conv output gradient {gy_shape:?} does not match {o} channels of {ho}×{wo}"
    );
    let gy = fold_rows(&gy.f_reshape([b * k, o, ho * wo])?, b, k, o, ho * wo)?;
    Ok((patches, gy))
}
