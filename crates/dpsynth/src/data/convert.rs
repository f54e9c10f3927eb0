//! Converting a dataset to another shape: channels (RGB to luma with the ITU-R 601 weights
//! that PIL's `convert("L")` and torchvision's `Grayscale` use, or grey replicated to RGB) and size (an antialiased resize of
//! the whole image: a triangle filter whose support grows with the downscaling factor, so a
//! shrink averages areas instead of skipping pixels).

use std::borrow::Cow;

use image::imageops::FilterType;

use super::dataset::Dataset;
use super::imagefolder::to_image;

/// What a conversion did, in words for a log line (`None` when nothing changed).
pub fn describe(from: [usize; 3], to: [usize; 3]) -> Option<String> {
    (from != to).then(|| {
        format!(
            "converted {}x{}x{} images to {}x{}x{} (channels: {}, size: antialiased resize)",
            from[0],
            from[1],
            from[2],
            to[0],
            to[1],
            to[2],
            match (from[0], to[0]) {
                (3, 1) => "luma 0.299 R + 0.587 G + 0.114 B",
                (1, 3) => "grey replicated",
                _ => "kept",
            }
        )
    })
}

/// `ds` in `shape` (`[C, H, W]`): borrowed when it has it, else converted, with what the
/// conversion did for a log line ([`describe`]).
pub fn to_shape(ds: &Dataset, shape: [usize; 3]) -> (Cow<'_, Dataset>, Option<String>) {
    match describe([ds.channels, ds.height, ds.width], shape) {
        Some(what) => (Cow::Owned(convert(ds, shape)), Some(what)),
        None => (Cow::Borrowed(ds), None),
    }
}

/// `ds` with `channels` (1 or 3) channels of `height`×`width` pixels; labels and classes kept.
pub fn convert(ds: &Dataset, [channels, height, width]: [usize; 3]) -> Dataset {
    assert!(channels == 1 || channels == 3, "1 or 3 channels");
    if [ds.channels, ds.height, ds.width] == [channels, height, width] {
        return ds.clone();
    }
    let plane = height * width;
    let mut images = Vec::with_capacity(ds.len() * channels * plane);
    for i in 0..ds.len() {
        let mut img = to_image(ds, i);
        if (ds.height, ds.width) != (height, width) {
            img = img.resize_exact(width as u32, height as u32, FilterType::Triangle);
        }
        if channels == 1 && ds.channels == 3 {
            // ITU-R 601 weights, as PIL and torchvision's Grayscale (the image crate's own
            // to_luma8 uses Rec. 709's)
            images.extend(img.to_rgb8().pixels().map(|p| {
                let [r, g, b] = p.0.map(f32::from);
                (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
            }));
        } else if channels == 1 {
            images.extend_from_slice(img.to_luma8().as_raw());
        } else {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                images.extend(rgb.pixels().map(|p| p.0[c]));
            }
        }
    }
    Dataset {
        images,
        labels: ds.labels.clone(),
        channels,
        height,
        width,
        class_names: ds.class_names.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(channels: usize, h: usize, w: usize, values: &[u8]) -> Dataset {
        let images = values
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, h * w))
            .collect();
        Dataset::new(
            std::path::Path::new("t"),
            images,
            vec![0],
            [channels, h, w],
            vec!["a".into()],
        )
        .unwrap()
    }

    #[test]
    fn colour_to_grey_uses_luma_and_resizing_keeps_flat_fields() {
        let ds = flat(3, 32, 32, &[200, 100, 0]);
        let g = convert(&ds, [1, 28, 28]);
        assert_eq!((g.channels, g.height, g.width), (1, 28, 28));
        // 0.299 * 200 + 0.587 * 100 = 118.5; libraries round it either way
        assert!(
            g.images.iter().all(|&v| v.abs_diff(118) <= 1),
            "{:?}",
            &g.images[..4]
        );
        let back = convert(&g, [3, 32, 32]);
        assert_eq!(back.images.len(), 3 * 32 * 32);
        assert!(back.images.iter().all(|&v| v.abs_diff(118) <= 1));
        assert_eq!(convert(&ds, [3, 32, 32]), ds);
        assert!(describe([3, 32, 32], [3, 32, 32]).is_none());
        assert!(describe([3, 32, 32], [1, 28, 28]).unwrap().contains("luma"));
    }
}
