//! Public digit images rendered from free fonts, as pretraining data that is not MNIST, in two
//! sets ([`DigitSet`]): `font-digits` from the Debian fonts, and `handwriting-digits` from those
//! and the handwriting fonts of npm's `@fontsource` packages, elastically distorted (Simard et
//! al. 2003, [`super::elastic`]) like handwriting.
//!
//! Each image is one digit from a randomly chosen font, with a random stroke thickness, rotation,
//! shear and aspect ratio, scaled so that its longer side fits a 20-pixel box and placed in a
//! 28 × 28 frame with its centre of mass at the centre, the way MNIST itself was normalised
//! (LeCun et al.). White ink on black, anti-aliased by 4 × 4 supersampling. The same seed gives the
//! same images on any machine with the same fonts.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::elastic::{distort, Elastic};
use crate::data::dataset::Dataset;
use crate::data::error::{DataError, Result};

/// Side of the generated images.
pub const SIZE: usize = 28;
/// Pixel height glyphs are rasterised at before transformation.
const RASTER_PX: f32 = 64.0;
/// Supersampling factor per axis.
const SUPERSAMPLE: usize = 4;

/// Font files whose digits are not plain digits: keyboard keys (boxed), dingbats (circled),
/// symbols, and decorative initials (hollow outlines). Matched on the file stem.
const EXCLUDED_FONTS: [&str; 4] = [
    "LinBiolinum_K",
    "D050000L",
    "StandardSymbolsPS",
    "LinLibertine_I",
];

/// Stroke width range of the generated digits, in output pixels (MNIST strokes are about 2-4).
const STROKE_OUT_PX: (f32, f32) = (1.8, 3.6);

/// A font that has outlines for all ten digits.
pub struct DigitFont {
    /// File the font came from.
    pub path: PathBuf,
    font: FontVec,
}

/// Loads every .ttf/.otf under `dir` (recursively, sorted by path) that draws all ten digits.
pub fn load_fonts(dir: &Path) -> Result<Vec<DigitFont>> {
    let mut files = crate::data::walk::files_with_extensions(dir, &["ttf", "otf"], "fonts")?;
    files.retain(|p| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        !EXCLUDED_FONTS.contains(&stem)
    });
    let mut fonts = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        // fonts that fail to parse or lack a digit are skipped, not fatal: a font folder is a
        // collection, and the count of usable fonts is reported
        let Ok(font) = FontVec::try_from_vec(bytes) else {
            continue;
        };
        let draws_all = ('0'..='9').all(|c| {
            let id = font.glyph_id(c);
            id.0 != 0
                && font
                    .outline_glyph(id.with_scale(PxScale::from(RASTER_PX)))
                    .is_some()
        });
        if draws_all {
            fonts.push(DigitFont { path, font });
        }
    }
    if fonts.is_empty() {
        return Err(DataError::format(dir, "no font here draws all ten digits"));
    }
    Ok(fonts)
}

/// A grey-level canvas of coverage values in [0, 1].
pub(crate) struct Canvas {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Canvas {
    /// A `w`×`h` canvas of row-major coverage values in [0, 1].
    pub(crate) fn new(w: usize, h: usize, px: Vec<f32>) -> Self {
        assert_eq!(px.len(), w * h, "canvas size");
        Self { w, h, px }
    }

    fn at(&self, x: isize, y: isize) -> f32 {
        if x < 0 || y < 0 || x >= self.w as isize || y >= self.h as isize {
            0.0
        } else {
            self.px[y as usize * self.w + x as usize]
        }
    }

    /// Bilinear sample at a continuous position (pixel centres at integer + 0.5).
    fn sample(&self, x: f32, y: f32) -> f32 {
        let (x, y) = (x - 0.5, y - 0.5);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let top = self.at(x0, y0) * (1.0 - fx) + self.at(x0 + 1, y0) * fx;
        let bottom = self.at(x0, y0 + 1) * (1.0 - fx) + self.at(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// One step of 3 × 3 dilation (`grow`) or erosion.
    fn morph(&self, grow: bool) -> Canvas {
        let mut px = vec![0.0; self.px.len()];
        for y in 0..self.h as isize {
            for x in 0..self.w as isize {
                let mut v = if grow { 0.0f32 } else { 1.0f32 };
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let s = self.at(x + dx, y + dy);
                        v = if grow { v.max(s) } else { v.min(s) };
                    }
                }
                px[y as usize * self.w + x as usize] = v;
            }
        }
        Canvas {
            w: self.w,
            h: self.h,
            px,
        }
    }

    fn ink(&self) -> f32 {
        self.px.iter().sum()
    }

    /// Mean stroke width in canvas pixels: ink area over half the outline length, with the
    /// outline length measured as the total gradient magnitude.
    fn stroke_width(&self) -> f32 {
        let mut edge = 0.0;
        for y in 0..self.h as isize {
            for x in 0..self.w as isize {
                let gx = self.at(x + 1, y) - self.at(x, y);
                let gy = self.at(x, y + 1) - self.at(x, y);
                edge += (gx * gx + gy * gy).sqrt();
            }
        }
        if edge <= 0.0 {
            0.0
        } else {
            2.0 * self.ink() / edge
        }
    }

