//! The font-digit generator, on the one small OFL font committed as a fixture (Humor Sans).

use std::path::Path;

use dpsynth::data::acquire::font_digits::{generate, load_fonts, SIZE};

fn fonts_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fonts"))
}

#[test]
fn repeatable_with_a_seed_and_different_across_seeds() {
    let fonts = load_fonts(fonts_dir()).unwrap();
    assert_eq!(fonts.len(), 1);
    let a = generate(&fonts, 40, 7, None);
    let b = generate(&fonts, 40, 7, None);
    let c = generate(&fonts, 40, 8, None);
    assert_eq!(a, b);
    assert_ne!(a.images, c.images);
    assert!(a.labels.iter().all(|&l| l < 10));
}

#[test]
fn digits_are_mnist_normalised() {
    let fonts = load_fonts(fonts_dir()).unwrap();
    let ds = generate(&fonts, 60, 1, None);
    assert_eq!((ds.channels, ds.height, ds.width), (1, SIZE, SIZE));
    for i in 0..ds.len() {
        let img = ds.image(i);
        assert_eq!(
            *img.iter().max().unwrap(),
            255,
            "image {i} is not full intensity"
        );
        let (mut sum, mut cx, mut cy) = (0.0, 0.0, 0.0);
        let (mut x0, mut x1, mut y0, mut y1) = (SIZE, 0, SIZE, 0);
        for y in 0..SIZE {
            for x in 0..SIZE {
                let v = img[y * SIZE + x] as f64;
                if v > 0.0 {
                    (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
                }
                sum += v;
                cx += v * (x as f64 + 0.5);
                cy += v * (y as f64 + 0.5);
            }
        }
        let (cx, cy) = (cx / sum, cy / sum);
        // centre of mass at the centre (up to the intensity rescaling and clipping at 0)
        assert!(
            (cx - 14.0).abs() < 1.0 && (cy - 14.0).abs() < 1.0,
            "image {i}: com ({cx}, {cy})"
        );
        // the longer side fits the 20-pixel box, plus anti-aliasing and thickening at the edges
        let extent = (x1 - x0 + 1).max(y1 - y0 + 1);
        assert!((12..=24).contains(&extent), "image {i}: extent {extent}");
    }
}

#[test]
fn missing_font_folder_is_an_error() {
    let msg = load_fonts(Path::new("/no/fonts/here"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("dpsynth data fetch fonts"), "{msg}");
}

#[test]
fn shipped_pretraining_config_loads() {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/mnist-base-fonts.toml"
    ));
    let cfg = dpsynth::train::pretrain::PretrainConfig::load(p).unwrap();
    assert_eq!(cfg.model.num_class_embeds, Some(11));
    assert_eq!(cfg.data[0].spec, "font-digits:train");
}
