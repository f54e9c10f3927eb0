//! Every reader of outside input, fed random bytes and damaged copies of valid files: it must
//! return an error or a value, never panic. Inputs come from a seeded ChaCha generator (the same
//! inputs on every machine): per reader, `ROUNDS` inputs, half random bytes of random length,
//! half a valid file with random byte flips, truncation or appended junk. The count is bounded,
//! so the test stops by itself.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use dpsynth::data::{
    acquire::woff, cifar, class_map, idx, imagefolder, optdigits, tiny_imagenet, Dataset,
};
use dpsynth::nn::unet::{UNet, UNetConfig};
use dpsynth::train::pretrain::PretrainConfig;

mod common;

/// Inputs per reader.
const ROUNDS: usize = 300;

/// A damaged copy of `valid`, or random bytes.
fn input(rng: &mut ChaCha8Rng, valid: &[u8]) -> Vec<u8> {
    if rng.gen_bool(0.5) || valid.is_empty() {
        let len = rng.gen_range(0..2048);
        return (0..len).map(|_| rng.gen()).collect();
    }
    let mut v = valid.to_vec();
    match rng.gen_range(0..3) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
        }
        1 => v.truncate(rng.gen_range(0..v.len())),
        _ => v.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
    }
    v
}

/// Feeds `ROUNDS` inputs derived from `valid` to `read` (which gets the path of a file holding
/// them) and returns how many it accepted; panics if any input made `read` panic.
fn fuzz(name: &str, seed: u64, valid: &[u8], read: impl Fn(&Path) -> bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut accepted = 0;
    let mut panics = Vec::new();
    for round in 0..ROUNDS {
        let bytes = input(&mut rng, valid);
        std::fs::write(&path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read(&path))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panics.push(round),
        }
    }
    assert!(panics.is_empty(), "{name}: panicked on rounds {panics:?}");
    accepted
}

fn valid_idx_images() -> Vec<u8> {
    idx::encode_images(3, 4, 4, &(0..48).collect::<Vec<u8>>())
}

#[test]
fn idx_images_and_labels() {
    let labels_dir = tempfile::tempdir().unwrap();
    let labels = labels_dir.path().join("labels");
    std::fs::write(&labels, idx::encode_labels(&[0, 1, 2])).unwrap();
    fuzz("idx images", 1, &valid_idx_images(), |p| {
        idx::read_idx_pair(p, &labels).is_ok()
    });
    let images = labels_dir.path().join("images");
    std::fs::write(&images, valid_idx_images()).unwrap();
    fuzz("idx labels", 2, &idx::encode_labels(&[0, 1, 2]), |p| {
        idx::read_idx_pair(&images, p).is_ok()
    });
    fuzz("gzip", 3, &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3], |p| {
        idx::read_maybe_gz(p).is_ok()
    });
}

#[test]
fn cifar_records() {
    let ds = Dataset::new(
        Path::new("v"),
        vec![7; 2 * 3072],
        vec![1, 9],
        [3, 32, 32],
        (0..10).map(|c| c.to_string()).collect(),
    )
    .unwrap();
    let valid = cifar::encode_records(&ds);
    fuzz("cifar", 4, &valid, |p| {
        cifar::read_batches(&[p.to_path_buf()]).is_ok()
    });
}

#[test]
fn image_files_in_an_imagefolder() {
    let mut png = Vec::new();
    image::GrayImage::from_pixel(6, 5, image::Luma([90]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut jpg = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([9, 80, 200]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    for (seed, valid, ext) in [(5, png, "png"), (6, jpg, "jpg")] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tree/a").join(format!("0.{ext}"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        fuzz(ext, seed, &valid, |p| {
            std::fs::copy(p, &file).unwrap();
            imagefolder::read(&dir.path().join("tree")).is_ok()
        });
    }
}

#[test]
fn text_tables_and_configs() {
    let map = b"cat = [\"tabby\"]\nhorse = []\n";
    fuzz("class map", 7, map, |p| class_map::load(p).is_ok());
    fuzz("classes.tsv", 8, b"n1\ttabby, cat\nn2\tsports car\n", |p| {
        tiny_imagenet::read_classes(p).is_ok()
    });
    let digit: String = (0..64).map(|i| format!("{},", i % 17)).collect::<String>() + "3\n";
    fuzz("optdigits csv", 9, digit.as_bytes(), |p| {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        optdigits::parse(p, &text).is_ok()
    });
    let pretrain = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/mnist-base.toml"
    ))
    .unwrap();
    fuzz("pretraining config", 10, &pretrain, |p| {
        PretrainConfig::load(p).is_ok()
    });
    let unet = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/mnist-base/config.json"
    ))
    .unwrap();
    fuzz("U-Net config", 11, &unet, |p| UNetConfig::load(p).is_ok());
}

