//! The official CIFAR-10 binary batches: records of 1 label byte plus 3×32×32 pixel bytes.
//!
//! The same record format stores the generated public 32×32 colour sets (`dead-leaves`,
//! `photo-crops`), with their own class names.

use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// Bytes in one CIFAR-10 record.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// The CIFAR-10 class names in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Reads CIFAR-10 binary batch files in order and concatenates them.
pub fn read_batches(files: &[PathBuf]) -> Result<Dataset> {
    read_records(files, CLASSES.iter().map(|s| s.to_string()).collect())
}

/// Reads files of CIFAR-10-format records in order and concatenates them; every label must name
/// one of `class_names`.
pub fn read_records(files: &[PathBuf], class_names: Vec<String>) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::format(
                path,
                format!(
                    "size {} is not a positive multiple of the CIFAR-10 record size {RECORD}",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] as usize >= class_names.len() {
                return Err(DataError::format(
                    path,
                    format!(
                        "label {} of record {i} is out of range 0..={}",
                        rec[0],
                        class_names.len().saturating_sub(1)
                    ),
                ));
            }
            labels.push(rec[0]);
            images.extend_from_slice(&rec[1..]);
        }
    }
    let source = files
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("."));
    Dataset::new(source, images, labels, [3, 32, 32], class_names)
}

/// Encodes a 3×32×32 dataset as CIFAR-10 records (label byte, then the channel-major pixels).
///
/// # Panics
/// If the images are not 3×32×32: callers build them at that shape.
pub fn encode_records(ds: &Dataset) -> Vec<u8> {
    assert_eq!(
        [ds.channels, ds.height, ds.width],
        [3, 32, 32],
        "CIFAR records hold 3x32x32 images"
    );
    let mut out = Vec::with_capacity(ds.labels.len() * RECORD);
    for (label, img) in ds.labels.iter().zip(ds.images.chunks_exact(RECORD - 1)) {
        out.push(*label);
        out.extend_from_slice(img);
    }
    out
}

/// The batch files of a split inside an extracted `cifar-10-batches-bin` folder.
pub fn split_files(dir: &Path, train: bool) -> Vec<PathBuf> {
    if train {
        (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect()
    } else {
        vec![dir.join("test_batch.bin")]
    }
}
