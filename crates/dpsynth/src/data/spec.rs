//! Dataset specs such as `mnist:train`, `cifar10:test` or `imagefolder:PATH`, accepted wherever a
//! dataset is asked for, and their resolution against the data folder.

use std::fmt;
use std::path::{Path, PathBuf};

use super::acquire::{dead_leaves, font_digits, generated, photo_crops};
use super::catalog;
use super::dataset::Dataset;
use super::error::{DataError, Result};
use super::tiny_imagenet::{self, ProxySplit, TinySplit};
use super::{cifar, idx, imagefolder, optdigits, quickdraw};

/// Train or test split of a named dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

/// A parsed dataset spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    /// MNIST digits, from `DATA/mnist/`.
    Mnist(Split),
    /// Fashion-MNIST, from `DATA/fashion-mnist/`.
    FashionMnist(Split),
    /// Digits rendered from free fonts (public pretraining data), from `DATA/<name>/`: one of
    /// the [`font_digits::DIGIT_SETS`], named here.
    Digits(&'static str, Split),
    /// CIFAR-10, from `DATA/cifar10/` (official binary batches or an ImageFolder copy).
    Cifar10(Split),
    /// Procedural dead-leaves images (public 32×32 colour pretraining data), from
    /// `DATA/dead-leaves/`.
    DeadLeaves(Split),
    /// Random crops of public photographs (32×32 colour pretraining data), from
    /// `DATA/photo-crops/`.
    PhotoCrops(Split),
    /// Tiny ImageNet at 32×32 (200 ImageNet classes, public pretraining data), from
    /// `DATA/tiny-imagenet/`.
    TinyImageNet(TinySplit),
    /// UCI optical digits (1,797 real handwritten digits, normalised to 28×28 like MNIST), the
    /// public stand-in for MNIST, from `DATA/optdigits/`.
    OptDigits,
    /// Quick, Draw! doodles of 6 categories (public stroke data), from `DATA/quickdraw6/`.
    QuickDraw,
    /// Tiny ImageNet images of the classes a class map file relates to private classes,
    /// relabelled by it: `val` images stand in for a private test set, `train` images for a
    /// private training set ([`tiny_imagenet::load_proxy`]).
    TinyImageNetProxy(ProxySplit, PathBuf),
    /// Any ImageFolder tree.
    ImageFolder(PathBuf),
}

impl std::str::FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').ok_or_else(|| {
            DataError::spec(
                s,
                format!("expected NAME:ARG, one of {}", catalog::spec_help()),
            )
        })?;
        let split = || match arg {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(DataError::spec(
                s,
                format!("unknown split '{other}': expected 'train' or 'test'"),
            )),
        };
        match name {
            "mnist" => Ok(Self::Mnist(split()?)),
            "fashion-mnist" => Ok(Self::FashionMnist(split()?)),
            name if font_digits::DIGIT_SETS.iter().any(|d| d.name == name) => {
                let set = font_digits::DIGIT_SETS.iter().find(|d| d.name == name);
                Ok(Self::Digits(set.expect("just found").name, split()?))
            }
            "cifar10" => Ok(Self::Cifar10(split()?)),
            dead_leaves::NAME => Ok(Self::DeadLeaves(split()?)),
            photo_crops::NAME => Ok(Self::PhotoCrops(split()?)),
            tiny_imagenet::NAME => TinySplit::parse(arg)
                .map(Self::TinyImageNet)
                .ok_or_else(|| {
                    DataError::spec(
                        s,
                        format!("unknown split '{arg}': expected 'train', 'val' or 'unlabeled'"),
                    )
                }),
            optdigits::NAME if arg == "all" => Ok(Self::OptDigits),
            quickdraw::NAME if arg == "all" => Ok(Self::QuickDraw),
            optdigits::NAME | quickdraw::NAME => Err(DataError::spec(
                s,
                format!("unknown split '{arg}': {name} has one split, 'all'"),
            )),
            tiny_imagenet::PROXY_NAME if !arg.is_empty() => {
                Ok(Self::TinyImageNetProxy(ProxySplit::Val, PathBuf::from(arg)))
            }
            tiny_imagenet::PROXY_TRAIN_NAME if !arg.is_empty() => Ok(Self::TinyImageNetProxy(
                ProxySplit::Train,
                PathBuf::from(arg),
            )),
            "imagefolder" if !arg.is_empty() => Ok(Self::ImageFolder(PathBuf::from(arg))),
            "imagefolder" | tiny_imagenet::PROXY_NAME | tiny_imagenet::PROXY_TRAIN_NAME => Err(
                DataError::spec(s, format!("{name} needs a path: {name}:PATH")),
            ),
            other => Err(DataError::spec(
                s,
                format!(
                    "unknown dataset '{other}': expected one of {}",
                    catalog::spec_help()
                ),
            )),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split = |s: &Split| match s {
            Split::Train => "train",
            Split::Test => "test",
        };
        match self {
            Self::Mnist(s) => write!(f, "mnist:{}", split(s)),
            Self::FashionMnist(s) => write!(f, "fashion-mnist:{}", split(s)),
            Self::Digits(name, s) => write!(f, "{name}:{}", split(s)),
            Self::Cifar10(s) => write!(f, "cifar10:{}", split(s)),
            Self::DeadLeaves(s) => write!(f, "{}:{}", dead_leaves::NAME, split(s)),
            Self::PhotoCrops(s) => write!(f, "{}:{}", photo_crops::NAME, split(s)),
            Self::TinyImageNet(s) => write!(f, "{}:{}", tiny_imagenet::NAME, s.as_str()),
            Self::OptDigits => write!(f, "{}:all", optdigits::NAME),
            Self::QuickDraw => write!(f, "{}:all", quickdraw::NAME),
            Self::TinyImageNetProxy(split, p) => {
                write!(f, "{}:{}", tiny_imagenet::proxy_name(*split), p.display())
            }
            Self::ImageFolder(p) => write!(f, "imagefolder:{}", p.display()),
        }
    }
}

