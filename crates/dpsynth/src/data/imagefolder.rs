//! ImageFolder trees: `root/<class>/*.png|jpg`, classes sorted by name; reading and writing.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GenericImageView};

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// File extensions read as images (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Lists the class folders and their image files, checking that every class has images and that
/// no class folder holds anything else (hidden files such as `.DS_Store` are skipped).
fn list(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    if !root.is_dir() {
        return Err(DataError::format(
            root,
            if root.exists() {
                "not a folder: an ImageFolder spec needs a folder of class folders"
            } else {
                "no such folder"
            },
        ));
    }
    let mut classes = Vec::new();
    for dir in sorted_entries(root)? {
        if !dir.is_dir() || is_hidden(&dir) {
            continue;
        }
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DataError::format(&dir, "class folder name is not valid UTF-8"))?
            .to_string();
        let files = image_files(&dir).map_err(|e| match e {
            DataError::Format { path, .. } if path == dir => {
                DataError::format(&dir, "empty class folder: no image files")
            }
            DataError::Format { path, .. } => DataError::format(
                &path,
                "not an image file: class folders may hold only .png, .jpg or .jpeg files",
            ),
            other => other,
        })?;
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(DataError::format(
            root,
            "no class folders: expected root/<class>/*.png|jpg",
        ));
    }
    Ok(classes)
}

fn decode(path: &Path) -> Result<DynamicImage> {
    image::open(path).map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))
}

/// Reads an ImageFolder tree. Images are grayscale (1 channel) when every image is grayscale,
/// else RGB (3 channels); all must have the same size.
pub fn read(root: &Path) -> Result<Dataset> {
    let classes = list(root)?;
    let files: Vec<(u8, PathBuf)> = classes
        .iter()
        .enumerate()
        .flat_map(|(label, (_, files))| files.iter().map(move |f| (label as u8, f.clone())))
        .collect();
    if classes.len() > 256 {
        return Err(DataError::format(
            root,
            format!("{} classes: at most 256 are supported", classes.len()),
        ));
    }
    decode_files(root, &files, classes.into_iter().map(|(n, _)| n).collect())
}

/// The class folders of an ImageFolder tree, sorted by name, each with its sorted image files.
pub fn class_folders(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    list(root)
}

/// The image files (.png, .jpg, .jpeg) directly in `dir`, sorted by name; anything else there
/// (besides hidden files) is an error.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for f in sorted_entries(dir)? {
        if is_hidden(&f) {
            continue;
        }
        let ext = f
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext {
            Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) && f.is_file() => files.push(f),
            _ => {
                return Err(DataError::format(
                    &f,
                    "not an image file: expected only .png, .jpg or .jpeg files",
                ))
            }
        }
    }
    if files.is_empty() {
        return Err(DataError::format(dir, "no image files"));
    }
    Ok(files)
}

/// Decodes labelled image files (in parallel) into one dataset. Images are grayscale when every
/// image is, else RGB; all must have the same size. `source` names the tree in errors.
pub fn decode_files(
    source: &Path,
    files: &[(u8, PathBuf)],
    class_names: Vec<String>,
) -> Result<Dataset> {
    if files.is_empty() {
        return Err(DataError::format(source, "no image files"));
    }
    // decode in parallel: JPEG decoding dominates for tens of thousands of small files
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    let decoded: Vec<DynamicImage> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(_, f)| decode(f)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoder thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let (w, h) = decoded[0].dimensions();
    for (img, (_, f)) in decoded.iter().zip(files) {
        if img.dimensions() != (w, h) {
            let (iw, ih) = img.dimensions();
            return Err(DataError::format(
                f,
                format!(
                    "image is {iw}x{ih} but {} is {w}x{h}: all images must have one size",
                    files[0].1.display()
                ),
            ));
        }
    }
    let colour = decoded.iter().any(|i| i.color().has_color());
    let channels = if colour { 3 } else { 1 };
    let plane = (w * h) as usize;
    let mut images = Vec::with_capacity(decoded.len() * plane * channels);
    for img in &decoded {
        if colour {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                images.extend(rgb.pixels().map(|p| p.0[c]));
            }
        } else {
            images.extend_from_slice(img.to_luma8().as_raw());
        }
    }
    let labels = files.iter().map(|(l, _)| *l).collect();
    Dataset::new(
        source,
        images,
        labels,
        [channels, h as usize, w as usize],
        class_names,
    )
}

/// Converts image `i` of a dataset to an `image` crate buffer (grey or RGB).
pub fn to_image(ds: &Dataset, i: usize) -> DynamicImage {
    let (w, h) = (ds.width as u32, ds.height as u32);
    let px = ds.image(i);
    if ds.channels == 1 {
        DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w, h, px.to_vec()).expect("buffer matches dimensions"),
        )
    } else {
        let plane = ds.height * ds.width;
        let mut rgb = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for c in 0..3 {
                rgb.push(px[c * plane + p]);
            }
        }
        DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(w, h, rgb).expect("buffer matches dimensions"),
        )
    }
}

/// Writes a dataset as an ImageFolder tree of PNGs under `root` (`root/<class>/NNNNN.png`).
///
/// The tree is written to a sibling temp folder and renamed into place, so an interrupted write
/// never leaves a tree that looks complete. An existing `root` is an error, never overwritten.
pub fn write(ds: &Dataset, root: &Path) -> Result<()> {
    if root.exists() {
        return Err(DataError::format(
            root,
            "already exists: refusing to overwrite; choose another output folder",
        ));
    }
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".imagefolder-")
        .tempdir_in(parent)
        .map_err(|e| DataError::io(parent, e))?;
    for name in &ds.class_names {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
    }
    for i in 0..ds.len() {
        let f = tmp
            .path()
            .join(&ds.class_names[ds.labels[i] as usize])
            .join(format!("{i:05}.png"));
        to_image(ds, i)
            .save(&f)
            .map_err(|e| DataError::format(&f, format!("cannot write PNG: {e}")))?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, root).map_err(|e| DataError::io(root, e))
}
