//! A small residual network with GroupNorm for colour images (CIFAR-10), trainable with DP-SGD.
//!
//! The CIFAR ResNet of He et al. (2016, section 4.2) cut down for a CPU: a 3 × 3 stem conv, then
//! three stages of basic blocks at widths 16/32/64 (the second and third halve the resolution),
//! global average pooling and one linear layer. With one block per stage it is a ResNet-8
//! (78k parameters). Every BatchNorm of the original is a GroupNorm, which normalises each example
//! on its own, so per-example gradients stay exact and the same net serves the DP-SGD baseline.
//! Parameter names follow PyTorch (`stem.conv.weight`, `stage2.0.gn1.bias`, `stage3.0.short.conv.weight`,
//! `fc.weight`).

use anyhow::{ensure, Result};
use tch::{nn, Kind, Tensor};

use super::classifier::ImageClassifier;
use crate::dp::layers::{Conv2d, ConvConfig, GroupNorm, Linear};

/// Shape of the residual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// Channels of the three stages.
    pub widths: [i64; 3],
    /// Basic blocks per stage (1: ResNet-8, 2: ResNet-14, 3: ResNet-20).
    pub blocks_per_stage: usize,
    /// GroupNorm groups (must divide every width).
    pub groups: i64,
}

impl ResNetConfig {
    /// ResNet-8 for 3-channel images and 10 classes: widths 16/32/64, GroupNorm(8).
    pub fn cifar10() -> Self {
        Self {
            in_channels: 3,
            num_classes: 10,
            widths: [16, 32, 64],
            blocks_per_stage: 1,
            groups: 8,
        }
    }
}

/// conv 3 × 3 → GroupNorm, the unit every block is made of.
#[derive(Debug)]
struct ConvNorm {
    conv: Conv2d,
    gn: GroupNorm,
}

impl ConvNorm {
    /// `names` are the conv's and the norm's parameter names under `p`; `k` the kernel side.
    fn new(
        p: &nn::Path,
        [conv, gn]: [&str; 2],
        (c_in, c_out): (i64, i64),
        k: i64,
        stride: i64,
        groups: i64,
    ) -> Self {
        let cfg = ConvConfig {
            kernel: k,
            stride,
            padding: k / 2,
            dilation: 1,
        };
        Self {
            conv: Conv2d::new(p / conv, c_in, c_out, cfg, false),
            gn: GroupNorm::new(p / gn, groups, c_out, 1e-5),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.gn.forward(&self.conv.forward(x))
    }
}

/// A basic block: two 3 × 3 conv + GroupNorm layers and a shortcut (a strided 1 × 1 conv +
/// GroupNorm when the shape changes, else the identity).
#[derive(Debug)]
struct Block {
    first: ConvNorm,
    second: ConvNorm,
    short: Option<ConvNorm>,
}

impl Block {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, groups: i64) -> Self {
        Self {
            first: ConvNorm::new(p, ["conv1", "gn1"], (c_in, c_out), 3, stride, groups),
            second: ConvNorm::new(p, ["conv2", "gn2"], (c_out, c_out), 3, 1, groups),
            short: (stride != 1 || c_in != c_out).then(|| {
                ConvNorm::new(
                    &(p / "short"),
                    ["conv", "gn"],
                    (c_in, c_out),
                    1,
                    stride,
                    groups,
                )
            }),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.second.forward(&self.first.forward(x).relu());
        let s = match &self.short {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        (h + s).relu()
    }
}

/// The residual network; see the module documentation.
#[derive(Debug)]
pub struct ResNet {
    stem: ConvNorm,
    blocks: Vec<Block>,
    fc: Linear,
    cfg: ResNetConfig,
}

impl ResNet {
    /// Creates the parameters under `p` with PyTorch's default initialisation.
    pub fn new(p: &nn::Path, cfg: ResNetConfig) -> Result<Self> {
        ensure!(
            cfg.in_channels > 0 && cfg.num_classes > 0 && cfg.blocks_per_stage > 0,
            "ResNet needs positive channels, classes and blocks: {cfg:?}"
        );
        ensure!(
            cfg.groups > 0 && cfg.widths.iter().all(|w| *w > 0 && w % cfg.groups == 0),
            "ResNet GroupNorm groups {} must divide every width {:?}",
            cfg.groups,
            cfg.widths
        );
        let stem = ConvNorm::new(
            &(p / "stem"),
            ["conv", "gn"],
            (cfg.in_channels, cfg.widths[0]),
            3,
            1,
            cfg.groups,
        );
        let mut blocks = Vec::new();
        let mut c_in = cfg.widths[0];
        for (s, &w) in cfg.widths.iter().enumerate() {
            let stage = p / format!("stage{}", s + 1);
            for b in 0..cfg.blocks_per_stage {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(&(&stage / b), c_in, w, stride, cfg.groups));
                c_in = w;
            }
        }
        Ok(Self {
            stem,
            blocks,
            fc: Linear::new(p / "fc", c_in, cfg.num_classes, true),
            cfg,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }
}

impl ImageClassifier for ResNet {
    fn forward(&self, x: &Tensor) -> Tensor {
        ResNet::forward(self, x)
    }
    fn features(&self, x: &Tensor) -> Tensor {
        ResNet::features(self, x)
    }
}

impl ResNet {
    /// Logits `[N, classes]` for images `[N, C, H, W]` (any size of at least 4 × 4).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc.forward(&self.features(x))
    }

    /// The pooled features `[N, channels]` that the last layer maps to logits.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let mut h = self.stem.forward(x).relu();
        for b in &self.blocks {
            h = b.forward(&h);
        }
        h.mean_dim(&[2i64, 3][..], false, None::<Kind>)
    }
}
