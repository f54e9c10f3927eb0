//! Which classifier network a job trains: the CNN for grayscale digits, the ResNet for colour
//! images, chosen from the data's shape unless asked for by name.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn;

use super::classifier::{ClassifierConfig, ImageClassifier};
use super::resnet::{ResNet, ResNetConfig};

/// The architecture asked for (`--arch`, or `arch` in a run config's `[evaluate]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// From the data: 3-channel images get the ResNet, others the CNN.
    #[default]
    Auto,
    /// The GroupNorm + tanh CNN of [`super::classifier`] (MNIST-sized).
    Cnn,
    /// The GroupNorm ResNet-8 of [`super::resnet`] (CIFAR-sized).
    Resnet,
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "cnn" => Self::Cnn,
            "resnet" => Self::Resnet,
            other => bail!("unknown architecture '{other}': expected auto, cnn or resnet"),
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cnn => "cnn",
            Self::Resnet => "resnet",
        })
    }
}

/// A fully specified classifier network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetSpec {
    /// The CNN.
    Cnn(ClassifierConfig),
    /// The ResNet.
    Resnet(ResNetConfig),
}

impl From<ClassifierConfig> for NetSpec {
    fn from(c: ClassifierConfig) -> Self {
        Self::Cnn(c)
    }
}

impl From<ResNetConfig> for NetSpec {
    fn from(c: ResNetConfig) -> Self {
        Self::Resnet(c)
    }
}

impl NetSpec {
    /// The network `arch` names for `channels × height × width` images of `classes` classes
    /// (`Auto`: the ResNet for 3 channels, the CNN otherwise).
    pub fn for_data(
        arch: Arch,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Self> {
        let resolved = match arch {
            Arch::Auto if channels == 3 => Arch::Resnet,
            Arch::Auto => Arch::Cnn,
            a => a,
        };
        Ok(match resolved {
            Arch::Resnet => Self::Resnet(ResNetConfig {
                in_channels: channels as i64,
                num_classes: classes as i64,
                ..ResNetConfig::cifar10()
            }),
            _ => {
                if height != width {
                    bail!("the CNN takes square images, these are {height}x{width}: use the resnet architecture");
                }
                Self::Cnn(ClassifierConfig {
                    in_channels: channels as i64,
                    image_size: height as i64,
                    num_classes: classes as i64,
                    ..ClassifierConfig::mnist()
                })
            }
        })
    }

    /// The architecture's name (`cnn` or `resnet`).
    pub fn arch(&self) -> Arch {
        match self {
            Self::Cnn(_) => Arch::Cnn,
            Self::Resnet(_) => Arch::Resnet,
        }
    }

    /// Creates the network's parameters under `p`.
    pub fn build(&self, p: &nn::Path) -> Result<Box<dyn ImageClassifier>> {
        Ok(match *self {
            Self::Cnn(c) => Box::new(super::classifier::Classifier::new(p, c)?),
            Self::Resnet(c) => Box::new(ResNet::new(p, c)?),
        })
    }
}
