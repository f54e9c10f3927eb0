//! Low-dimensional adapters on frozen layers: LoRA and LoDA (Liu et al., 2024).
//!
//! For a frozen conv `W` (C_out × C_in × k × k), `A` is a k × k conv C_in → r with W's stride,
//! padding and dilation, `B` a 1 × 1 conv r → C_out initialised to zero, and the layer returns
//! `W * x + (α / r) · B(g(A x))`:
//! - LoRA: `g(u) = u`;
//! - LoDA: `g(u) = u + D2 · act(D1 · u)`, with `D1`, `D2` 1 × 1 convs r → r (per pixel), `D2`
//!   initialised to zero so that LoDA starts as LoRA and LoRA is its special case.
//!
//! Linear layers get the same with linear maps. Every part is a DP-aware layer from
//! [`crate::dp::layers`], so DP-SGD computes exact per-sample gradients for adapters with the
//! rules it already has. While DP-SGD records, `B`, `D1`, `D2` and a 1 × 1 or linear `A` run
//! with per-row weights ([`Conv2d::forward_per_row`], [`Linear::forward_per_row`]): their inputs
//! and outputs (`B`'s is `C_out` channels at full resolution) are then freed during the backward
//! pass, as in a non-private step, instead of being kept to the end of the step.
//! Parameters live in their own VarStore, so the base model's weights stay exactly as diffusers
//! wrote them. Adapter parameters are named `adapter.{layer}.{A,D1,D2,B}.{weight,bias}`.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::dp::layers::{Adapter, Conv2d, ConvConfig, Linear};
use crate::nn::unet::{LayerMut, Site, UNet};

/// LoRA or LoDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Linear low-rank adapter, `g(u) = u`.
    Lora,
    /// Non-linear low-dimensional adapter, `g(u) = u + D2 act(D1 u)`.
    Loda,
}

/// The non-linearity of LoDA's `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterActivation {
    /// x · sigmoid(x).
    Silu,
    /// tanh.
    Tanh,
    /// max(x, 0).
    Relu,
}

impl AdapterActivation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => x.silu(),
            Self::Tanh => x.tanh(),
            Self::Relu => x.relu(),
        }
    }
}

/// Where adapters go and how big they are (saved as `adapter_config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// LoRA or LoDA.
    pub kind: AdapterKind,
    /// Rank r.
    pub rank: i64,
    /// Scale α (the update is multiplied by α / r).
    pub alpha: f64,
    /// LoDA's activation.
    pub activation: AdapterActivation,
    /// Adapt the 3 × 3 and shortcut convs of ResNet blocks.
    pub resnet_convs: bool,
    /// Adapt attention projections (to_q, to_k, to_v, to_out).
    pub attention: bool,
    /// Adapt the time-embedding MLP and the per-block time projections.
    pub time_embedding: bool,
    /// The adapted layers by module name (`down_blocks.0.resnets.0.conv1`, ...), sorted: what
    /// the three switches above select in this U-Net, written with a model folder
    /// ([`crate::synth::save_model_dir`]) so that loaders outside dpsynth need not re-derive
    /// the placement. Checked by [`attach`] when present; empty (and not written) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
}

impl AdapterConfig {
    /// The paper's default placement: ResNet convs, rank 4, α = r.
    pub fn new(kind: AdapterKind, rank: i64) -> Self {
        Self {
            kind,
            rank,
            alpha: rank as f64,
            activation: AdapterActivation::Silu,
            resnet_convs: true,
            attention: false,
            time_embedding: false,
            layers: Vec::new(),
        }
    }

    /// Checks the numbers, naming the bad field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rank >= 1,
            "adapter rank must be at least 1, got {}",
            self.rank
        );
        anyhow::ensure!(
            self.alpha.is_finite() && self.alpha > 0.0,
            "adapter alpha must be positive, got {}",
            self.alpha
        );
        anyhow::ensure!(
            self.resnet_convs || self.attention || self.time_embedding,
            "adapters must go somewhere: enable resnet_convs, attention or time_embedding"
        );
        Ok(())
    }
}

/// A layer an adapter is made of: [`Conv2d`] for conv adapters, [`Linear`] for linear ones.
pub trait AdapterLayer: std::fmt::Debug {
    /// Applies the layer.
    fn apply(&self, x: &Tensor) -> Tensor;
    /// Applies the layer with per-row weights where they pay while recording (the same result;
    /// the tape keeps per-row weight gradients instead of the layer's input and output).
    fn apply_per_row(&self, x: &Tensor) -> Tensor;
    /// Its weight (output dimension first).
    fn weight(&self) -> &Tensor;
    /// `acc + scale · layer(x)` outside autograd (sampling). The default computes it as
    /// written; a layer overrides it where one fused kernel does it in fewer passes.
    fn add_scaled(&self, x: &Tensor, acc: Tensor, scale: f64) -> Tensor {
        acc + self.apply(x) * scale
    }
}

