//! `dpsynth sample` and `dpsynth run` resume the progress file an interrupted sampling left in
//! the output folder (`sampling/partial.safetensors`): they say so, sample only the images after
//! it, write the images of an uninterrupted run and remove the file; a file from other settings
//! is refused by name, and a finished folder is still refused.

use std::path::{Path, PathBuf};

use dpsynth::diffusion::precision::{Precision, PrecisionChoice};
use dpsynth::diffusion::sampler::{SamplerChoice, SamplerConfig};
use dpsynth::nn::unet::{UNet, UNetConfig};
use dpsynth::synth::resume::{progress_file, Sampling};
use dpsynth::synth::{load_model_dir, save_extras, SchedulerConfig};
use tch::Device;

mod common;
use common::dpsynth;

/// A tiny grey 16×16 U-Net (the downstream classifier takes 16×16 or more) with classes `x`
/// and `y` (and the null class) in `dir`.
fn tiny_model(dir: &Path) {
    let config = UNetConfig::from_json(
        r#"{"sample_size": 16, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [8, 16], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 4, "num_class_embeds": 3}"#,
    )
    .unwrap();
    UNet::new(config, Device::Cpu).unwrap().save(dir).unwrap();
    let sched: SchedulerConfig =
        serde_json::from_str(r#"{"beta_schedule": "linear", "num_train_timesteps": 1000}"#)
            .unwrap();
    save_extras(dir, &sched, &["x".to_string(), "y".to_string()]).unwrap();
}

/// Saves the first 4 of the 12 images (6 per class) the commands sample from the model in
/// `model` with seed 0, DDPM over 3 steps, guidance 1, in the commands' default precision on this
/// machine (as an interrupted run leaves them) in `out`'s progress file; returns the file.
fn interrupted(model: &Path, out: &Path) -> PathBuf {
    let mut loaded = load_model_dir(model, Device::Cpu).unwrap();
    let cfg = SamplerConfig {
        precision: PrecisionChoice::Auto.resolve(Device::Cpu),
        ..SamplerChoice::Ddpm.config(3, 1.0, 2, 0.0)
    };
    loaded.set_precision(cfg.precision);
    let mut s = Sampling::open(&loaded, 6, &cfg, 0, out, 4).unwrap();
    assert_eq!(s.sample_part(&mut |_| {}).unwrap(), 4);
    progress_file(out)
}

/// Asserts that the images under `a` and `b` are the same, file for file.
fn same_images(a: &Path, b: &Path) {
    let (a, b) = (pixels(a), pixels(b));
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    for ((name_a, a), (name_b, b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        // the same code path from the same noise streams: equal bytes expected, one grey level
        // allowed as for every comparison of floating-point results
        let diff = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(diff <= 1, "{name_a} differs by {diff}");
    }
}

/// The line that says a sampling resumes after 4 of 12 images from `file`.
fn resumed_line(file: &Path) -> String {
    format!(
        "== sampling: resuming after 4 of 12 images ({})",
        file.display()
    )
}

/// The pixels of every PNG under `root`, by path relative to it.
fn pixels(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    for class in ["x", "y"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let img = image::open(&p).unwrap().into_luma8().into_raw();
            all.push((p.strip_prefix(root).unwrap().display().to_string(), img));
        }
    }
    all
}

#[test]
fn sample_resumes_its_progress_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let args = |out: &Path, seed: &str| -> Vec<String> {
        let m = model.display().to_string();
        let o = out.display().to_string();
        [
            "--threads",
            "1",
            "sample",
            "--model",
            &m,
            "--per-class",
            "6",
            "--steps",
            "3",
            "--batch",
            "2",
            "--seed",
            seed,
            "--out",
            &o,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String]| dpsynth(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let whole = dir.path().join("whole");
    let (code, _, err) = run(&args(&whole, "0"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("resuming"), "{err}");
    assert!(!whole.join("sampling").exists());

    // an interrupted sampling
    let resumed = dir.path().join("resumed");
    let file = interrupted(&model, &resumed);
    let saved = std::fs::read(&file).unwrap();

    // another seed: refused by name, the file kept
    let (code, _, err) = run(&args(&resumed, "1"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("seed is 0 there and 1 now"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), saved);
    assert!(!resumed.join("images").exists());

    // another precision: refused by name too (the file's is the default's on this machine)
    let (here, other) = match PrecisionChoice::Auto.resolve(Device::Cpu) {
        Precision::Float32 => ("float32", "bfloat16"),
        Precision::Bfloat16 => ("bfloat16", "float32"),
    };
    let mut with_other = args(&resumed, "0");
    with_other.extend(["--precision".to_string(), other.to_string()]);
    let (code, _, err) = run(&with_other);
    assert_eq!(code, 1, "{err}");
    let named = format!("precision is \"{here}\" there and \"{other}\" now");
    assert!(err.contains(&named), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), saved);

    // the same settings: resumed after the 4 images, the file removed once the images are out
    let (code, _, err) = run(&args(&resumed, "0"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&resumed_line(&file)), "{err}");
    assert!(!resumed.join("sampling").exists());
    same_images(&whole.join("images"), &resumed.join("images"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["images"], 12);

    // a finished folder is still refused
    let (code, _, err) = run(&args(&resumed, "0"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds images/"), "{err}");
}

#[test]
fn run_resumes_its_sampling_progress_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    // a test set of the model's classes: mode "base" samples the model as it is
    let data = dir.path().join("data");
    for (class, v) in [("x", 40u8), ("y", 200)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..4u8 {
            image::GrayImage::from_pixel(16, 16, image::Luma([v + i]))
                .save(data.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let config = dir.path().join("run.toml");
    let spec = format!("imagefolder:{}", data.display());
    let text = format!(
        "out = \"unused\"\n[private]\ntrain = \"{spec}\"\ntest = \"{spec}\"\n\
         [finetune]\nbase = \"{}\"\nmode = \"base\"\nepsilon = 1.0\ndelta = 1e-5\n\
         epochs = 1.0\nbatch = 8\nphysical_batch = 8\n\
         [sample]\nper_class = 6\nsteps = 3\nguidance = 1.0\nseed = 0\n\
         [evaluate]\nepochs = 1\nval_fraction = 0.25\n",
        model.display()
    );
    std::fs::write(&config, text).unwrap();
    let run = |out: &Path| {
        let (c, o) = (config.display().to_string(), out.display().to_string());
        dpsynth(&["--threads", "1", "run", "--config", &c, "--out", &o])
    };

    let whole = dir.path().join("whole");
    let (code, _, err) = run(&whole);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("resuming"), "{err}");

    let resumed = dir.path().join("resumed");
    let file = interrupted(&model, &resumed);
    let (code, _, err) = run(&resumed);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&resumed_line(&file)), "{err}");
    assert!(!resumed.join("sampling").exists());
    same_images(&whole.join("samples"), &resumed.join("samples"));
    assert!(resumed.join("report.json").is_file());

    // a run stopped after writing its samples is refused at once, not after sampling again
    std::fs::remove_file(resumed.join("report.json")).unwrap();
    let (code, _, err) = run(&resumed);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("holds the samples of a run that stopped after sampling"),
        "{err}"
    );
}
