//! The one in-memory dataset type every reader returns: u8 images N×C×H×W, labels, class names.

use tch::{Device, Kind, Tensor};

use super::error::{DataError, Result};

/// A labelled image dataset held in memory as raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Pixels, row-major N×C×H×W, 0..=255.
    pub images: Vec<u8>,
    /// One label per image, each `< class_names.len()`.
    pub labels: Vec<u8>,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

/// Summary statistics printed by `dpsynth data info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Number of images.
    pub count: usize,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// `(class name, count)` for every class, in label order.
    pub per_class: Vec<(String, usize)>,
    /// Mean pixel value per channel, on the 0..1 scale.
    pub mean: Vec<f64>,
    /// Pixel standard deviation per channel, on the 0..1 scale.
    pub std: Vec<f64>,
}

impl Dataset {
    /// Builds a dataset, checking that the sizes agree and every label names a class.
    /// `source` names the file or folder the data came from, for the error message.
    pub fn new(
        source: &std::path::Path,
        images: Vec<u8>,
        labels: Vec<u8>,
        [channels, height, width]: [usize; 3],
        class_names: Vec<String>,
    ) -> Result<Self> {
        let per_image = channels * height * width;
        if per_image == 0 {
            return Err(DataError::format(source, "images have zero size"));
        }
        if images.len() != labels.len() * per_image {
            return Err(DataError::format(
                source,
                format!(
                    "{} labels but {} bytes of {}x{}x{} images ({} images)",
                    labels.len(),
                    images.len(),
                    channels,
                    height,
                    width,
                    images.len() as f64 / per_image as f64
                ),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= class_names.len())
        {
            return Err(DataError::format(
                source,
                format!(
                    "label {l} of image {i} is out of range: there are {} classes",
                    class_names.len()
                ),
            ));
        }
        Ok(Self {
            images,
            labels,
            channels,
            height,
            width,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Bytes per image (C·H·W).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`, C×H×W.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.images[i * s..(i + 1) * s]
    }

    /// Count of images per label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Count, shape, per-class counts and per-channel pixel mean and std (0..1 scale).
    pub fn summary(&self) -> Summary {
        let plane = self.height * self.width;
        let mut sum = vec![0u64; self.channels];
        let mut sum_sq = vec![0u64; self.channels];
        for img in self.images.chunks_exact(self.image_size()) {
            for (c, ch) in img.chunks_exact(plane).enumerate() {
                for &p in ch {
                    sum[c] += p as u64;
                    sum_sq[c] += (p as u64) * (p as u64);
                }
            }
        }
        let n = (self.len() * plane) as f64;
        let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / n / 255.0).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(&sq, &m)| ((sq as f64 / n / 65025.0) - m * m).max(0.0).sqrt())
            .collect();
        Summary {
            count: self.len(),
            shape: [self.channels, self.height, self.width],
            per_class: self
                .class_names
                .iter()
                .cloned()
                .zip(self.class_counts())
                .collect(),
            mean,
            std,
        }
    }

    /// A new dataset holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let s = self.image_size();
        let mut images = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// Images at `indices` as a float tensor N×C×H×W scaled to [-1, 1], and their labels (int64).
    pub fn batch(&self, indices: &[usize], device: Device) -> (Tensor, Tensor) {
        let s = self.image_size();
        let mut bytes = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            bytes.extend_from_slice(self.image(i));
            labels.push(self.labels[i] as i64);
        }
        let x = Tensor::from_slice(&bytes)
            .view([
                indices.len() as i64,
                self.channels as i64,
                self.height as i64,
                self.width as i64,
            ])
            .to_kind(Kind::Float)
            .to_device(device)
            / 127.5
            - 1.0;
        (x, Tensor::from_slice(&labels).to_device(device))
    }

    /// The inverse of [`Dataset::batch`]: float images N×C×H×W in [-1, 1] (clamped, rounded to
    /// the nearest byte) with their labels.
    pub fn from_unit_tensor(
        images: &Tensor,
        labels: Vec<u8>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let size = images.size();
        if size.len() != 4 || size[0] as usize != labels.len() {
            return Err(DataError::format(
                std::path::Path::new("<generated images>"),
                format!(
                    "expected N×C×H×W images for {} labels, got {size:?}",
                    labels.len()
                ),
            ));
        }
        let bytes = ((images
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .clamp(-1.0, 1.0)
            + 1.0)
            * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .contiguous()
            .view([-1]);
        let images = Vec::<u8>::try_from(&bytes).map_err(|e| {
            DataError::format(std::path::Path::new("<generated images>"), e.to_string())
        })?;
        Dataset::new(
            std::path::Path::new("<generated images>"),
            images,
            labels,
            [size[1] as usize, size[2] as usize, size[3] as usize],
            class_names,
        )
    }
}
