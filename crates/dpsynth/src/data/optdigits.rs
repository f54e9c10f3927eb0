//! UCI optical digits (Alpaydin and Kaynak, 1998): 1,797 handwritten digits by 43 writers
//! unrelated to MNIST, the public stand-in for real handwriting on which MNIST settings are
//! chosen. They ship inside the scikit-learn wheel (`sklearn/datasets/data/digits.csv.gz`,
//! BSD-3-Clause) as 8×8 blocks of counts 0-16 (each the ink of a 4×4 block of a 32×32 bitmap),
//! one image per line followed by its label.
//!
//! `data fetch optdigits` keeps the CSV, checked against its sha256, in `DATA/optdigits/`;
//! `optdigits:all` reads it and normalises each digit as MNIST was: the ink scaled so that its
//! longer side fills a 20-pixel box, centred by centre of mass in a 28×28 frame, strokes
//! stretched to full intensity.

use std::path::Path;

use super::acquire::font_digits::{place, Canvas, IDENTITY};
use super::dataset::Dataset;
use super::error::{DataError, Result};

/// The dataset's name in specs (`optdigits:all`) and in `data fetch`.
pub const NAME: &str = "optdigits";

/// The CSV in `DATA/optdigits/`.
pub(crate) const CSV: &str = "digits.csv";

/// sha256 of the uncompressed CSV (the same bytes in scikit-learn 0.x to 1.9).
pub const CSV_SHA256: &str = "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8";

/// Side of the box the ink's longer side fills, as in MNIST.
const BOX_PX: f32 = 20.0;

/// The licence, for `data info` and docs.
pub const LICENCE: &str = "UCI optical recognition of handwritten digits, as shipped in \
     scikit-learn (BSD-3-Clause); cite Alpaydin and Kaynak (1998)";

/// Parses the CSV: 64 counts 0-16 and a label 0-9 per line.
pub fn parse(path: &Path, text: &str) -> Result<(Vec<[u8; 64]>, Vec<u8>)> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: String| DataError::format(path, format!("line {}: {what}", i + 1));
        let values = line
            .split(',')
            .map(|v| v.trim().parse::<u8>())
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|e| bad(format!("not a list of small integers: {e}")))?;
        if values.len() != 65 {
            return Err(bad(format!(
                "{} values, expected 64 and a label",
                values.len()
            )));
        }
        if let Some(v) = values[..64].iter().find(|&&v| v > 16) {
            return Err(bad(format!("count {v} is above 16")));
        }
        if values[64] > 9 {
            return Err(bad(format!("label {} is not a digit", values[64])));
        }
        images.push(values[..64].try_into().expect("64 values"));
        labels.push(values[64]);
    }
    if images.is_empty() {
        return Err(DataError::format(path, "no digits"));
    }
    Ok((images, labels))
}

/// One 8×8 digit normalised to 28×28 as MNIST was (see the module docs).
pub fn normalise(counts: &[u8; 64]) -> Vec<u8> {
    let canvas = Canvas::new(8, 8, counts.iter().map(|&c| c as f32 / 16.0).collect());
    // the extent between pixel centres plus one pixel: the width of the inked cells
    let scale = BOX_PX / (canvas.extent_under(&IDENTITY) + 1.0);
    place(&canvas, &IDENTITY, scale)
}

/// Reads `optdigits:all` from `data_dir`.
pub fn load(data_dir: &Path) -> Result<Dataset> {
    let path = data_dir.join(NAME).join(CSV);
    if !path.is_file() {
        return Err(super::catalog::not_found(&path, NAME));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let (images, labels) = parse(&path, &text)?;
    let pixels = images.iter().flat_map(normalise).collect();
    Dataset::new(
        &path,
        pixels,
        labels,
        [1, 28, 28],
        (0..10).map(|d| d.to_string()).collect(),
    )
}