    /// Extent of the ink (max of width and height, between pixel centres) under the linear map
    /// `m`.
    pub(crate) fn extent_under(&self, m: &[[f32; 2]; 2]) -> f32 {
        let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
        for y in 0..self.h {
            for x in 0..self.w {
                if self.px[y * self.w + x] <= 0.0 {
                    continue;
                }
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                let p = [m[0][0] * fx + m[0][1] * fy, m[1][0] * fx + m[1][1] * fy];
                for k in 0..2 {
                    lo[k] = lo[k].min(p[k]);
                    hi[k] = hi[k].max(p[k]);
                }
            }
        }
        (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1.0)
    }
}

fn rasterise(font: &FontVec, digit: u8) -> Canvas {
    let id = font.glyph_id((b'0' + digit) as char);
    let outline = font
        .outline_glyph(id.with_scale(PxScale::from(RASTER_PX)))
        .expect("checked in load_fonts");
    let b = outline.px_bounds();
    // a margin so that dilation and bilinear sampling never clip the strokes
    let margin = 6;
    let (w, h) = (
        b.width().ceil() as usize + 2 * margin,
        b.height().ceil() as usize + 2 * margin,
    );
    let mut px = vec![0.0; w * h];
    outline.draw(|x, y, c| {
        let (x, y) = (x as usize + margin, y as usize + margin);
        if x < w && y < h {
            px[y * w + x] = c.clamp(0.0, 1.0);
        }
    });
    Canvas { w, h, px }
}

/// Renders digit `digit` with `font`, randomised by `rng`, as 28 × 28 bytes.
pub fn render(font: &DigitFont, digit: u8, rng: &mut impl Rng) -> Vec<u8> {
    let mut canvas = rasterise(&font.font, digit);
    let theta = rng.gen_range(-15f32..15.0).to_radians();
    let shear = rng.gen_range(-0.3f32..0.3);
    let aspect = rng.gen_range(0.8f32..1.2);
    // forward linear map M = R · Sh · diag(aspect, 1) in glyph pixel units
    let (c, s) = (theta.cos(), theta.sin());
    let m = [[c * aspect, (c * shear - s)], [s * aspect, (s * shear + c)]];
    let box_px = 20.0 * rng.gen_range(0.8f32..1.0);
    // stroke thickness: grow or thin the strokes (3 × 3 dilation/erosion, 2 canvas pixels a
    // step) towards a random MNIST-like width in output pixels, whatever the font's weight
    let scale_estimate = box_px / canvas.extent_under(&m);
    let target = rng.gen_range(STROKE_OUT_PX.0..STROKE_OUT_PX.1) / scale_estimate;
    let steps = ((target - canvas.stroke_width()) / 2.0)
        .round()
        .clamp(-3.0, 8.0) as i32;
    for _ in 0..steps.unsigned_abs() {
        let next = canvas.morph(steps > 0);
        if next.ink() <= 0.05 * canvas.ink() {
            break;
        }
        canvas = next;
    }
    let scale = box_px / canvas.extent_under(&m);
    place(&canvas, &m, scale)
}

/// The identity map, for [`place`].
pub(crate) const IDENTITY: [[f32; 2]; 2] = [[1.0, 0.0], [0.0, 1.0]];

/// Places the ink of `canvas` in a 28 × 28 frame as MNIST was normalised: mapped by `scale · m`
/// about its centre of mass, which lands at the frame's centre, 4 × 4 supersampled with bilinear
/// sampling, and stretched so that the darkest pixel is full ink (255).
pub(crate) fn place(canvas: &Canvas, m: &[[f32; 2]; 2], scale: f32) -> Vec<u8> {
    let (mut sum, mut cx, mut cy) = (0.0f32, 0.0f32, 0.0f32);
    for y in 0..canvas.h {
        for x in 0..canvas.w {
            let v = canvas.px[y * canvas.w + x];
            sum += v;
            cx += v * (x as f32 + 0.5);
            cy += v * (y as f32 + 0.5);
        }
    }
    let sum = sum.max(1e-6);
    let (cx, cy) = (cx / sum, cy / sum);
    // full map: out = scale · M · (p - com) + centre; invert it for sampling
    let a = [
        [scale * m[0][0], scale * m[0][1]],
        [scale * m[1][0], scale * m[1][1]],
    ];
    let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    let inv = [
        [a[1][1] / det, -a[0][1] / det],
        [-a[1][0] / det, a[0][0] / det],
    ];
    let centre = SIZE as f32 / 2.0;
    let mut coverage = vec![0f32; SIZE * SIZE];
    let step = 1.0 / SUPERSAMPLE as f32;
    for oy in 0..SIZE {
        for ox in 0..SIZE {
            let mut acc = 0.0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let dx = ox as f32 + (sx as f32 + 0.5) * step - centre;
                    let dy = oy as f32 + (sy as f32 + 0.5) * step - centre;
                    let px = inv[0][0] * dx + inv[0][1] * dy + cx;
                    let py = inv[1][0] * dx + inv[1][1] * dy + cy;
                    acc += canvas.sample(px, py);
                }
            }
            coverage[oy * SIZE + ox] = acc / (SUPERSAMPLE * SUPERSAMPLE) as f32;
        }
    }
    // full-intensity strokes, as in MNIST, even for hairline fonts
    let peak = coverage.iter().cloned().fold(0.0f32, f32::max).max(1e-6);
    coverage
        .iter()
        .map(|v| (v / peak * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A generated digit set: its name (the folder under the data folder and the spec name), the
/// font folders it draws from, and its distortion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigitSet {
    /// Name: `font-digits` or `handwriting-digits`.
    pub name: &'static str,
    /// Font folders under the data folder (each fetched by `dpsynth data fetch FOLDER`).
    pub font_dirs: &'static [&'static str],
    /// Elastic distortion applied after rendering, if any.
    pub elastic: Option<Elastic>,
}

