//! Procedural dead-leaves images: public 32×32 colour pretraining data that owes nothing to any
//! photograph (Baradad et al., "Learning to See by Looking at Noise", 2021; used as public data
//! for DP image models by DP-RandP).
//!
//! Shapes (discs, ellipses and rectangles, randomly rotated) fall on the image one after another,
//! each hiding what lies below it. Their radii follow the power law of the dead-leaves model,
//! density ∝ r⁻³ between `rmin` and `rmax`, which makes the images look alike at every scale. Each
//! image draws its own palette (a few hues around a random base hue, or free random colours), and
//! a shape is filled flat, with a linear colour gradient, or with soft stripes. Shapes are drawn
//! at 4 × 4 supersampling and box-averaged down to 32 × 32, so edges are anti-aliased.
//!
//! The shapes are laid front to back: a pixel takes the colour of the first shape that covers it,
//! which is the same picture as painting back to front until nothing uncovered remains, but
//! stops as soon as every pixel is covered.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::generated::{self, SIZE};
use crate::data::dataset::Dataset;

/// Supersampling factor per axis.
const SUPERSAMPLE: usize = 4;
/// Side of the drawing canvas.
const CANVAS: usize = SIZE * SUPERSAMPLE;
/// Smallest shape radius, in output pixels.
const RMIN: f32 = 1.0;
/// Range of the per-image largest radius, in output pixels.
const RMAX: (f32, f32) = (10.0, 40.0);
/// Shapes per image at most; pixels still uncovered then keep the background colour.
const MAX_SHAPES: usize = 5000;

/// An RGB colour with channels in [0, 1].
type Rgb = [f32; 3];

/// HSV (all in [0, 1]) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let c = v * s;
    let x = c * (1.0 - ((h6 % 2.0) - 1.0).abs());
    let (r, g, b) = match h6 as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// A radius drawn from density ∝ r⁻³ on [rmin, rmax], by inverting its distribution function.
pub fn power_law_radius(rng: &mut impl Rng, rmin: f32, rmax: f32) -> f32 {
    let u: f32 = rng.gen();
    let (a, b) = (rmin.powi(-2), rmax.powi(-2));
    (a - u * (a - b)).powf(-0.5)
}

/// Where an image's colours come from.
enum Palette {
    /// A few colours around a base hue (an image with a colour scheme).
    Scheme(Vec<Rgb>),
    /// Every shape its own random colour.
    Free,
}

impl Palette {
    fn draw(rng: &mut impl Rng) -> Self {
        if rng.gen_bool(0.3) {
            return Self::Free;
        }
        let base: f32 = rng.gen();
        let spread = rng.gen_range(0.05f32..0.5);
        let n = rng.gen_range(3..=8);
        Self::Scheme(
            (0..n)
                .map(|_| {
                    hsv(
                        base + rng.gen_range(-spread..spread),
                        rng.gen_range(0.1f32..0.9),
                        rng.gen_range(0.1f32..1.0),
                    )
                })
                .collect(),
        )
    }

    /// One colour, with a little jitter so that shapes of one palette entry still differ.
    fn colour(&self, rng: &mut impl Rng) -> Rgb {
        match self {
            Self::Free => hsv(rng.gen(), rng.gen(), rng.gen_range(0.05f32..1.0)),
            Self::Scheme(colours) => {
                let c = colours[rng.gen_range(0..colours.len())];
                let j = 0.06;
                c.map(|v| (v + rng.gen_range(-j..j)).clamp(0.0, 1.0))
            }
        }
    }
}

/// The outline of a shape, in its own rotated frame (u along its first axis).
#[derive(Clone, Copy)]
enum Outline {
    Disc,
    Ellipse,
    Rect,
}

/// How a shape is filled, as a function of its frame coordinates scaled to [-1, 1].
enum Fill {
    Flat(Rgb),
    /// From the first colour to the second along direction (cos, sin).
    Gradient(Rgb, Rgb, f32, f32),
    /// Soft stripes between two colours: frequency (cycles across the shape) and phase.
    Stripes(Rgb, Rgb, f32, f32),
}

impl Fill {
    fn at(&self, u: f32, v: f32) -> Rgb {
        let mix = |a: &Rgb, b: &Rgb, t: f32| [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * t);
        match self {
            Self::Flat(c) => *c,
            Self::Gradient(a, b, dc, ds) => {
                mix(a, b, ((u * dc + v * ds) * 0.5 + 0.5).clamp(0.0, 1.0))
            }
            Self::Stripes(a, b, freq, phase) => {
                let t = 0.5 + 0.5 * (std::f32::consts::PI * (u * freq + phase)).sin();
                mix(a, b, t)
            }
        }
    }
}

