//! A loss curve as a PNG: raw per-step losses in light grey, a moving average in blue, on a log
//! scale, with the step range and loss range written in the corner when a font is available.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

const W: u32 = 800;
const H: u32 = 400;
const MARGIN: u32 = 30;

fn draw_line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Writes the loss plot of `losses` (one value per step) to `path`, atomically.
pub fn write_loss_plot(losses: &[f32], path: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let axis = Rgb([0, 0, 0]);
    draw_line(
        &mut img,
        (MARGIN as f32, MARGIN as f32),
        (MARGIN as f32, (H - MARGIN) as f32),
        axis,
    );
    draw_line(
        &mut img,
        (MARGIN as f32, (H - MARGIN) as f32),
        ((W - MARGIN) as f32, (H - MARGIN) as f32),
        axis,
    );
    let finite: Vec<f32> = losses
        .iter()
        .cloned()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if finite.len() >= 2 {
        let (lo, hi) = finite
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let (llo, lhi) = (lo.ln(), hi.ln().max(lo.ln() + 1e-6));
        let n = losses.len();
        let px = |i: usize, v: f32| {
            let x = MARGIN as f32 + (W - 2 * MARGIN) as f32 * i as f32 / (n - 1) as f32;
            let y = (H - MARGIN) as f32
                - (H - 2 * MARGIN) as f32 * (v.max(lo).ln() - llo) / (lhi - llo);
            (x, y)
        };
        for i in 1..n {
            draw_line(
                &mut img,
                px(i - 1, losses[i - 1]),
                px(i, losses[i]),
                Rgb([200, 200, 200]),
            );
        }
        let window = (n / 50).max(1);
        let smooth: Vec<f32> = (0..n)
            .map(|i| {
                let s = &losses[i.saturating_sub(window - 1)..=i];
                s.iter().sum::<f32>() / s.len() as f32
            })
            .collect();
        for i in 1..n {
            draw_line(
                &mut img,
                px(i - 1, smooth[i - 1]),
                px(i, smooth[i]),
                Rgb([20, 60, 200]),
            );
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("encoding the loss plot")?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