#[test]
fn woff_fonts() {
    // a minimal well-formed WOFF header with one stored table
    let mut valid = Vec::new();
    for v in [0x774F_4646u32, 0x0001_0000, 68] {
        valid.extend(v.to_be_bytes());
    }
    valid.extend(1u16.to_be_bytes());
    valid.extend([0u8; 2]);
    valid.extend(16u32.to_be_bytes());
    valid.extend([0u8; 24]);
    for v in [u32::from_be_bytes(*b"head"), 64, 4, 4, 0] {
        valid.extend(v.to_be_bytes());
    }
    valid.extend([1, 2, 3, 4]);
    fuzz("woff", 12, &valid, |p| {
        woff::to_sfnt(p, &std::fs::read(p).unwrap()).is_ok()
    });
}

#[test]
fn model_weights() {
    let cfg = UNetConfig::from_json(
        r#"{"sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [4, 8], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 4, "num_class_embeds": 3}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unet = UNet::new(cfg.clone(), tch::Device::Cpu).unwrap();
    unet.save(dir.path()).unwrap();
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    let valid = std::fs::read(&weights).unwrap();
    fuzz("safetensors weights", 13, &valid, |p| {
        let fresh = UNet::new(cfg.clone(), tch::Device::Cpu).unwrap();
        fresh.load_weights(p).is_ok()
    });
}

#[test]
fn checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let tensors = vec![(
        "w".to_string(),
        tch::Tensor::ones([3], tch::kind::FLOAT_CPU),
    )];
    let state = serde_json::json!({"step": 4, "losses": [0.5, 0.25]});
    dpsynth::train::checkpoint::save(&ckpt, 4, &state, &tensors).unwrap();
    let json = ckpt.join(dpsynth::train::checkpoint::STATE_FILE);
    let valid_json = std::fs::read(&json).unwrap();
    fuzz("checkpoint state", 14, &valid_json, |p| {
        std::fs::copy(p, &json).unwrap();
        dpsynth::train::checkpoint::load::<serde_json::Value>(&ckpt).is_ok()
    });
    std::fs::write(&json, &valid_json).unwrap();
    let tensor_file = ckpt.join("tensors-000000004.safetensors");
    let valid_tensors = std::fs::read(&tensor_file).unwrap();
    fuzz("checkpoint tensors", 15, &valid_tensors, |p| {
        std::fs::copy(p, &tensor_file).unwrap();
        dpsynth::train::checkpoint::load::<serde_json::Value>(&ckpt).is_ok()
    });
}

#[test]
fn sampling_progress_files() {
    use dpsynth::diffusion::sampler::SamplerConfig;
    use dpsynth::synth::resume::{progress_file, Sampling};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_base(&dir.path().join("base"));
    let model = dpsynth::synth::load_model_dir(&dir.path().join("base"), tch::Device::Cpu).unwrap();
    let cfg = SamplerConfig {
        batch_size: 2,
        ..SamplerConfig::ddpm(2, 1.0)
    };
    let out = dir.path().join("out");
    let mut sampling = Sampling::open(&model, 1, &cfg, 0, &out, 2).unwrap();
    sampling.sample_part(&mut |_| {}).unwrap();
    let file = progress_file(&out);
    let valid = std::fs::read(&file).unwrap();
    fuzz("sampling progress", 17, &valid, |p| {
        std::fs::copy(p, &file).unwrap();
        Sampling::open(&model, 1, &cfg, 0, &out, 2).is_ok()
    });
}

/// The harness itself: a reader that panics on some inputs fails the test.
#[test]
#[should_panic(expected = "panicked on rounds")]
fn a_panicking_reader_is_caught() {
    fuzz("panicky", 16, b"valid", |p| {
        assert!(std::fs::read(p).unwrap().len() < 1000, "boom");
        true
    });
}