/// Digits from the 20 Debian font packages, undistorted.
pub const FONT_DIGITS: DigitSet = DigitSet {
    name: "font-digits",
    font_dirs: &["fonts"],
    elastic: None,
};

/// Digits from the Debian fonts and the OFL handwriting fonts, elastically distorted.
pub const HANDWRITING_DIGITS: DigitSet = DigitSet {
    name: "handwriting-digits",
    font_dirs: &["fonts", super::handwriting_fonts::NAME],
    elastic: Some(Elastic::SIMARD),
};

/// Every generated digit set.
pub const DIGIT_SETS: [DigitSet; 2] = [FONT_DIGITS, HANDWRITING_DIGITS];

/// Generates `count` labelled digits (classes "0".."9", balanced in expectation), in parallel,
/// repeatable with `seed`: image `i` depends only on the seed, `i`, the font list and
/// `elastic`.
pub fn generate(fonts: &[DigitFont], count: usize, seed: u64, elastic: Option<Elastic>) -> Dataset {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<(Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    let end = (start + chunk).min(count);
                    let mut images = Vec::with_capacity((end - start) * SIZE * SIZE);
                    let mut labels = Vec::with_capacity(end - start);
                    for i in start..end {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        let digit = rng.gen_range(0..10u8);
                        let font = &fonts[rng.gen_range(0..fonts.len())];
                        let img = render(font, digit, &mut rng);
                        match elastic {
                            Some(e) => images.extend(distort(&img, SIZE, SIZE, e, &mut rng)),
                            None => images.extend(img),
                        }
                        labels.push(digit);
                    }
                    (images, labels)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread panicked"))
            .collect()
    });
    let mut images = Vec::with_capacity(count * SIZE * SIZE);
    let mut labels = Vec::with_capacity(count);
    for (i, l) in parts {
        images.extend(i);
        labels.extend(l);
    }
    Dataset {
        images,
        labels,
        channels: 1,
        height: SIZE,
        width: SIZE,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    }
}

/// Generates train and test sets of `set` and writes them as MNIST-style IDX files into
/// `data_dir/<set.name>` (staged in a temp folder and renamed into place), with the fonts used
/// in `fonts.txt`. Returns the folder. An existing folder is an error: delete it to regenerate
/// with other settings. The font folders must have been fetched.
pub fn write_dataset(
    set: &DigitSet,
    data_dir: &Path,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<PathBuf> {
    let target = data_dir.join(set.name);
    if target.exists() {
        return Err(DataError::format(
            &target,
            "already exists: delete it to generate again",
        ));
    }
    let mut fonts = Vec::new();
    for dir in set.font_dirs {
        fonts.extend(load_fonts(&data_dir.join(dir))?);
    }
    std::fs::create_dir_all(data_dir).map_err(|e| DataError::io(data_dir, e))?;
    let stage = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", set.name))
        .tempdir_in(data_dir)
        .map_err(|e| DataError::io(data_dir, e))?;
    // different seeds per split, so the test images are not the first training images
    for (prefix, n, split_seed) in [("train", train, seed), ("t10k", test, seed ^ 0x5EED_7E57)] {
        let ds = generate(&fonts, n, split_seed, set.elastic);
        let files = [
            (
                format!("{prefix}-images-idx3-ubyte"),
                crate::data::idx::encode_images(n, SIZE, SIZE, &ds.images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                crate::data::idx::encode_labels(&ds.labels),
            ),
        ];
        for (name, bytes) in files {
            let p = stage.path().join(name);
            std::fs::write(&p, bytes).map_err(|e| DataError::io(&p, e))?;
        }
    }
    let fonts_list: String = fonts
        .iter()
        .map(|f| format!("{}\n", f.path.display()))
        .collect();
    let p = stage.path().join("fonts.txt");
    std::fs::write(&p, fonts_list).map_err(|e| DataError::io(&p, e))?;
    let kept = stage.keep();
    std::fs::rename(&kept, &target).map_err(|e| DataError::io(&target, e))?;
    Ok(target)
}
