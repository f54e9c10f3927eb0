//! Layers whose per-sample gradients DP-SGD can compute.
//!
//! Every trainable layer of every model in dpsynth (classifier, U-Net, adapters) is one of the four
//! kinds here. When the [tape](super::tape) is recording, a layer whose parameters require grad
//! records its input activation and its output; the engine then takes the gradient of the loss at
//! each recorded output and applies the per-kind rule in [`super::grad_sample`]. Frozen layers
//! record nothing and their weights never get gradients. `forward_per_row` runs a narrow layer
//! with per-row weights instead, so that the tape keeps less ([`LayerKind::PerRowWeight`]).
//!
//! Parameters live in a `tch::nn::VarStore` under the same names as PyTorch/diffusers
//! (`weight`, `bias`), so checkpoints interchange with safetensors files written by PyTorch.

use tch::{nn, Tensor};

use super::tape::{self, LayerKind};

/// PyTorch's default initialisation bound for conv and linear layers: U(-1/sqrt(fan_in), +).
fn default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A trainable low-rank side path added to a layer's output (LoRA, LoDA): the layer returns
/// `base(x) + delta(x)`. Implemented in [`crate::nn::adapter`].
pub trait Adapter: std::fmt::Debug {
    /// The base layer's output `y` for input `x` plus the adapter's contribution, which is
    /// shaped like `y`.
    fn add_to(&self, y: Tensor, x: &Tensor) -> Tensor;

    /// The change to the base layer's weight that this adapter amounts to, when it is linear
    /// in the input (LoRA); `None` when it is not (LoDA), so it cannot be merged.
    fn merged_weight(&self) -> Option<Tensor> {
        None
    }
}

/// The parameter-path name of a layer (`down_blocks.0.resnets.0.conv1`), from its `nn::Path`.
fn layer_name(p: &nn::Path) -> String {
    p.path("weight")
        .trim_end_matches("weight")
        .trim_end_matches('.')
        .to_string()
}

/// Whether a layer with trainable `weight` should use per-row weights while recording: when one
/// row's weight gradient is smaller than the `kept` elements per row (input and output) that
/// the plain layer's tape entry would keep.
fn per_row_pays(weight: &Tensor, kept: i64) -> bool {
    weight.requires_grad() && (weight.numel() as i64) < kept && tape::is_recording()
}

/// `param` expanded to `[rows, ...param shape]` without a copy, recorded on the tape as a
/// [`LayerKind::PerRowWeight`] entry when it requires grad.
///
/// A layer computed as a batched matmul with such *per-row weights* gives the same result as the
/// plain layer, up to rounding, but its backward pass delivers each row's gradient of the
/// parameter at this view. The tape then keeps these small gradients instead of the layer's
/// input and output, which autograd frees as soon as the backward pass is done with them (a
/// plain entry keeps them through the backward pass until its rule has run, with the gradient
/// at the output), and the rule after the backward pass only sums each example's rows.
fn rows_of(param: &Tensor, rows: i64) -> Tensor {
    let mut shape = param.size();
    shape.insert(0, rows);
    let view = param.unsqueeze(0).expand(shape.as_slice(), false);
    tape::record_per_row(param, &view);
    view
}

/// A fully connected layer `y = x W^T + b` over the last dimension of `x`.
#[derive(Debug)]
pub struct Linear {
    /// Weight, `out × in`.
    pub weight: Tensor,
    /// Optional bias, `out`.
    pub bias: Option<Tensor>,
    /// Parameter-path name of the layer.
    pub name: String,
    /// Optional adapter whose output is added to the layer's.
    pub adapter: Option<Box<dyn Adapter>>,
}

