//! Sample grids: one row per class, a few images each, as a PNG.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, GenericImage, Rgb, RgbImage};

use super::dataset::Dataset;
use super::error::{DataError, Result};
use super::imagefolder::to_image;

/// Builds a grid image with one row per class and up to `per_row` images of that class, each
/// scaled by `scale` (nearest neighbour), separated by a 2-pixel white gap.
pub fn grid(ds: &Dataset, per_row: usize, scale: u32) -> RgbImage {
    let (w, h) = (ds.width as u32 * scale, ds.height as u32 * scale);
    let gap = 2;
    let rows = ds.num_classes() as u32;
    let mut out = RgbImage::from_pixel(
        gap + per_row as u32 * (w + gap),
        gap + rows * (h + gap),
        Rgb([255, 255, 255]),
    );
    let mut filled = vec![0usize; ds.num_classes()];
    for i in 0..ds.len() {
        let c = ds.labels[i] as usize;
        if filled[c] >= per_row {
            continue;
        }
        let img: DynamicImage = to_image(ds, i);
        let img = img.resize_exact(w, h, FilterType::Nearest).to_rgb8();
        let (x, y) = (
            gap + filled[c] as u32 * (w + gap),
            gap + c as u32 * (h + gap),
        );
        out.copy_from(&img, x, y).expect("tile fits in the grid");
        filled[c] += 1;
    }
    out
}

/// Writes [`grid`] as a PNG at `path`, atomically (temp file, then rename).
pub fn write_grid(ds: &Dataset, per_row: usize, scale: u32, path: &Path) -> Result<()> {
    write_png(&grid(ds, per_row, scale), path)
}

/// Writes `img` as a PNG at `path`, atomically (temp file, then rename).
pub fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| DataError::format(path, format!("cannot encode PNG: {e}")))?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|e| DataError::io(path, e))
}
