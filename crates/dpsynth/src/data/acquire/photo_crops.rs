//! Random 32×32 crops of the public photographs fetched by `dpsynth data fetch photos`: natural
//! image statistics for pretraining a CIFAR-10-sized model without CIFAR-10 or ImageNet.
//!
//! Each crop picks a photograph uniformly, a square side drawn log-uniformly between 32 px and the
//! photograph's short side (so close-up textures and whole scenes are equally likely per octave),
//! a uniform position, and a horizontal flip with probability 1/2, then resizes the square to
//! 32 × 32 with a Catmull-Rom filter (an antialiasing filter: its support widens with the
//! reduction). Large crops are cut from a pre-halved copy of the photograph at least twice the
//! crop's final resolution, so resizing stays cheap without aliasing.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::generated::{self, SIZE};
use crate::data::dataset::Dataset;
use crate::data::error::{DataError, Result};
use crate::data::spec::Split;

/// The folder name under the data folder, and the spec name.
pub const NAME: &str = "photo-crops";

/// A photograph and its successive halvings (level k is 2^-k of the original size).
pub struct Photo {
    /// The file it was read from.
    pub path: PathBuf,
    levels: Vec<RgbImage>,
}

impl Photo {
    /// Builds the halvings of `img` down to a short side of 64 px.
    pub fn new(path: PathBuf, img: RgbImage) -> Self {
        let mut levels = vec![img];
        loop {
            let last = levels.last().expect("one level at least");
            let (w, h) = last.dimensions();
            if w.min(h) < 128 {
                break;
            }
            let half = imageops::resize(last, w / 2, h / 2, FilterType::Triangle);
            levels.push(half);
        }
        Self { path, levels }
    }

    /// The short side of the original photograph.
    pub fn short_side(&self) -> u32 {
        let (w, h) = self.levels[0].dimensions();
        w.min(h)
    }

    /// A random crop as 3×32×32 channel-major bytes.
    pub fn crop(&self, rng: &mut impl Rng) -> Vec<u8> {
        let (w, h) = self.levels[0].dimensions();
        let side = crop_side(rng, w.min(h) as f64);
        // position in original pixels, as fractions so that every level cuts the same square
        let fx = rng.gen_range(0.0..=1.0) * (w as f64 - side);
        let fy = rng.gen_range(0.0..=1.0) * (h as f64 - side);
        let flip = rng.gen_bool(0.5);
        // the coarsest level that still has at least 2 × 32 pixels across the crop
        let mut k = 0;
        while k + 1 < self.levels.len() && side / f64::from(1u32 << (k + 1)) >= 2.0 * SIZE as f64 {
            k += 1;
        }
        let level = &self.levels[k];
        let scale = f64::from(1u32 << k);
        let (lw, lh) = level.dimensions();
        let s = ((side / scale).round() as u32).clamp(1, lw.min(lh));
        let x = ((fx / scale).round() as u32).min(lw - s);
        let y = ((fy / scale).round() as u32).min(lh - s);
        let view = imageops::crop_imm(level, x, y, s, s).to_image();
        let mut small = imageops::resize(&view, SIZE as u32, SIZE as u32, FilterType::CatmullRom);
        if flip {
            imageops::flip_horizontal_in_place(&mut small);
        }
        let mut out = vec![0u8; 3 * SIZE * SIZE];
        for (x, y, p) in small.enumerate_pixels() {
            for c in 0..3 {
                out[c * SIZE * SIZE + y as usize * SIZE + x as usize] = p.0[c];
            }
        }
        out
    }
}

/// A crop side drawn log-uniformly between 32 px and `short` (the whole of `short` when that is no
/// more than 32 px).
pub fn crop_side(rng: &mut impl Rng, short: f64) -> f64 {
    if short <= SIZE as f64 {
        short
    } else {
        rng.gen_range((SIZE as f64).ln()..=short.ln())
            .exp()
            .clamp(SIZE as f64, short)
    }
}

/// Loads every .jpg/.jpeg/.png under `dir` (recursively, sorted by path) as RGB photographs.
/// A file that does not decode is an error naming it: the photo folder holds only what the
/// fetcher put there.
pub fn load_photos(dir: &Path) -> Result<Vec<Photo>> {
    let files = crate::data::walk::files_with_extensions(dir, &["jpg", "jpeg", "png"], "photos")?;
    if files.is_empty() {
        return Err(DataError::format(dir, "holds no .jpg or .png photograph"));
    }
    // decode in parallel: a few large JPEGs take most of the load time
    let threads = generated::worker_threads();
    let chunk = files.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Photo>>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| {
                            let img = image::open(p)
                                .map_err(|e| DataError::format(p, format!("cannot decode: {e}")))?;
                            Ok(Photo::new(p.clone(), img.to_rgb8()))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoder thread panicked"))
            .collect()
    });
    let mut photos = Vec::with_capacity(files.len());
    for part in parts {
        photos.extend(part?);
    }
    Ok(photos)
}

/// Generates `count` crops (one class, "image") in parallel, repeatable with `seed`: crop `i`
/// depends only on the seed, `i` and the list of photographs.
pub fn generate(photos: &[Photo], count: usize, seed: u64) -> Dataset {
    generated::images(count, seed, |rng: &mut ChaCha8Rng| {
        photos[rng.gen_range(0..photos.len())].crop(rng)
    })
}

/// Crops train and test sets from the photographs under `photos_dir` and writes them to
/// `data_dir/photo-crops/{train,test}.bin` as CIFAR-10-format records, with the list of
/// photographs in `photos.txt` (staged, then renamed into place). Returns the folder. An existing
/// folder is an error: delete it to generate again with other settings.
///
/// Both splits crop the same photographs (there are few): the test split measures fit to these
/// photographs' crops, not to unseen scenes.
pub fn write_dataset(
    photos_dir: &Path,
    data_dir: &Path,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<PathBuf> {
    generated::check_absent(data_dir, NAME)?;
    let photos = load_photos(photos_dir)?;
    let train_ds = generate(&photos, train, generated::split_seed(seed, Split::Train));
    let test_ds = generate(&photos, test, generated::split_seed(seed, Split::Test));
    let list: String = photos
        .iter()
        .map(|p| {
            let (w, h) = p.levels[0].dimensions();
            format!("{}\t{w}x{h}\n", p.path.display())
        })
        .collect();
    let about = format!(
        "photo-crops generated by dpsynth: seed {seed}, {train} train, {test} test, from {} \
         photographs (photos.txt; licences in {}/LICENSES.md)\n",
        photos.len(),
        photos_dir.display()
    );
    generated::write_set(
        data_dir,
        NAME,
        &train_ds,
        &test_ds,
        &[("photos.txt", list), ("about.txt", about)],
    )
}
