//! MNIST-style IDX files (raw or gzip-compressed): u8 images of rank 3 and u8 labels of rank 1.

use std::io::Read;
use std::path::Path;

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// IDX magic for unsigned-byte data of rank 3 (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic for unsigned-byte data of rank 1 (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, transparently un-gzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the header of an IDX buffer and returns its dimensions and payload.
fn parse(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated IDX file: {} bytes, not even a header",
                bytes.len()
            ),
        ));
    }
    let found = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if found != magic {
        return Err(DataError::format(
            path,
            format!("wrong magic number 0x{found:08x}: expected 0x{magic:08x} for IDX {what}"),
        ));
    }
    let rank = (magic & 0xff) as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated IDX file: {} bytes, the header alone needs {header}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = dims.iter().product::<usize>();
    let payload = &bytes[header..];
    if payload.len() != expected {
        let dims_s: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(DataError::format(
            path,
            format!(
                "{} IDX file: header says {} = {expected} bytes of data, found {}",
                if payload.len() < expected {
                    "truncated"
                } else {
                    "oversized"
                },
                dims_s.join("x"),
                payload.len()
            ),
        ));
    }
    Ok((dims, payload.to_vec()))
}

/// Reads an IDX image file and its label file into a dataset with classes named "0".."9".
pub fn read_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
    read_idx_pair_named(
        images_path,
        labels_path,
        (0..10).map(|d| d.to_string()).collect(),
    )
}

/// Reads an IDX image file and its label file into a dataset with the given class names.
pub fn read_idx_pair_named(
    images_path: &Path,
    labels_path: &Path,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let (dims, images) = parse(
        images_path,
        &read_maybe_gz(images_path)?,
        IMAGES_MAGIC,
        "images (u8, rank 3)",
    )?;
    let (ldims, labels) = parse(
        labels_path,
        &read_maybe_gz(labels_path)?,
        LABELS_MAGIC,
        "labels (u8, rank 1)",
    )?;
    if dims[0] != ldims[0] {
        return Err(DataError::format(
            labels_path,
            format!(
                "{} labels but {} has {} images",
                ldims[0],
                images_path.display(),
                dims[0]
            ),
        ));
    }
    Dataset::new(
        labels_path,
        images,
        labels,
        [1, dims[1], dims[2]],
        class_names,
    )
}

/// Encodes images (rank 3) as an IDX buffer; used to write test fixtures and exports.
pub fn encode_images(n: usize, h: usize, w: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [n, h, w] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels (rank 1) as an IDX buffer.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = LABELS_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}