/// The Fashion-MNIST class names in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

fn require(path: PathBuf, name: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(catalog::not_found(&path, name))
    }
}

fn idx_files(dir: &Path, split: Split, fetch_name: &str) -> Result<(PathBuf, PathBuf)> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    Ok((
        require(dir.join(format!("{prefix}-images-idx3-ubyte")), fetch_name)?,
        require(dir.join(format!("{prefix}-labels-idx1-ubyte")), fetch_name)?,
    ))
}

impl DatasetSpec {
    /// The terms of use to state wherever the dataset or a model trained on it is described,
    /// for the public sets whose terms are not those of the datasets everybody knows.
    pub fn licence(&self) -> Option<&'static str> {
        let name = self.to_string();
        let name = name.split(':').next().unwrap_or_default();
        catalog::entry(name).and_then(|e| e.licence)
    }

    /// Loads the dataset, resolving named datasets under `data_dir`.
    pub fn load(&self, data_dir: &Path) -> Result<Dataset> {
        match self {
            Self::Mnist(split) => {
                let (i, l) = idx_files(&data_dir.join("mnist"), *split, "mnist")?;
                idx::read_idx_pair(&i, &l)
            }
            Self::FashionMnist(split) => {
                let (i, l) = idx_files(&data_dir.join("fashion-mnist"), *split, "fashion-mnist")?;
                idx::read_idx_pair_named(
                    &i,
                    &l,
                    FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
                )
            }
            Self::Digits(name, split) => {
                let (i, l) = idx_files(&data_dir.join(name), *split, name)?;
                idx::read_idx_pair(&i, &l)
            }
            Self::Cifar10(split) => {
                let dir = require(data_dir.join("cifar10"), "cifar10")?;
                let bin = dir.join("cifar-10-batches-bin");
                if bin.is_dir() {
                    cifar::read_batches(&cifar::split_files(&bin, *split == Split::Train))
                } else {
                    let sub = match split {
                        Split::Train => "train",
                        Split::Test => "test",
                    };
                    imagefolder::read(&require(dir.join(sub), "cifar10")?)
                }
            }
            Self::DeadLeaves(split) | Self::PhotoCrops(split) => {
                let name = match self {
                    Self::DeadLeaves(_) => dead_leaves::NAME,
                    _ => photo_crops::NAME,
                };
                let dir = data_dir.join(name);
                require(generated::split_file(&dir, *split), name)?;
                generated::read_split(&dir, *split)
            }
            Self::TinyImageNet(split) => tiny_imagenet::load(data_dir, *split),
            Self::TinyImageNetProxy(split, map) => tiny_imagenet::load_proxy(data_dir, map, *split),
            Self::OptDigits => optdigits::load(data_dir),
            Self::QuickDraw => quickdraw::load(data_dir),
            Self::ImageFolder(root) => imagefolder::read(root),
        }
    }
}

/// Parses `spec` and loads it from `data_dir` in one call; a trailing `@N` takes a
/// class-balanced subset of N images ([`super::subset`]).
pub fn load(spec: &str, data_dir: &Path) -> Result<Dataset> {
    let (base, size) = super::subset::split_suffix(spec)?;
    let ds = base.parse::<DatasetSpec>()?.load(data_dir)?;
    match size {
        Some(n) => super::subset::balanced(&ds, n, spec),
        None => Ok(ds),
    }
}
