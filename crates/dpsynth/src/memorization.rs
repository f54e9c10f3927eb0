//! How close synthetic images come to the private training images: the memorization report.
//!
//! For each synthetic image, the distance to its nearest private training image and to its
//! nearest held-out real image, in two spaces: pixels (RMS difference on the 0..1 scale) and
//! the downstream classifier's penultimate features (RMS difference), where two renderings of
//! one digit are near even when their pixels are not. The training images are a seeded subset
//! of the held-out set's size, so that a model that has not memorised its training set puts
//! each synthetic image nearer a training image about half the time; a fraction well above one
//! half, or near-zero distances, point to copies. The report reads the private training set: it
//! is for the data holder, not for sharing with the synthetic data.

use std::path::Path;

use anyhow::{ensure, Result};
use image::{imageops::FilterType, GenericImage, Rgb, RgbImage};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::grid::write_png;
use crate::data::imagefolder::to_image;
use crate::data::Dataset;
use crate::diffusion::heldout::seeded_subset;
use crate::nn::classifier::ImageClassifier;

/// What every memorization report says about itself.
pub const NOTE: &str = "reads the private training set: this section and memorization.png are \
     for the data holder, not to be shared with the synthetic data";

/// Distances (RMS pixel difference, 0..1 scale) at a few quantiles.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    /// Smallest distance.
    pub min: f64,
    /// 1st percentile.
    pub p01: f64,
    /// 5th percentile.
    pub p05: f64,
    /// Median.
    pub p50: f64,
    /// Mean.
    pub mean: f64,
}

