//! Quick, Draw! doodles (Google, CC BY 4.0): 18,000 drawings of 6 categories (apple, bicycle,
//! cat, diamond, eye, fish), 28×28 grayscale, white strokes on black like MNIST, kept as IDX
//! files in the team's shared `quickdraw6-idx.tar.gz`. Public stroke data for 28×28 models
//! (pretrain them with `labels = "null"`: their classes are not digits); no MNIST image is in it.

use std::path::Path;

use super::dataset::Dataset;
use super::error::{DataError, Result};
use super::idx;

/// The dataset's name in specs (`quickdraw6:all`) and in `data fetch`.
pub const NAME: &str = "quickdraw6";

/// The licence, for `data info` and docs.
pub const LICENCE: &str = "Quick, Draw! dataset by Google, CC BY 4.0";

const IMAGES: &str = "images-idx3-ubyte";
const LABELS: &str = "labels-idx1-ubyte";
const CLASSES: &str = "classes.txt";

/// Reads the dataset folder `dir`.
pub(crate) fn read(dir: &Path) -> Result<Dataset> {
    let classes_path = dir.join(CLASSES);
    let names: Vec<String> = std::fs::read_to_string(&classes_path)
        .map_err(|e| DataError::io(&classes_path, e))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(DataError::format(&classes_path, "no class names"));
    }
    idx::read_idx_pair_named(&dir.join(IMAGES), &dir.join(LABELS), names)
}

/// Reads `quickdraw6:all` from `data_dir`.
pub fn load(data_dir: &Path) -> Result<Dataset> {
    let dir = data_dir.join(NAME);
    if !dir.is_dir() {
        return Err(super::catalog::not_found(&dir, NAME));
    }
    read(&dir)
}