impl AdapterLayer for Conv2d {
    fn apply(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }

    fn apply_per_row(&self, x: &Tensor) -> Tensor {
        self.forward_per_row(x)
    }

    fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// For a 1 × 1 convolution without bias (`B`), one batched matmul that adds into `acc`
    /// (`baddbmm`): no separate output, scaling or sum pass at the layer's full width, which on
    /// CPU cost LoDA's sampling more than the adapter's own convolutions.
    fn add_scaled(&self, x: &Tensor, acc: Tensor, scale: f64) -> Tensor {
        let pointwise = self.cfg.is_pointwise() && self.bias.is_none();
        let (c_in, c_out) = self.channels();
        match (x.size().as_slice(), acc.size().as_slice()) {
            (&[n, ci, h, w], &[na, co, ha, wa])
                if pointwise && (ci, co) == (c_in, c_out) && (n, h, w) == (na, ha, wa) =>
            {
                let weight = self.weight.reshape([1, co, ci]).expand([n, co, ci], false);
                acc.reshape([n, co, h * w])
                    .baddbmm(&weight, &x.reshape([n, ci, h * w]), 1.0, scale)
                    .reshape([n, co, h, w])
            }
            _ => acc + self.apply(x) * scale,
        }
    }
}

impl AdapterLayer for Linear {
    fn apply(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }

    fn apply_per_row(&self, x: &Tensor) -> Tensor {
        self.forward_per_row(x)
    }

    fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// One adapter on one layer: `x ↦ (α / r) · B(g(A x))`.
#[derive(Debug)]
pub struct LowRank<L> {
    a: L,
    /// LoDA's `(D1, D2)`; `None` for LoRA.
    d: Option<(L, L)>,
    b: L,
    scale: f64,
    activation: AdapterActivation,
}

impl LowRank<Conv2d> {
    /// An adapter for `base` (a conv), with parameters under `p`.
    pub fn for_conv(p: nn::Path, base: &Conv2d, cfg: &AdapterConfig) -> Self {
        let (c_in, c_out) = base.channels();
        let r = cfg.rank;
        Self {
            a: Conv2d::new(&p / "A", c_in, r, base.cfg, false),
            d: (cfg.kind == AdapterKind::Loda).then(|| {
                (
                    Conv2d::new(&p / "D1", r, r, ConvConfig::same(1), true),
                    Conv2d::zeros(&p / "D2", r, r, ConvConfig::same(1), true),
                )
            }),
            b: Conv2d::zeros(&p / "B", r, c_out, ConvConfig::same(1), false),
            scale: cfg.alpha / r as f64,
            activation: cfg.activation,
        }
    }
}

impl LowRank<Linear> {
    /// An adapter for `base` (a linear layer), with parameters under `p`.
    pub fn for_linear(p: nn::Path, base: &Linear, cfg: &AdapterConfig) -> Self {
        let (d_in, d_out) = base.dims();
        let r = cfg.rank;
        Self {
            a: Linear::new(&p / "A", d_in, r, false),
            d: (cfg.kind == AdapterKind::Loda).then(|| {
                (
                    Linear::new(&p / "D1", r, r, true),
                    Linear::zeros(&p / "D2", r, r, true),
                )
            }),
            b: Linear::zeros(&p / "B", r, d_out, false),
            scale: cfg.alpha / r as f64,
            activation: cfg.activation,
        }
    }
}

impl<L: AdapterLayer> LowRank<L> {
    /// `g(A x)`, the rank-r code that `B` maps back to the layer's width.
    fn code(&self, x: &Tensor) -> Tensor {
        let u = self.a.apply_per_row(x);
        match &self.d {
            Some((d1, d2)) => &u + d2.apply_per_row(&self.activation.apply(&d1.apply_per_row(&u))),
            None => u,
        }
    }
}

impl<L: AdapterLayer> Adapter for LowRank<L> {
    /// `y + (α / r) · B(g(A x))`. While autograd tracks the adapter (training, and DP-SGD's
    /// recording with per-row weights) it is computed as written; outside autograd (sampling)
    /// `B`'s product, the scale and the sum are one fused kernel ([`AdapterLayer::add_scaled`]).
    fn add_to(&self, y: Tensor, x: &Tensor) -> Tensor {
        let g = self.code(x);
        if g.requires_grad() || y.requires_grad() {
            y + self.b.apply_per_row(&g) * self.scale
        } else {
            self.b.add_scaled(&g, y, self.scale)
        }
    }

