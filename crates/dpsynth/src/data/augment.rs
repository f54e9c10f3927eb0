//! Standard CIFAR training augmentation on a batch: a random crop of the image padded by `pad`
//! pixels on each side (padding is black, -1 in the [-1, 1] scale of [`super::Dataset::batch`],
//! as torchvision pads the raw image with zeros) and a horizontal flip with probability 1/2.
//! Randomness comes from libtorch's generator (`tch::manual_seed`), so seeded runs repeat.

use tch::{Kind, Tensor};

/// Randomly crops and flips each image of `x` (`[N, C, H, W]`) independently.
pub fn random_crop_flip(x: &Tensor, pad: i64) -> Tensor {
    let [n, _, h, w] = x.size()[..] else {
        return x.shallow_clone();
    };
    let opts = (Kind::Int64, tch::Device::Cpu);
    let padded = x.pad([pad, pad, pad, pad], "constant", -1.0);
    let offsets = Vec::<i64>::try_from(Tensor::randint(2 * pad + 1, [n, 2], opts).view([-1]))
        .expect("int64 offsets");
    let crops: Vec<Tensor> = (0..n)
        .map(|i| {
            let (dy, dx) = (offsets[2 * i as usize], offsets[2 * i as usize + 1]);
            padded.narrow(0, i, 1).narrow(2, dy, h).narrow(3, dx, w)
        })
        .collect();
    let cropped = Tensor::cat(&crops, 0);
    let flip = Tensor::randint(2, [n, 1, 1, 1], opts)
        .to_device(x.device())
        .to_kind(Kind::Bool);
    cropped.flip([3]).where_self(&flip, &cropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_keep_the_shape_and_stay_inside_the_padded_image() {
        tch::manual_seed(1);
        let x = Tensor::rand([6, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        let y = random_crop_flip(&x, 2);
        assert_eq!(y.size(), x.size());
        // every value is an original pixel or the black padding
        let ok = y.eq(-1.0).logical_or(&y.ge(0.0));
        assert!(bool::try_from(ok.all()).unwrap());
        // with no padding, each output is the image or its mirror
        let z = random_crop_flip(&x, 0);
        for i in 0..6 {
            let (zi, xi) = (z.get(i), x.get(i));
            assert!(zi.equal(&xi) || zi.equal(&xi.flip([2])));
        }
    }
}
