//! Seeded Gaussian noise for the samplers, independent of libtorch's global generator.
//!
//! Each image owns a ChaCha8 stream (`seed`, stream = image index), so an image's noise does not
//! depend on which batch it is drawn in nor on the device, and other users of torch's global
//! RNG cannot disturb a seeded run.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

/// Per-image Gaussian noise streams.
#[derive(Debug, Clone)]
pub struct ImageNoise {
    rngs: Vec<ChaCha8Rng>,
    shape: [i64; 3],
}

impl ImageNoise {
    /// Streams for the images `first..first + count` of a run seeded with `seed`, each image of
    /// shape `shape` (`[C, H, W]`).
    pub fn new(seed: u64, first: usize, count: usize, shape: [i64; 3]) -> Self {
        let indices: Vec<usize> = (first..first + count).collect();
        Self::for_images(seed, &indices, shape)
    }

    /// Streams for the images at `indices`, in that order: image `i` gets the same stream as in
    /// [`ImageNoise::new`], wherever it stands in the list.
    pub fn for_images(seed: u64, indices: &[usize], shape: [i64; 3]) -> Self {
        let rngs = indices
            .iter()
            .map(|&i| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64);
                rng
            })
            .collect();
        Self { rngs, shape }
    }

    /// The next standard normal draw for every image, as float32 `[count, C, H, W]` on `device`.
    pub fn next(&mut self, device: Device) -> Tensor {
        let per_image = self.shape.iter().product::<i64>() as usize;
        let mut data = Vec::with_capacity(per_image * self.rngs.len());
        for rng in &mut self.rngs {
            fill_standard_normal(rng, per_image, &mut data);
        }
        let [c, h, w] = self.shape;
        Tensor::from_slice(&data)
            .view([self.rngs.len() as i64, c, h, w])
            .to_device(device)
    }
}

/// Appends `n` standard normal f32 draws to `out` (Box–Muller on the stream).
fn fill_standard_normal(rng: &mut ChaCha8Rng, n: usize, out: &mut Vec<f32>) {
    let mut left = n;
    while left > 0 {
        // 1 - U keeps the log's argument in (0, 1]
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((r * c) as f32);
        if left > 1 {
            out.push((r * s) as f32);
        }
        left -= left.min(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn streams_are_per_image() {
        let mut all = ImageNoise::new(7, 0, 3, [1, 3, 3]);
        let mut last = ImageNoise::new(7, 2, 1, [1, 3, 3]);
        let a = all.next(Device::Cpu);
        let b = last.next(Device::Cpu);
        assert_eq!(a.get(2), b.get(0));
        assert_ne!(a.get(0), a.get(1));
    }

    #[test]
    fn roughly_standard_normal() {
        let mut n = ImageNoise::new(1, 0, 1, [1, 200, 200]);
        let x = n.next(Device::Cpu);
        let mean = x.mean(Kind::Double).double_value(&[]);
        let std = x.std(true).double_value(&[]);
        assert!(
            mean.abs() < 0.02 && (std - 1.0).abs() < 0.02,
            "{mean} {std}"
        );
    }
}
