//! Resumable sampling ([`dpsynth::synth::resume`]): a sampling stopped after some parts and
//! resumed from its progress file gives the images of an uninterrupted one; a progress file
//! made with other settings, or damaged, is an error naming the file (and the setting), never
//! a panic, and is left as it was.

use std::path::Path;

use dpsynth::diffusion::sampler::SamplerConfig;
use dpsynth::synth::resume::{self, progress_file, Sampling};
use dpsynth::synth::{generate, load_model_dir, ModelDir};
use tch::{Device, Kind, Tensor};

mod common;
use common::tiny_base;

/// Images per class of the tiny base's 4 classes: 12 images.
const PER_CLASS: usize = 3;

/// DDPM (fresh noise at every step: the images depend on each image's noise stream), 5 steps,
/// guidance 2, batches of `batch`.
fn sampler(batch: usize) -> SamplerConfig {
    SamplerConfig {
        batch_size: batch,
        ..SamplerConfig::ddpm(5, 2.0)
    }
}

fn tiny_model(dir: &Path) -> ModelDir {
    tiny_base(&dir.join("base"));
    load_model_dir(&dir.join("base"), Device::Cpu).unwrap()
}

/// A progress file in `out` holding the first part (4 images) of seed 7.
fn one_part(model: &ModelDir, out: &Path) -> Vec<u8> {
    let mut s = Sampling::open(model, PER_CLASS, &sampler(2), 7, out, 4).unwrap();
    assert_eq!(s.sample_part(&mut |_| {}).unwrap(), 4);
    std::fs::read(progress_file(out)).unwrap()
}

/// The largest difference between two images' bytes, in grey levels.
fn max_difference(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn interrupted_sampling_resumes_to_the_uninterrupted_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let whole = generate(&model, PER_CLASS, &sampler(2), 7, &mut |_| {}).unwrap();
    assert_eq!(whole.len(), 12);

    // two parts of 4 images, then the process "dies"
    let out = dir.path().join("out");
    let mut s = Sampling::open(&model, PER_CLASS, &sampler(2), 7, &out, 4).unwrap();
    assert_eq!((s.resumed(), s.done(), s.total()), (0, 0, 12));
    assert_eq!(s.sample_part(&mut |_| {}).unwrap(), 4);
    assert_eq!(s.sample_part(&mut |_| {}).unwrap(), 8);
    drop(s);

    // the progress file is a safetensors file of the 8 finished images
    let file = progress_file(&out);
    let tensors = Tensor::read_safetensors(&file).unwrap();
    assert_eq!(tensors.len(), 1);
    let (name, saved) = &tensors[0];
    assert_eq!(name, "images");
    assert_eq!(
        (saved.size(), saved.kind()),
        (vec![8, 3, 8, 8], Kind::Uint8)
    );
    let saved = Vec::<u8>::try_from(saved.view([-1])).unwrap();
    assert_eq!(saved, whole.images[..8 * 192]);

    // resumed with batches of 3 (the batch size is not a setting: each image has its own noise)
    let mut seen = Vec::new();
    let s = Sampling::open(&model, PER_CLASS, &sampler(3), 7, &out, 4).unwrap();
    assert_eq!((s.resumed(), s.done()), (8, 8));
    let resumed = s.run(&mut |n| seen.push(n)).unwrap();
    assert_eq!(seen, [11, 12], "progress counts the resumed images");
    assert!(resumed.seconds >= 0.0);
    let resumed = resumed.dataset;
    assert_eq!(resumed.labels, whole.labels);
    assert_eq!(resumed.class_names, whole.class_names);
    // The same code path computes each image from the same noise stream, so the bytes should
    // be equal; a tolerance of one grey level is kept, as for every comparison of floating
    // point results here: the last images went through batches of another size, whose
    // kernels may sum in another order and round a pixel lying at .5 the other way.
    let diff = max_difference(&resumed.images, &whole.images);
    assert!(diff <= 1, "resumed images differ by {diff} grey levels");

    // the file keeps all 12 until the samples are written; then it and its folder go
    let s = Sampling::open(&model, PER_CLASS, &sampler(2), 7, &out, 4).unwrap();
    assert_eq!(s.resumed(), 12);
    let again = s.run(&mut |_| panic!("nothing is left to sample")).unwrap();
    assert_eq!(again.dataset.images, resumed.images);
    resume::remove(&out).unwrap();
    assert!(!file.exists() && !out.join("sampling").exists());
    resume::remove(&out).unwrap(); // no file is no error
}

