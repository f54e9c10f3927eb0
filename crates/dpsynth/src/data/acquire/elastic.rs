//! Elastic distortion (Simard, Steinkraus and Platt, 2003, "Best practices for convolutional
//! neural networks applied to visual document analysis"): every pixel is displaced by a random
//! field, uniform in [-1, 1] per pixel and axis, smoothed by a Gaussian of width σ and scaled by
//! α, and the image is resampled bilinearly. Small σ gives noise, large σ a near-translation; σ
//! around 4 pixels at 28×28 gives the wobble of a hand-drawn stroke.

use rand::Rng;

/// The strength of the distortion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Elastic {
    /// Largest scale α of the displacement field, in pixels (each image draws α uniformly in
    /// [0, alpha_max], so some digits stay nearly straight).
    pub alpha_max: f32,
    /// Width σ of the Gaussian smoothing, in pixels.
    pub sigma: f32,
}

impl Elastic {
    /// Simard et al.'s setting for MNIST-sized digits: α up to 34, σ = 4.
    pub const SIMARD: Elastic = Elastic {
        alpha_max: 34.0,
        sigma: 4.0,
    };
}

/// A 1-D Gaussian kernel of width `sigma`, truncated at 3σ and normalised to sum 1.
fn kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Separable Gaussian smoothing of a `w`×`h` field, zero outside.
fn smooth(field: &[f32], w: usize, h: usize, k: &[f32]) -> Vec<f32> {
    let r = (k.len() / 2) as isize;
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal { (x + d, y) } else { (x, y + d) };
                    if sx >= 0 && sy >= 0 && sx < w as isize && sy < h as isize {
                        acc += kv * src[sy as usize * w + sx as usize];
                    }
                }
                out[y as usize * w + x as usize] = acc;
            }
        }
        out
    };
    pass(&pass(field, true), false)
}

/// Distorts a `w`×`h` grey image (row-major bytes) with a field drawn from `rng`.
pub fn distort(img: &[u8], w: usize, h: usize, e: Elastic, rng: &mut impl Rng) -> Vec<u8> {
    let k = kernel(e.sigma);
    let alpha = rng.gen_range(0.0..=e.alpha_max);
    let mut field = || -> Vec<f32> {
        let raw: Vec<f32> = (0..w * h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        smooth(&raw, w, h, &k)
            .into_iter()
            .map(|v| v * alpha)
            .collect()
    };
    let (dx, dy) = (field(), field());
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            img[y as usize * w + x as usize] as f32
        }
    };
    (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32 + dx[i], (i / w) as f32 + dy[i]);
            let (x0, y0) = (x.floor(), y.floor());
            let (fx, fy) = (x - x0, y - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn no_strength_is_the_identity_and_strength_moves_ink() {
        let img: Vec<u8> = (0..28 * 28).map(|i| ((i * 37) % 256) as u8).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let none = Elastic {
            alpha_max: 0.0,
            sigma: 4.0,
        };
        assert_eq!(distort(&img, 28, 28, none, &mut rng), img);
        let moved = distort(&img, 28, 28, Elastic::SIMARD, &mut rng);
        let changed = moved.iter().zip(&img).filter(|(a, b)| a != b).count();
        assert!(changed > 28 * 28 / 2, "only {changed} pixels changed");
    }

    #[test]
    fn the_kernel_sums_to_one() {
        let k = kernel(4.0);
        assert_eq!(k.len(), 25);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