impl Linear {
    /// Creates `p/weight` and `p/bias` with PyTorch's default initialisation.
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], default_init(in_dim));
        let bias = bias.then(|| p.var("bias", &[out_dim], default_init(in_dim)));
        Self {
            weight,
            bias,
            name: layer_name(&p),
            adapter: None,
        }
    }

    /// Like [`Linear::new`] but weight and bias start at zero (LoRA's B matrix).
    pub fn zeros(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], nn::Init::Const(0.0));
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.0)));
        Self {
            weight,
            bias,
            name: layer_name(&p),
            adapter: None,
        }
    }

    /// Input and output features.
    pub fn dims(&self) -> (i64, i64) {
        let s = self.weight.size();
        (s[1], s[0])
    }

    /// Applies the layer (plus its adapter); records on the tape when trainable.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        tape::record(LayerKind::Linear, &self.weight, self.bias.as_ref(), x, &y);
        with_adapter(y, x, self.adapter.as_deref())
    }

    /// [`Linear::forward`] with per-row weights ([`LayerKind::PerRowWeight`]) while recording,
    /// where they pay: when one row's weight gradient (`in·out`) is smaller than the input and
    /// output a plain entry keeps per row (`T·(in + out)` for `T` positions per row), i.e.
    /// `T > in·out / (in + out)`, which lies between half of `min(in, out)` and `min(in, out)`;
    /// otherwise, and always outside recording, exactly [`Linear::forward`]. `x` is
    /// `[rows, ..., in]`.
    pub fn forward_per_row(&self, x: &Tensor) -> Tensor {
        let (d, o) = self.dims();
        let shape = x.size();
        let rows = shape.first().copied().unwrap_or(0);
        let fits = shape.len() >= 2 && rows > 0 && shape.last() == Some(&d);
        let t = if fits {
            x.numel() as i64 / (rows * d)
        } else {
            0
        };
        if !fits || !per_row_pays(&self.weight, t * (d + o)) {
            return self.forward(x);
        }
        // [rows, T, in] × [rows, in, out] (+ bias [rows, 1, out])
        let x_rows = x.reshape([rows, t, d]);
        let w_rows = rows_of(&self.weight, rows).transpose(1, 2);
        let y = match &self.bias {
            Some(b) => rows_of(b, rows)
                .unsqueeze(1)
                .baddbmm(&x_rows, &w_rows, 1, 1),
            None => x_rows.bmm(&w_rows),
        };
        let mut out_shape = shape;
        if let Some(last) = out_shape.last_mut() {
            *last = o;
        }
        with_adapter(y.reshape(out_shape.as_slice()), x, self.adapter.as_deref())
    }
}

/// The layer's output plus its adapter's contribution, if it has one.
fn with_adapter(y: Tensor, x: &Tensor, adapter: Option<&dyn Adapter>) -> Tensor {
    match adapter {
        Some(a) => a.add_to(y, x),
        None => y,
    }
}

/// Hyper-parameters of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    /// Kernel size k (k × k).
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Zero padding on each side.
    pub padding: i64,
    /// Dilation.
    pub dilation: i64,
}

impl ConvConfig {
    /// A k × k convolution with stride 1 and "same" padding for odd k.
    pub fn same(kernel: i64) -> Self {
        Self {
            kernel,
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
        }
    }

    /// Whether this is a 1 × 1 convolution with stride 1 and no padding: a per-pixel matmul
    /// over channels.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// A 2-D convolution (groups = 1) over `N × C × H × W` input.
#[derive(Debug)]
pub struct Conv2d {
    /// Weight, `C_out × C_in × k × k`.
    pub weight: Tensor,
    /// Optional bias, `C_out`.
    pub bias: Option<Tensor>,
    /// Geometry.
    pub cfg: ConvConfig,
    /// Parameter-path name of the layer.
    pub name: String,
    /// Optional adapter whose output is added to the layer's.
    pub adapter: Option<Box<dyn Adapter>>,
}

impl Conv2d {
    /// Creates `p/weight` and `p/bias` with PyTorch's default initialisation.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, cfg: ConvConfig, bias: bool) -> Self {
        let fan_in = c_in * cfg.kernel * cfg.kernel;
        let weight = p.var(
            "weight",
            &[c_out, c_in, cfg.kernel, cfg.kernel],
            default_init(fan_in),
        );
        let bias = bias.then(|| p.var("bias", &[c_out], default_init(fan_in)));
        Self {
            weight,
            bias,
            cfg,
            name: layer_name(&p),
            adapter: None,
        }
    }

