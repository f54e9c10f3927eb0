//! Tiny ImageNet at 32×32 (public pretraining data for colour models): reading its splits
//! (`acquire::tiny_imagenet` fetches it).
//!
//! Layout under `DATA/tiny-imagenet/`, as in the archive's `tinyimagenet32/` folder:
//! `train/<wnid>/*.jpg` (500 per class), `val/<wnid>/*.jpg` (50 per class),
//! `unlabeled/*.jpg` (10,000 without labels), `classes.tsv` (wnid TAB WordNet names, sorted by
//! wnid), `README.md`. A class is named by the first of its WordNet names.
//!
//! Licence: the images are ImageNet's and carry its terms (non-commercial research and education
//! only); [`LICENCE`] says so wherever the data or a model trained on it is described.

use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::error::{DataError, Result};
use super::{class_map, imagefolder};

/// The dataset's name in specs (`tiny-imagenet:train`) and in `data fetch`.
pub const NAME: &str = "tiny-imagenet";

/// The spec name of a proxy test set (`tiny-imagenet-proxy:MAP`, see [`load_proxy`]).
pub const PROXY_NAME: &str = "tiny-imagenet-proxy";

/// The spec name of a proxy training set (`tiny-imagenet-proxy-train:MAP`, see [`load_proxy`]).
pub const PROXY_TRAIN_NAME: &str = "tiny-imagenet-proxy-train";

/// The spec name of the proxy drawn from `split` (`val`: [`PROXY_NAME`], `train`:
/// [`PROXY_TRAIN_NAME`]).
pub fn proxy_name(split: ProxySplit) -> &'static str {
    match split {
        ProxySplit::Val => PROXY_NAME,
        ProxySplit::Train => PROXY_TRAIN_NAME,
    }
}

/// The class table inside the dataset folder.
pub(crate) const CLASSES_FILE: &str = "classes.tsv";

/// The licence, in one line, for `data info`, READMEs and model cards.
pub const LICENCE: &str = "Tiny ImageNet images are ImageNet's: ImageNet terms of access, \
     non-commercial research and educational use only";

/// Class name of every image of the unlabelled split.
pub const UNLABELED_CLASS: &str = "unlabeled";

/// The splits of Tiny ImageNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinySplit {
    /// 100,000 labelled training images.
    Train,
    /// 10,000 labelled validation images.
    Val,
    /// 10,000 images without labels (the official test set), read as one class.
    Unlabeled,
}

impl TinySplit {
    /// The split's name in specs and its folder name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Unlabeled => "unlabeled",
        }
    }

    /// Parses `train`, `val` or `unlabeled`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "train" => Some(Self::Train),
            "val" => Some(Self::Val),
            "unlabeled" => Some(Self::Unlabeled),
            _ => None,
        }
    }
}

/// The labelled splits, from which a proxy ([`load_proxy`]) draws its images; the unlabelled
/// split has no classes to relate to private ones, so a proxy cannot name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySplit {
    /// Training images: a stand-in for a private training set ([`PROXY_TRAIN_NAME`]).
    Train,
    /// Validation images: a stand-in for a private test set ([`PROXY_NAME`]).
    Val,
}

impl ProxySplit {
    /// The Tiny ImageNet split the proxy reads.
    pub fn split(self) -> TinySplit {
        match self {
            Self::Train => TinySplit::Train,
            Self::Val => TinySplit::Val,
        }
    }
}

/// One class: its WordNet id and its name (the first WordNet name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyClass {
    /// WordNet id, e.g. `n02123045`; also the class folder's name.
    pub wnid: String,
    /// The first WordNet name, e.g. `tabby`.
    pub name: String,
}

/// Reads `classes.tsv` (wnid TAB comma-separated WordNet names), in file order. Names must be
/// unique, since they name classes in class-init tables and sample folders.
pub fn read_classes(path: &Path) -> Result<Vec<TinyClass>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut out: Vec<TinyClass> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| DataError::format(path, format!("line {}: {what}", i + 1));
        let (wnid, names) = line
            .split_once('\t')
            .ok_or_else(|| bad("expected wnid<TAB>names"))?;
        let name = names.split(',').next().unwrap_or("").trim();
        if wnid.trim().is_empty() || name.is_empty() {
            return Err(bad("empty wnid or name"));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(bad(&format!("class name '{name}' appears twice")));
        }
        out.push(TinyClass {
            wnid: wnid.trim().to_string(),
            name: name.to_string(),
        });
    }
    if out.is_empty() {
        return Err(DataError::format(path, "no classes"));
    }
    if out.len() > 255 {
        return Err(DataError::format(
            path,
            format!("{} classes: at most 255 are supported", out.len()),
        ));
    }
    Ok(out)
}