    /// LoRA: `(α / r) · B A`, as a weight of the base layer's shape (`B` is 1 × 1, so for a conv
    /// the product composes `A`'s kernel with `B`'s channel mix at the same stride and padding).
    fn merged_weight(&self) -> Option<Tensor> {
        if self.d.is_some() {
            return None;
        }
        let (a, b) = (self.a.weight(), self.b.weight());
        let mut shape = a.size();
        shape[0] = b.size()[0];
        let product = b.flatten(1, -1).matmul(&a.flatten(1, -1));
        Some(product.view(shape.as_slice()) * self.scale)
    }
}

/// Merges every LoRA adapter of `unet` into its layer's weight and removes it, so that the U-Net
/// is a plain `UNet2DModel` that computes what the adapted one did. Fails, changing nothing,
/// when an adapter is not linear (LoDA). Returns how many layers were merged.
pub fn merge_lora(unet: &mut UNet) -> anyhow::Result<usize> {
    let mut merged = Vec::new();
    let mut unmergeable = 0;
    unet.for_each_adaptable(&mut |_, layer| {
        let (weight, adapter) = match layer {
            LayerMut::Conv(c) => (&c.weight, &c.adapter),
            LayerMut::Linear(l) => (&l.weight, &l.adapter),
        };
        if let Some(adapter) = adapter {
            match adapter.merged_weight() {
                Some(delta) => merged.push((weight.shallow_clone(), delta)),
                None => unmergeable += 1,
            }
        }
    });
    anyhow::ensure!(
        unmergeable == 0,
        "{unmergeable} adapters are LoDA: their update is not linear in the input, so it \
         cannot be folded into the base weights"
    );
    tch::no_grad(|| {
        for (weight, delta) in &merged {
            let mut w = weight.shallow_clone();
            let _ = w.f_add_(delta);
        }
    });
    unet.for_each_adaptable(&mut |_, layer| match layer {
        LayerMut::Conv(c) => c.adapter = None,
        LayerMut::Linear(l) => l.adapter = None,
    });
    Ok(merged.len())
}

/// Attaches adapters to `unet` where `cfg` says, with parameters in `store` (named after each
/// layer: `adapter.{layer}.A.weight`, ...). Returns how many layers got one. A `cfg` that lists
/// its layers must list exactly those its switches select (else an error names the difference).
pub fn attach(unet: &mut UNet, store: &nn::VarStore, cfg: &AdapterConfig) -> anyhow::Result<usize> {
    cfg.validate()?;
    let count = attach_unchecked(unet, store, cfg);
    if !cfg.layers.is_empty() {
        let attached = layer_names(store);
        let mut listed = cfg.layers.clone();
        listed.sort();
        let missing: Vec<&String> = listed.iter().filter(|l| !attached.contains(l)).collect();
        let unlisted: Vec<&String> = attached.iter().filter(|l| !listed.contains(l)).collect();
        anyhow::ensure!(
            missing.is_empty() && unlisted.is_empty(),
            "adapter layers do not match the placement switches: listed but not selected \
             {missing:?}, selected but not listed {unlisted:?}"
        );
    }
    Ok(count)
}

/// The layers that carry an adapter in `store` (those with an `adapter.{layer}.A.weight`),
/// sorted by name.
pub fn layer_names(store: &nn::VarStore) -> Vec<String> {
    let mut names: Vec<String> = store
        .variables()
        .keys()
        .filter_map(|k| k.strip_prefix("adapter.")?.strip_suffix(".A.weight"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// [`attach`] without the checks.
fn attach_unchecked(unet: &mut UNet, store: &nn::VarStore, cfg: &AdapterConfig) -> usize {
    let root = store.root();
    let mut count = 0;
    unet.for_each_adaptable(&mut |site, layer| {
        let wanted = match site {
            Site::ResnetConv => cfg.resnet_convs,
            Site::Attention => cfg.attention,
            Site::TimeEmbedding => cfg.time_embedding,
        };
        if !wanted {
            return;
        }
        count += 1;
        match layer {
            LayerMut::Conv(c) => {
                let p = under(&root, &c.name);
                c.adapter = Some(Box::new(LowRank::for_conv(p, c, cfg)));
            }
            LayerMut::Linear(l) => {
                let p = under(&root, &l.name);
                l.adapter = Some(Box::new(LowRank::for_linear(p, l, cfg)));
            }
        }
    });
    count
}

/// The path `{layer}.adapter` in the adapter store (`nn::Path::sub` takes one component at a time).
fn under<'a>(root: &nn::Path<'a>, layer: &str) -> nn::Path<'a> {
    let mut p = root.sub("adapter");
    for c in layer.split('.') {
        p = p.sub(c);
    }
    p
}
