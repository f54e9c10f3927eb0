//! A small CNN classifier trainable with DP-SGD (downstream evaluation of synthetic data).
//!
//! The architecture of the Opacus MNIST example / Tramèr & Boneh (2021): conv 16 8×8 stride 2
//! pad 3 → act → maxpool 2 stride 1 → conv 32 4×4 stride 2 → act → maxpool 2 stride 1 → linear 32 →
//! act → linear classes, optionally with GroupNorm after each convolution (never BatchNorm, which
//! mixes examples and breaks per-example gradients). Parameter names follow PyTorch
//! (`conv1.weight`, `gn1.bias`, `fc2.weight`, ...).

use anyhow::{ensure, Result};
use tch::{nn, Kind, Reduction, Tensor};

use crate::dp::layers::{Conv2d, ConvConfig, GroupNorm, Linear};

/// The non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh: bounded activations, preferred for DP-SGD by Papernot et al. and Tramèr & Boneh.
    Tanh,
    /// ReLU, as in the Opacus MNIST example.
    Relu,
}

/// Shape and variant of the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// Input channels (1 or 3).
    pub in_channels: i64,
    /// Input height = width.
    pub image_size: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// GroupNorm after each convolution with this many groups (must divide 16); `None` for none.
    pub group_norm_groups: Option<i64>,
    /// Activation function.
    pub activation: Activation,
}

impl ClassifierConfig {
    /// 1 × 28 × 28 input, 10 classes, GroupNorm(4), tanh.
    pub fn mnist() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            num_classes: 10,
            group_norm_groups: Some(4),
            activation: Activation::Tanh,
        }
    }

    /// 3 × 32 × 32 input, 10 classes, GroupNorm(4), tanh.
    pub fn cifar10() -> Self {
        Self {
            in_channels: 3,
            image_size: 32,
            ..Self::mnist()
        }
    }
}

const C1: i64 = 16;
const C2: i64 = 32;
const HIDDEN: i64 = 32;

/// Side length after conv1 → pool → conv2 → pool for a `size × size` input.
fn feature_side(size: i64) -> i64 {
    let s1 = (size + 2 * 3 - 8) / 2 + 1 - 1;
    (s1 - 4) / 2 + 1 - 1
}

/// The CNN; see the module documentation for the architecture.
#[derive(Debug)]
pub struct Classifier {
    conv1: Conv2d,
    gn1: Option<GroupNorm>,
    conv2: Conv2d,
    gn2: Option<GroupNorm>,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
    cfg: ClassifierConfig,
}

impl Classifier {
    /// Creates the parameters under `p` with PyTorch's default initialisation.
    pub fn new(p: &nn::Path, cfg: ClassifierConfig) -> Result<Self> {
        ensure!(
            cfg.in_channels > 0 && cfg.num_classes > 0,
            "classifier needs positive channels and classes: {cfg:?}"
        );
        ensure!(
            cfg.image_size >= 16,
            "classifier input must be at least 16×16, got {}",
            cfg.image_size
        );
        if let Some(g) = cfg.group_norm_groups {
            ensure!(
                g > 0 && C1 % g == 0,
                "GroupNorm groups must divide {C1}, got {g}"
            );
        }
        let side = feature_side(cfg.image_size);
        let conv = |kernel, stride, padding| ConvConfig {
            kernel,
            stride,
            padding,
            dilation: 1,
        };
        let gn = |name: &str, c| {
            cfg.group_norm_groups
                .map(|g| GroupNorm::new(p / name, g, c, 1e-5))
        };
        Ok(Self {
            conv1: Conv2d::new(p / "conv1", cfg.in_channels, C1, conv(8, 2, 3), true),
            gn1: gn("gn1", C1),
            conv2: Conv2d::new(p / "conv2", C1, C2, conv(4, 2, 0), true),
            gn2: gn("gn2", C2),
            fc1: Linear::new(p / "fc1", C2 * side * side, HIDDEN, true),
            fc2: Linear::new(p / "fc2", HIDDEN, cfg.num_classes, true),
            activation: cfg.activation,
            cfg,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    fn act(&self, x: Tensor) -> Tensor {
        match self.activation {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
        }
    }

    /// Logits `[N, classes]` for images `[N, C, S, S]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.features(x))
    }

    /// The penultimate features `[N, hidden]` that the last layer maps to logits.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let pool = |x: Tensor| x.max_pool2d([2, 2], [1, 1], [0, 0], [1, 1], false);
        let mut h = self.conv1.forward(x);
        if let Some(gn) = &self.gn1 {
            h = gn.forward(&h);
        }
        h = pool(self.act(h));
        h = self.conv2.forward(&h);
        if let Some(gn) = &self.gn2 {
            h = gn.forward(&h);
        }
        h = pool(self.act(h)).flatten(1, -1);
        self.act(self.fc1.forward(&h))
    }
}

/// A network mapping images `[N, C, H, W]` in [-1, 1] to logits `[N, classes]`: the CNN or the
/// ResNet, so training and evaluation code serves both.
pub trait ImageClassifier: std::fmt::Debug {
    /// Logits `[N, classes]`.
    fn forward(&self, x: &Tensor) -> Tensor;
    /// The penultimate features `[N, F]` that the last (linear) layer maps to logits.
    fn features(&self, x: &Tensor) -> Tensor;
}

impl ImageClassifier for Classifier {
    fn forward(&self, x: &Tensor) -> Tensor {
        Classifier::forward(self, x)
    }
    fn features(&self, x: &Tensor) -> Tensor {
        Classifier::features(self, x)
    }
}

/// Cross-entropy of each row of `logits [N, classes]` against int64 `labels [N]`, shape `[N]`.
pub fn cross_entropy_per_example(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    ensure!(
        logits.dim() == 2 && labels.size() == [logits.size()[0]],
        "logits {:?} and labels {:?} do not match",
        logits.size(),
        labels.size()
    );
    Ok(logits.f_cross_entropy_loss::<Tensor>(
        &labels.f_to_kind(Kind::Int64)?,
        None,
        Reduction::None,
        -100,
        0.0,
    )?)
}