#[test]
fn progress_from_other_settings_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let bytes = one_part(&model, &out);
    let file = progress_file(&out);
    let refusal = |model: &ModelDir, per_class: usize, cfg: SamplerConfig, seed: u64| {
        let err = Sampling::open(model, per_class, &cfg, seed, &out, 4)
            .err()
            .expect("other settings are refused");
        format!("{err:#}")
    };
    for (msg, setting) in [
        (
            refusal(&model, PER_CLASS, sampler(2), 8),
            "seed is 7 there and 8 now",
        ),
        (
            refusal(&model, PER_CLASS, SamplerConfig::ddpm(6, 2.0), 7),
            "steps is 5 there and 6 now",
        ),
        (
            refusal(&model, PER_CLASS, SamplerConfig::ddim(5, 2.0), 7),
            "sampler is \"ddpm\" there",
        ),
        (
            refusal(&model, PER_CLASS, SamplerConfig::ddpm(5, 1.5), 7),
            "guidance is 2.0 there and 1.5 now",
        ),
        (
            refusal(&model, 4, sampler(2), 7),
            "per_class is 3 there and 4 now",
        ),
    ] {
        assert!(msg.starts_with(&file.display().to_string()), "{msg}");
        assert!(msg.contains(setting), "{setting}: {msg}");
        assert!(
            !msg.contains("seed is") || setting.starts_with("seed"),
            "{msg}"
        );
    }
    // other weights (one changed value) are another model
    let other = load_model_dir(&dir.path().join("base"), Device::Cpu).unwrap();
    tch::no_grad(|| {
        let vars = other.unet.vs.variables();
        let mut first = vars["conv_out.bias"].get(0);
        let _ = first.f_add_scalar_(1e-3).unwrap();
    });
    let msg = refusal(&other, PER_CLASS, sampler(2), 7);
    assert!(msg.contains("model_sha256 is \""), "{msg}");
    assert!(!msg.contains("seed is"), "{msg}");
    // never overwritten
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
}

#[test]
fn damaged_progress_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let good = one_part(&model, &out);
    let file = progress_file(&out);
    let name = file.display().to_string();
    let open = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        Sampling::open(&model, PER_CLASS, &sampler(2), 7, &out, 4).map(|s| s.resumed())
    };
    assert_eq!(open(&good).unwrap(), 4);
    let header_len = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut more = good.clone();
    more.extend_from_slice(&[0; 192]); // a fifth image the header does not count
                                       // a later format version (the same length)
    let mut wrong_format = good.clone();
    let version = good
        .windows(19)
        .position(|w| w == b"sampling progress 1")
        .expect("the format in the header")
        + 18;
    wrong_format[version] = b'9';
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("5 bytes", good[..5].to_vec()),
        ("header cut", good[..header_len - 10].to_vec()),
        ("data cut", good[..header_len + 100].to_vec()),
        ("last byte cut", good[..good.len() - 1].to_vec()),
        ("huge header length", huge),
        ("extra data", more),
        ("other format", wrong_format),
        (
            "not JSON",
            [
                &good[..8],
                &vec![b'x'; header_len - 8][..],
                &good[header_len..],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let msg = format!(
            "{:#}",
            open(&bytes)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"))
        );
        assert!(msg.starts_with(&name), "{what}: {msg}");
        let why = match what {
            "other format" => "format 'dpsynth sampling progress 9'",
            "not JSON" => "header:",
            "extra data" | "data cut" | "last byte cut" => "truncated or damaged",
            _ => "",
        };
        assert!(msg.contains(why), "{what}: {msg}");
    }
    // every truncation and every flipped header byte: an error naming the file or, where the
    // byte does not matter (padding), the 4 images; never a panic
    for cut in 0..good.len() {
        let r = open(&good[..cut]);
        let msg = format!(
            "{:#}",
            r.err().unwrap_or_else(|| panic!("cut at {cut}: accepted"))
        );
        assert!(msg.starts_with(&name), "cut at {cut}: {msg}");
    }
    for at in 0..header_len {
        let mut bytes = good.clone();
        bytes[at] ^= 0x55;
        match open(&bytes) {
            Ok(resumed) => assert_eq!(resumed, 4, "byte {at} flipped"),
            Err(e) => assert!(format!("{e:#}").starts_with(&name), "byte {at}: {e:#}"),
        }
    }
}