    /// Like [`Conv2d::new`] but weight and bias start at zero (LoRA's B matrix).
    pub fn zeros(p: nn::Path, c_in: i64, c_out: i64, cfg: ConvConfig, bias: bool) -> Self {
        let weight = p.var(
            "weight",
            &[c_out, c_in, cfg.kernel, cfg.kernel],
            nn::Init::Const(0.0),
        );
        let bias = bias.then(|| p.var("bias", &[c_out], nn::Init::Const(0.0)));
        Self {
            weight,
            bias,
            cfg,
            name: layer_name(&p),
            adapter: None,
        }
    }

    /// Applies the convolution (plus its adapter); records on the tape when trainable.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = self.cfg;
        let y = x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [c.stride, c.stride],
            [c.padding, c.padding],
            [c.dilation, c.dilation],
            1,
        );
        tape::record(
            LayerKind::Conv2d(c),
            &self.weight,
            self.bias.as_ref(),
            x,
            &y,
        );
        with_adapter(y, x, self.adapter.as_deref())
    }

    /// [`Conv2d::forward`] with per-row weights ([`LayerKind::PerRowWeight`]) while recording,
    /// for a 1 × 1 convolution (stride 1, no padding) where they pay, as a batched matmul;
    /// otherwise, and always outside recording, exactly [`Conv2d::forward`]. Other convolutions
    /// stay plain: grouped by row, they cost more time on CPU than the rules they would save.
    pub fn forward_per_row(&self, x: &Tensor) -> Tensor {
        let pointwise = self.cfg.is_pointwise();
        let (c_in, c_out) = self.channels();
        let size = x.size();
        let &[rows, ci, h, w] = size.as_slice() else {
            return self.forward(x);
        };
        if !pointwise
            || ci != c_in
            || rows == 0
            || !per_row_pays(&self.weight, (ci + c_out) * h * w)
        {
            return self.forward(x);
        }
        // [rows, out, in] × [rows, in, H·W] (+ bias [rows, out, 1])
        let w_rows = rows_of(&self.weight, rows).reshape([rows, c_out, c_in]);
        let x_rows = x.reshape([rows, c_in, h * w]);
        let y = match &self.bias {
            Some(b) => rows_of(b, rows)
                .unsqueeze(2)
                .baddbmm(&w_rows, &x_rows, 1, 1),
            None => w_rows.bmm(&x_rows),
        };
        with_adapter(y.reshape([rows, c_out, h, w]), x, self.adapter.as_deref())
    }

    /// Input and output channels.
    pub fn channels(&self) -> (i64, i64) {
        let s = self.weight.size();
        (s[1], s[0])
    }
}

/// A lookup table `y = W[idx]` for integer indices of any shape.
#[derive(Debug)]
pub struct Embedding {
    /// Table, `num × dim`.
    pub weight: Tensor,
}

impl Embedding {
    /// Creates `p/weight` initialised N(0, 1) as in PyTorch.
    pub fn new(p: nn::Path, num: i64, dim: i64) -> Self {
        let weight = p.var(
            "weight",
            &[num, dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        Self { weight }
    }

    /// Looks up `idx` (int64); records on the tape when trainable.
    pub fn forward(&self, idx: &Tensor) -> Tensor {
        let y = Tensor::embedding(&self.weight, idx, -1, false, false);
        tape::record(LayerKind::Embedding, &self.weight, None, idx, &y);
        y
    }
}

/// Group normalisation with a per-channel affine transform, over `N × C × ...` input.
#[derive(Debug)]
pub struct GroupNorm {
    /// Scale, `C`.
    pub weight: Tensor,
    /// Shift, `C`.
    pub bias: Tensor,
    /// Number of groups.
    pub groups: i64,
    /// Variance epsilon.
    pub eps: f64,
}

impl GroupNorm {
    /// Creates `p/weight` (ones) and `p/bias` (zeros).
    pub fn new(p: nn::Path, groups: i64, channels: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[channels], nn::Init::Const(1.0));
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        Self {
            weight,
            bias,
            groups,
            eps,
        }
    }

    /// Normalises then applies the affine map (one fused op). When recording, the input is what
    /// the tape keeps; the per-sample rule recomputes the normalised activation from it, which
    /// is cheaper than splitting the forward into normalisation and affine ops.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        );
        tape::record(
            LayerKind::GroupNorm {
                groups: self.groups,
                eps: self.eps,
            },
            &self.weight,
            Some(&self.bias),
            x,
            &y,
        );
        y
    }
}