/// The classes of the fetched dataset under `data_dir`.
pub fn classes(data_dir: &Path) -> Result<Vec<TinyClass>> {
    read_classes(&dataset_dir(data_dir)?.join(CLASSES_FILE))
}

fn dataset_dir(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.join(NAME);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(super::catalog::not_found(&dir, NAME))
    }
}

/// Reads one split of the fetched dataset. Labels follow `classes.tsv`; the unlabelled split has
/// the one class [`UNLABELED_CLASS`].
pub fn load(data_dir: &Path, split: TinySplit) -> Result<Dataset> {
    let dir = dataset_dir(data_dir)?;
    let root = dir.join(split.as_str());
    if split == TinySplit::Unlabeled {
        let files: Vec<(u8, PathBuf)> = imagefolder::image_files(&root)?
            .into_iter()
            .map(|f| (0, f))
            .collect();
        return imagefolder::decode_files(&root, &files, vec![UNLABELED_CLASS.to_string()]);
    }
    let classes = read_classes(&dir.join(CLASSES_FILE))?;
    let folders = imagefolder::class_folders(&root)?;
    let names: Vec<&str> = folders.iter().map(|(n, _)| n.as_str()).collect();
    let wnids: Vec<&str> = classes.iter().map(|c| c.wnid.as_str()).collect();
    if names != wnids {
        let missing = wnids.iter().find(|w| !names.contains(w));
        let extra = names.iter().find(|n| !wnids.contains(n));
        return Err(DataError::format(
            &root,
            match (missing, extra) {
                (Some(w), _) => format!("no folder for class {w} of {CLASSES_FILE}"),
                (None, Some(n)) => format!("folder {n} is not a class of {CLASSES_FILE}"),
                (None, None) => format!("class folders are not in the order of {CLASSES_FILE}"),
            },
        ));
    }
    let files: Vec<(u8, PathBuf)> = folders
        .into_iter()
        .enumerate()
        .flat_map(|(label, (_, files))| files.into_iter().map(move |f| (label as u8, f)))
        .collect();
    imagefolder::decode_files(&root, &files, classes.into_iter().map(|c| c.name).collect())
}

/// A public stand-in for a private dataset: the images of `split` (`val` for a test set,
/// `train` for a training set) of the Tiny ImageNet classes that the class map at `map_path`
/// relates to private classes, each labelled with its private class. Its classes are the map's
/// keys in name order, including those with no public counterpart (they have no images here),
/// so labels line up with an ImageFolder of the private classes. Settings chosen on it read no
/// private image. A base pretrained on Tiny ImageNet has seen the `train` images (under their
/// own labels), so a proxy fine-tuning run on them flatters the base: it ranks settings, it
/// does not predict private accuracy.
///
/// The unlabelled split is refused by its type:
///
/// ```no_run
/// # use dpsynth::data::tiny_imagenet::{load_proxy, ProxySplit};
/// # let (data, map) = (std::path::Path::new("data"), std::path::Path::new("map.toml"));
/// let _ = load_proxy(data, map, ProxySplit::Val);
/// ```
///
/// ```compile_fail,E0308
/// # use dpsynth::data::tiny_imagenet::{load_proxy, TinySplit};
/// # let (data, map) = (std::path::Path::new("data"), std::path::Path::new("map.toml"));
/// let _ = load_proxy(data, map, TinySplit::Unlabeled);
/// ```
pub fn load_proxy(data_dir: &Path, map_path: &Path, split: ProxySplit) -> Result<Dataset> {
    let map = class_map::load(map_path)?;
    let classes = classes(data_dir)?;
    let mut label_of = std::collections::HashMap::new();
    for (label, (private, public)) in map.iter().enumerate() {
        for p in public {
            let wnid = classes
                .iter()
                .find(|c| &c.name == p)
                .map(|c| c.wnid.clone())
                .ok_or_else(|| {
                    DataError::format(
                        map_path,
                        format!("'{p}' (for '{private}') is not a Tiny ImageNet class"),
                    )
                })?;
            if label_of.insert(wnid, label as u8).is_some() {
                return Err(DataError::format(
                    map_path,
                    format!("'{p}' is listed for two private classes"),
                ));
            }
        }
    }
    let root = dataset_dir(data_dir)?.join(split.split().as_str());
    let files: Vec<(u8, PathBuf)> = imagefolder::class_folders(&root)?
        .into_iter()
        .filter_map(|(wnid, files)| label_of.get(&wnid).map(|&l| (l, files)))
        .flat_map(|(l, files)| files.into_iter().map(move |f| (l, f)))
        .collect();
    imagefolder::decode_files(&root, &files, map.into_keys().collect())
}
