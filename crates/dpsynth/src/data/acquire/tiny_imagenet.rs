//! `dpsynth data fetch tiny-imagenet`: the team's shared archive or a local copy, checked whole
//! before it is renamed into place.

use std::path::Path;

use super::{fetch_shared_archive, Outcome, SharedArchive};
use crate::data::error::Result;
use crate::data::imagefolder;
use crate::data::tiny_imagenet::{read_classes, CLASSES_FILE, NAME};

/// File name of the team's shared archive.
pub const ARCHIVE: &str = "tinyimagenet32-jpeg.tar.gz";

/// sha256 of the team's shared archive.
pub const ARCHIVE_SHA256: &str = "f195047f1fb2d7c948409b76186f921d7248a0d9aa3cd2e9a6cd896516107532";

/// The folder inside the archive that holds the dataset.
const ARCHIVE_ROOT: &str = "tinyimagenet32";

/// Checks that a dataset folder is whole: a class table, one train and one val folder of images
/// per class, and an unlabelled folder of images. Returns the image counts (train, val,
/// unlabelled).
fn verify_tree(dir: &Path) -> Result<(usize, usize, usize)> {
    let classes = read_classes(&dir.join(CLASSES_FILE))?;
    let mut counts = [0usize; 2];
    for (split, count) in ["train", "val"].iter().zip(counts.iter_mut()) {
        for c in &classes {
            let folder = dir.join(split).join(&c.wnid);
            *count += imagefolder::image_files(&folder)?.len();
        }
    }
    let unlabeled = imagefolder::image_files(&dir.join("unlabeled"))?.len();
    Ok((counts[0], counts[1], unlabeled))
}

/// Fetches Tiny ImageNet into `data_dir/tiny-imagenet` from `source` (the archive or its
/// extracted `tinyimagenet32/` folder), else from the team's shared archive. The shared archive
/// is checked against its sha256 before anything is unpacked; every copy is checked to hold a
/// class table and a train, val and unlabelled folder for it before it is renamed into place.
pub fn fetch(data_dir: &Path, source: Option<&Path>) -> Result<Outcome> {
    let archive = SharedArchive {
        name: NAME,
        file: ARCHIVE,
        sha256: ARCHIVE_SHA256,
        root: ARCHIVE_ROOT,
    };
    fetch_shared_archive(&archive, data_dir, source, |dir| {
        verify_tree(dir).map(|_| ())
    })
}