impl Quantiles {
    fn of(values: &[f32]) -> Self {
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            min: v[0],
            p01: at(0.01),
            p05: at(0.05),
            p50: at(0.5),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// One synthetic image and its nearest training image.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// Index of the synthetic image.
    pub synthetic: usize,
    /// Index of the training image in the private training set.
    pub train: usize,
    /// Their distance.
    pub distance: f64,
}

/// Nearest-neighbour distances in one space.
#[derive(Debug, Clone, Serialize)]
pub struct Distances {
    /// Each synthetic image's distance to its nearest training image.
    pub to_train: Quantiles,
    /// Each synthetic image's distance to its nearest held-out image.
    pub to_heldout: Quantiles,
    /// Fraction of synthetic images nearer a training image than any held-out image.
    pub closer_to_train: f64,
}

/// The memorization report of one synthetic set.
#[derive(Debug, Clone, Serialize)]
pub struct Memorization {
    /// Synthetic images measured.
    pub synthetic_images: usize,
    /// Images in each reference set (training subset and held-out set).
    pub reference_images: usize,
    /// In pixel space (RMS pixel difference, 0..1 scale).
    #[serde(flatten)]
    pub pixels: Distances,
    /// In the downstream classifier's feature space (RMS feature difference), when measured.
    pub features: Option<Distances>,
    /// The closest synthetic-training pairs in pixel space, nearest first.
    pub closest: Vec<Pair>,
    /// What the report reads and who it is for.
    pub note: &'static str,
}

/// Rows of `ds` as float vectors on the 0..1 scale, `[N, C·H·W]`.
fn flat(ds: &Dataset, indices: &[usize], device: Device) -> Tensor {
    let (x, _) = ds.batch(indices, device);
    ((x + 1.0) / 2.0).view([indices.len() as i64, -1])
}

/// For each row of `queries`, the distance to the nearest row of `refs` and its index.
fn nearest(queries: &Tensor, refs: &Tensor) -> (Vec<f32>, Vec<usize>) {
    let _guard = tch::no_grad_guard();
    let dim = queries.size()[1] as f64;
    let ref_sq = refs.square().sum_dim_intlist(1, false, Kind::Float);
    let (mut dist, mut index) = (Vec::new(), Vec::new());
    for chunk in queries.split(1024, 0) {
        let q_sq = chunk.square().sum_dim_intlist(1, true, Kind::Float);
        let d2 = (q_sq + ref_sq.unsqueeze(0) - chunk.matmul(&refs.tr()) * 2.0).clamp_min(0.0);
        let (min, arg) = d2.min_dim(1, false);
        let min = (min / dim).sqrt();
        dist.extend(Vec::<f32>::try_from(min.to_device(Device::Cpu)).expect("float distances"));
        index.extend(
            Vec::<i64>::try_from(arg.to_device(Device::Cpu))
                .expect("int64 indices")
                .into_iter()
                .map(|i| i as usize),
        );
    }
    (dist, index)
}

/// The features of `ds`'s images `indices` under `net`, `[N, F]`, in batches without gradients.
fn embed(net: &dyn ImageClassifier, ds: &Dataset, indices: &[usize], device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let parts: Vec<Tensor> = indices
        .chunks(500)
        .map(|chunk| {
            net.features(&ds.batch(chunk, device).0)
                .to_kind(Kind::Float)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Distances of each synthetic row to the nearest training and held-out rows, and the index
/// (into the training rows) of the nearest training row.
fn distances(s: &Tensor, train: &Tensor, heldout: &Tensor) -> (Distances, Vec<f32>, Vec<usize>) {
    let (to_train, nearest_train) = nearest(s, train);
    let (to_heldout, _) = nearest(s, heldout);
    let closer = to_train
        .iter()
        .zip(&to_heldout)
        .filter(|(t, h)| t < h)
        .count();
    let d = Distances {
        to_train: Quantiles::of(&to_train),
        to_heldout: Quantiles::of(&to_heldout),
        closer_to_train: closer as f64 / to_train.len() as f64,
    };
    (d, to_train, nearest_train)
}

/// Measures how close `synthetic` comes to `train` against `heldout` (all of one shape), in
/// pixel space and, when `net` is given, in its feature space. The larger reference set is cut
/// to the smaller's size by a seeded (public) subset.
pub fn measure(
    synthetic: &Dataset,
    train: &Dataset,
    heldout: &Dataset,
    pairs: usize,
    net: Option<&dyn ImageClassifier>,
    device: Device,
) -> Result<Memorization> {
    let shape = |d: &Dataset| [d.channels, d.height, d.width];
    ensure!(
        shape(synthetic) == shape(train) && shape(train) == shape(heldout),
        "memorization report: images of different shapes ({:?}, {:?}, {:?})",
        shape(synthetic),
        shape(train),
        shape(heldout)
    );
    ensure!(
        !synthetic.is_empty() && !train.is_empty() && !heldout.is_empty(),
        "memorization report: an empty set"
    );
    let m = train.len().min(heldout.len());
    let (train_idx, heldout_idx) = (
        seeded_subset(train.len(), m, 0),
        seeded_subset(heldout.len(), m, 1),
    );
    let all: Vec<usize> = (0..synthetic.len()).collect();
    let (pixels, to_train, nearest_train) = distances(
        &flat(synthetic, &all, device),
        &flat(train, &train_idx, device),
        &flat(heldout, &heldout_idx, device),
    );
    let features = net.map(|net| {
        distances(
            &embed(net, synthetic, &all, device),
            &embed(net, train, &train_idx, device),
            &embed(net, heldout, &heldout_idx, device),
        )
        .0
    });
    let mut order: Vec<usize> = (0..synthetic.len()).collect();
    order.sort_by(|&a, &b| to_train[a].total_cmp(&to_train[b]));
    let closest = order
        .into_iter()
        .take(pairs)
        .map(|i| Pair {
            synthetic: i,
            train: train_idx[nearest_train[i]],
            distance: to_train[i] as f64,
        })
        .collect();
    Ok(Memorization {
        synthetic_images: synthetic.len(),
        reference_images: m,
        pixels,
        features,
        closest,
        note: NOTE,
    })
}

/// Writes the closest pairs as a PNG: synthetic images in the top row, each above its nearest
/// training image, scaled by `scale`.
pub fn write_pairs(
    report: &Memorization,
    synthetic: &Dataset,
    train: &Dataset,
    scale: u32,
    path: &Path,
) -> Result<()> {
    let (w, h) = (
        synthetic.width as u32 * scale,
        synthetic.height as u32 * scale,
    );
    let gap = 2;
    let n = report.closest.len() as u32;
    let mut out = RgbImage::from_pixel(
        gap + n * (w + gap),
        gap + 2 * (h + gap),
        Rgb([255, 255, 255]),
    );
    for (k, p) in report.closest.iter().enumerate() {
        for (row, (ds, i)) in [(synthetic, p.synthetic), (train, p.train)]
            .into_iter()
            .enumerate()
        {
            let tile = to_image(ds, i)
                .resize_exact(w, h, FilterType::Nearest)
                .to_rgb8();
            out.copy_from(
                &tile,
                gap + k as u32 * (w + gap),
                gap + row as u32 * (h + gap),
            )?;
        }
    }
    Ok(write_png(&out, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(images: Vec<u8>) -> Dataset {
        let n = images.len() / 4;
        Dataset::new(
            Path::new("t"),
            images,
            vec![0; n],
            [1, 2, 2],
            vec!["a".into()],
        )
        .unwrap()
    }

    /// A copied training image is found at distance 0 and counted as nearer the training set;
    /// distances are RMS pixel differences on the 0..1 scale.
    #[test]
    fn copies_are_found_and_distances_are_rms_pixels() {
        let train = set(vec![0, 0, 0, 0, 255, 255, 255, 255]);
        let heldout = set(vec![51, 51, 51, 51, 204, 204, 204, 204]);
        // a copy of training image 1, and an image nearer the held-out image 0
        let synthetic = set(vec![255, 255, 255, 255, 40, 40, 40, 40]);
        let r = measure(&synthetic, &train, &heldout, 1, None, Device::Cpu).unwrap();
        assert_eq!(r.reference_images, 2);
        // exact: every pixel of the copy equals its training image, so the distance is 0 up to
        // float rounding of |q|^2 + |r|^2 - 2 q.r (well under 1e-3 on this scale)
        assert!(r.pixels.to_train.min < 1e-3, "{:?}", r.pixels.to_train);
        assert_eq!(r.closest[0].synthetic, 0);
        assert_eq!(r.closest[0].train, 1);
        assert!((r.pixels.closer_to_train - 0.5).abs() < 1e-12);
        // image 1 (40) against training image 0 (0): 40/255; against held-out 0 (51): 11/255
        assert!((r.pixels.to_train.mean - 20.0 / 255.0).abs() < 1e-3);
        assert!((r.pixels.to_heldout.min - 11.0 / 255.0).abs() < 1e-3);
    }

    /// Features that ignore where pixels are: the image's mean.
    #[derive(Debug)]
    struct MeanPixel;

    impl ImageClassifier for MeanPixel {
        fn forward(&self, x: &Tensor) -> Tensor {
            self.features(x)
        }
        fn features(&self, x: &Tensor) -> Tensor {
            x.flatten(1, -1).mean_dim(1, true, Kind::Float)
        }
    }

    /// A rearranged copy of a training image is far from it in pixels and at distance 0 in a
    /// feature space blind to arrangement: the two spaces are measured separately.
    #[test]
    fn feature_space_distances_use_the_network() {
        let train = set(vec![0, 255, 0, 255, 0, 0, 0, 0]);
        let heldout = set(vec![100, 100, 100, 100, 200, 200, 200, 200]);
        let synthetic = set(vec![255, 0, 255, 0]);
        let r = measure(
            &synthetic,
            &train,
            &heldout,
            1,
            Some(&MeanPixel),
            Device::Cpu,
        )
        .unwrap();
        let f = r.features.expect("features measured");
        // pixels: the nearest training image is the black one (RMS √½ = 0.707; every pixel of
        // the rearranged copy differs by 255), the held-out 100s are nearer (RMS 0.511)
        assert!(
            (r.pixels.to_train.min - 0.5f64.sqrt()).abs() < 1e-3,
            "{:?}",
            r.pixels
        );
        assert_eq!(r.pixels.closer_to_train, 0.0);
        // features: equal means, so distance 0 (up to float rounding) and nearer training
        assert!(f.to_train.min < 1e-3, "{f:?}");
        assert_eq!(f.closer_to_train, 1.0);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let a = set(vec![0; 4]);
        let b = Dataset::new(
            Path::new("t"),
            vec![0; 9],
            vec![0],
            [1, 3, 3],
            vec!["a".into()],
        )
        .unwrap();
        assert!(measure(&a, &a, &b, 1, None, Device::Cpu).is_err());
    }
}
