//! FID/KID in `evaluate` and `run`: reported when Inception weights are given, a note and no
//! figures without them, and an error naming the path for weights that do not load, before any
//! work is done.

mod common;

use std::path::Path;

use common::dpsynth;
use dpsynth::nn::inception::InceptionV3;

/// An ImageFolder with classes "0".."9", `per_class` flat 28×28 grey images each; its spec.
fn digit_tree(dir: &Path, per_class: usize) -> String {
    let root = dir.join("digits");
    for c in 0..10u8 {
        let class = root.join(c.to_string());
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..per_class {
            image::GrayImage::from_pixel(28, 28, image::Luma([20 * c + i as u8]))
                .save(class.join(format!("{i}.png")))
                .unwrap();
        }
    }
    format!("imagefolder:{}", root.display())
}

/// Inception weights of the right names and shapes (zeros: every image gets the same features).
fn zero_weights(dir: &Path) -> String {
    let file = dir.join("inception.safetensors");
    InceptionV3::new(tch::Device::Cpu).vs.save(&file).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn evaluate_reports_fid_and_kid_with_weights_and_a_note_without() {
    let dir = tempfile::tempdir().unwrap();
    let spec = digit_tree(dir.path(), 2);
    let weights = zero_weights(dir.path());
    let out = dir.path().join("eval");
    std::fs::create_dir_all(&out).unwrap();
    let base = [
        "--threads",
        "1",
        "evaluate",
        "--train",
        &spec,
        "--test",
        &spec,
    ];
    let with = [&base[..], &["--epochs", "1", "--fid-images", "6"]].concat();
    let (code, stdout, stderr) = dpsynth(
        &[
            &with[..],
            &["--inception", &weights, "--out", out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("FID 0.000, KID 0.00000"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["fidelity"]["synthetic_images"], 6);
    assert_eq!(report["fidelity"]["kid"]["subset_size"], 6);
    assert!(report["fidelity"]["fid"].as_f64().unwrap().abs() < 1e-9);

    let (code, stdout, stderr) = dpsynth(&[&with[..], &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("FID/KID not computed"), "{stderr}");
    assert!(!stdout.contains("FID"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report.get("fidelity").is_none());
}

#[test]
fn weights_that_do_not_load_are_named_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    // no data at all: the weights are checked first
    let missing = dir.path().join("pt_inception.safetensors");
    let (code, _, stderr) = dpsynth(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "evaluate",
        "--train",
        "mnist:train",
        "--inception",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("pt_inception.safetensors: no such file"),
        "{stderr}"
    );

    let pth = dir.path().join("pt_inception-2015-12-05-6726825d.pth");
    std::fs::write(&pth, b"pickle").unwrap();
    let config = dir.path().join("run.toml");
    let text = format!(
        "out = \"unused\"\n[private]\ntrain = \"mnist:train\"\ntest = \"mnist:test\"\n\
         [finetune]\nbase = \"models/mnist-base\"\nmode = \"loda\"\nepsilon = 1.0\ndelta = 1e-5\n\
         epochs = 1.0\nbatch = 8\nphysical_batch = 8\n\
         [sample]\nper_class = 1\nsteps = 1\nguidance = 1.0\nseed = 0\n\
         [evaluate]\nepochs = 1\nval_fraction = 0.1\ninception = \"{}\"\n",
        pth.display()
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("run");
    let (code, _, stderr) = dpsynth(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "run",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("6726825d.pth: a PyTorch pickle"),
        "{stderr}"
    );
    assert!(stderr.contains("save_file"), "{stderr}");
}

#[test]
fn run_reports_fid_and_kid_of_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let spec = digit_tree(dir.path(), 2);
    let weights = zero_weights(dir.path());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let config = dir.path().join("run.toml");
    let text = format!(
        "out = \"unused\"\n[private]\ntrain = \"{spec}\"\ntest = \"{spec}\"\n\
         [finetune]\nbase = \"{base}\"\nmode = \"base\"\nepsilon = 1.0\ndelta = 1e-5\n\
         epochs = 1.0\nbatch = 8\nphysical_batch = 8\n\
         [sample]\nper_class = 1\nsteps = 1\nguidance = 1.0\nseed = 0\n\
         [evaluate]\nepochs = 1\nval_fraction = 0.1\ninception = \"{weights}\"\nfid_images = 5\n"
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("run");
    let (code, _, stderr) = dpsynth(&[
        "--threads",
        "1",
        "run",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["fidelity"]["real_images"], 5);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("- fidelity to `imagefolder:"), "{md}");
}