/// Renders one dead-leaves image as 3×32×32 channel-major bytes.
pub fn render(rng: &mut impl Rng) -> Vec<u8> {
    let palette = Palette::draw(rng);
    let rmax = rng.gen_range(RMAX.0..RMAX.1);
    let mut canvas = vec![[0f32; 3]; CANVAS * CANVAS];
    let mut covered = vec![false; CANVAS * CANVAS];
    let mut left = CANVAS * CANVAS;
    let ss = SUPERSAMPLE as f32;
    for _ in 0..MAX_SHAPES {
        if left == 0 {
            break;
        }
        let r = power_law_radius(rng, RMIN, rmax) * ss;
        let (cx, cy) = (
            rng.gen_range(-r..CANVAS as f32 + r),
            rng.gen_range(-r..CANVAS as f32 + r),
        );
        let outline = match rng.gen_range(0..10) {
            0..=4 => Outline::Disc,
            5..=7 => Outline::Ellipse,
            _ => Outline::Rect,
        };
        // semi-axes (a along u, b along v) and rotation
        let (a, b) = match outline {
            Outline::Disc => (r, r),
            Outline::Ellipse => (r, r * rng.gen_range(0.3f32..1.0)),
            Outline::Rect => (r, r * rng.gen_range(0.3f32..1.0)),
        };
        let theta = rng.gen_range(0.0..std::f32::consts::PI);
        let (c, s) = (theta.cos(), theta.sin());
        let first = palette.colour(rng);
        let fill = match rng.gen_range(0..10) {
            0..=5 => Fill::Flat(first),
            6..=8 => {
                let d = rng.gen_range(0.0..std::f32::consts::TAU);
                Fill::Gradient(first, palette.colour(rng), d.cos(), d.sin())
            }
            _ => Fill::Stripes(
                first,
                palette.colour(rng),
                rng.gen_range(1.0f32..4.0),
                rng.gen(),
            ),
        };
        // bounding box: a rotated rectangle's reaches √(a² + b²) from its centre
        let reach = (a * a + b * b).sqrt();
        let lo = |v: f32| (v - reach).floor().max(0.0) as usize;
        let hi = |v: f32| ((v + reach).ceil().max(0.0) as usize).min(CANVAS);
        for y in lo(cy)..hi(cy) {
            for x in lo(cx)..hi(cx) {
                let i = y * CANVAS + x;
                if covered[i] {
                    continue;
                }
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let (u, v) = ((c * dx + s * dy) / a, (-s * dx + c * dy) / b);
                let inside = match outline {
                    Outline::Disc | Outline::Ellipse => u * u + v * v <= 1.0,
                    Outline::Rect => u.abs() <= 1.0 && v.abs() <= 1.0,
                };
                if inside {
                    canvas[i] = fill.at(u, v);
                    covered[i] = true;
                    left -= 1;
                }
            }
        }
    }
    if left > 0 {
        let background = palette.colour(rng);
        for (px, done) in canvas.iter_mut().zip(&covered) {
            if !done {
                *px = background;
            }
        }
    }
    downsample(&canvas)
}

/// Box-averages the supersampled canvas to 32 × 32 channel-major bytes.
fn downsample(canvas: &[[f32; 3]]) -> Vec<u8> {
    let mut out = vec![0u8; 3 * SIZE * SIZE];
    let n = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for oy in 0..SIZE {
        for ox in 0..SIZE {
            let mut acc = [0f32; 3];
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let px = canvas[(oy * SUPERSAMPLE + sy) * CANVAS + ox * SUPERSAMPLE + sx];
                    for k in 0..3 {
                        acc[k] += px[k];
                    }
                }
            }
            for k in 0..3 {
                out[k * SIZE * SIZE + oy * SIZE + ox] =
                    (acc[k] / n * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Generates `count` dead-leaves images (one class, "image"), in parallel, repeatable with
/// `seed`: image `i` depends only on the seed and `i`.
pub fn generate(count: usize, seed: u64) -> Dataset {
    generated::images(count, seed, |rng: &mut ChaCha8Rng| render(rng))
}

/// Generates train and test sets and writes them to `data_dir/dead-leaves/{train,test}.bin` as
/// CIFAR-10-format records (staged, then renamed into place). Returns the folder. An existing
/// folder is an error: delete it to generate again with other settings.
pub fn write_dataset(
    data_dir: &std::path::Path,
    train: usize,
    test: usize,
    seed: u64,
) -> crate::data::error::Result<std::path::PathBuf> {
    use crate::data::spec::Split;
    generated::check_absent(data_dir, NAME)?;
    let train_ds = generate(train, generated::split_seed(seed, Split::Train));
    let test_ds = generate(test, generated::split_seed(seed, Split::Test));
    let about = format!(
        "dead-leaves images generated by dpsynth: seed {seed}, {train} train, {test} test, \
         radii r^-3 on [{RMIN}, U({}, {})] px, {SUPERSAMPLE}x{SUPERSAMPLE} supersampling\n",
        RMAX.0, RMAX.1
    );
    generated::write_set(data_dir, NAME, &train_ds, &test_ds, &[("about.txt", about)])
}

/// The folder name under the data folder, and the spec name.
pub const NAME: &str = "dead-leaves";
