//! Fine-tuning from an unconditional base (a diffusers `UNet2DModel` without `num_class_embeds`,
//! as most public DDPM checkpoints are): the class table fine-tuning adds starts at zero, so the
//! prepared model predicts what the base does; every mode trains it and saves a
//! class-conditional folder that dpsynth loads back; sampling and scoring the base alone are
//! refused with a message that says what to do; and against diffusers, a base saved by
//! `save_pretrained` and the folder dpsynth fine-tuned from it compute what diffusers computes.
//!
//! The diffusers fixture under `tests/data/unconditional_base/` is written by
//! `scripts/fixtures/unconditional_base.py` (run by hand; these tests never need Python).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dpsynth::data::{imagefolder, Dataset};
use dpsynth::nn::unet::UNet;
use dpsynth::synth::load_model_dir;
use dpsynth::train::class_table::RowStart;
use dpsynth::train::clip_scan::{clip_pass, ClipScanConfig};
use dpsynth::train::finetune::{finetune, prepare, FinetuneConfig, Mode};
use tch::{Device, Kind, Tensor};

mod common;
use common::{finetune_config, tiny_unconditional_base};

/// The prepared model adds a zero class row to the time embedding: `x + 0.0 == x` exactly in
/// IEEE arithmetic, zero-initialised adapters (`B = 0`) add exact zeros too, and the rest of the
/// forward runs the same kernels on the same values in the same process, so the outputs should
/// be bit-identical (measured: 0 in every mode, on CPU). The bound is a few float32 ulps at
/// outputs of order 1, to allow libtorch another kernel or summation order on another device,
/// while a non-zero class row moves ε by orders of magnitude more (`CLASS_EFFECT`).
const ZERO_TABLE_TOLERANCE: f64 = 1e-6;

/// dpsynth against diffusers in float32: kernels and summation orders differ, each rounding at
/// about 1e-7 relative, over the ~30 layers of the tiny U-Net; 1e-4 is the bound of
/// `unet_parity.rs` and `export_parity.rs`, far below what the class embedding and the adapters
/// move ε by (`meta.json`: 0.13 and 0.32).
const DIFFUSERS_TOLERANCE: f64 = 1e-4;

/// The least max |ε(class) − ε(null)| on one input that the fine-tuned fixture must show, so
/// that a side which ignored the class embedding could not pass.
const CLASS_EFFECT: f64 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/unconditional_base")
        .join(name)
}

fn read(file: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

const CLASSES: [&str; 3] = ["ant", "bee", "cow"];

fn class_names() -> Vec<String> {
    CLASSES.map(String::from).to_vec()
}

/// A private set as the user brings it: an ImageFolder of 12 random `channels`×8×8 images in
/// three classes, written to `root` and read back through its dataset spec.
fn private_folder(root: &Path, channels: usize) -> Dataset {
    let n = 12;
    tch::manual_seed(1);
    let pixels = Tensor::randint(
        256,
        [(n * channels * 64) as i64],
        (Kind::Int64, Device::Cpu),
    );
    let images: Vec<u8> = Vec::<i64>::try_from(pixels)
        .unwrap()
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let ds = Dataset::new(root, images, labels, [channels, 8, 8], class_names()).unwrap();
    imagefolder::write(&ds, root).unwrap();
    let spec = format!("imagefolder:{}", root.display());
    dpsynth::data::load(&spec, Path::new("data")).unwrap()
}

/// Fixed inputs: 4 noisy images at four timesteps, labels 0..=3 (3 is the null class).
fn inputs(channels: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(2);
    let x = Tensor::randn([4, channels, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 10, 500, 999]);
    (x, t, Tensor::from_slice(&[0i64, 1, 2, 3]))
}

#[test]
fn zero_class_table_predicts_what_the_base_does() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_unconditional_base(&base);
    let (x, t, labels) = inputs(3);
    let reference = UNet::load(&base, Device::Cpu).unwrap();
    assert!(reference.class_embedding.is_none());
    let want = tch::no_grad(|| reference.forward(&x, &t, &labels));
    let private = class_names();
    for mode in [Mode::Loda, Mode::Lora, Mode::Attention, Mode::Full] {
        let tr = prepare(&base, &finetune_config(mode), Some(&private), Device::Cpu).unwrap();
        let unet = &tr.model.unet;
        assert_eq!(unet.num_class_embeds(), Some(4), "{mode}");
        assert_eq!(tr.class_rows, Some(vec![RowStart::Null; 3]), "{mode}");
        assert_eq!(tr.model.classes, private, "{mode}");
        let table = &unet.vs.variables()["class_embedding.weight"];
        assert_eq!(table.abs().max().double_value(&[]), 0.0, "{mode}");
        assert!(
            tr.trainable
                .iter()
                .any(|(k, _)| k == "class_embedding.weight"),
            "{mode}: the class embedding is not trained"
        );
        let got = tch::no_grad(|| unet.forward(&x, &t, &labels));
        let diff = max_abs_diff(&got, &want);
        println!("{mode}: max |eps - base eps| = {diff:.3e}");
        assert!(diff <= ZERO_TABLE_TOLERANCE, "{mode}: {diff}");
    }
    // clip-scan prepares without private classes: the null row alone, zero, and trained
    let tr = prepare(&base, &finetune_config(Mode::Loda), None, Device::Cpu).unwrap();
    assert_eq!(tr.model.unet.num_class_embeds(), Some(1));
    let null = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let got = tch::no_grad(|| tr.model.unet.forward(&x, &t, &null));
    assert!(max_abs_diff(&got, &want) <= ZERO_TABLE_TOLERANCE);
}

#[test]
fn every_mode_fine_tunes_an_unconditional_base_into_a_class_conditional_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_unconditional_base(&base);
    let data = private_folder(&tmp.path().join("private"), 3);
    for mode in [Mode::Loda, Mode::Lora, Mode::Attention, Mode::Full] {
        let out = tmp.path().join(mode.to_string());
        let done = finetune(
            &base,
            &data,
            &finetune_config(mode),
            &out,
            false,
            Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(done.class_rows, Some(vec![RowStart::Null; 3]), "{mode}");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(done.model_dir.join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["num_class_embeds"], 4, "{mode}");
        assert_eq!(cfg["_class_name"], "UNet2DModel", "{mode}");
        let weights = read(&done.model_dir.join("diffusion_pytorch_model.safetensors"));
        let table = &weights["class_embedding.weight"];
        assert_eq!(table.size(), [4, 32], "{mode}");
        // the private classes' rows were learned away from zero
        let moved = table
            .narrow(0, 0, 3)
            .abs()
            .sum_dim_intlist(1, false, Kind::Double);
        for c in 0..3 {
            assert!(moved.double_value(&[c]) > 0.0, "{mode}: class {c} at zero");
        }
        let model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
        assert_eq!(model.classes, class_names(), "{mode}");
        assert_eq!(model.unet.null_class(), Some(3), "{mode}");
        assert_eq!(
            model.adapter.is_some(),
            matches!(mode, Mode::Loda | Mode::Lora),
            "{mode}"
        );
    }
}

#[test]
fn a_frozen_class_embedding_is_refused_naming_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_unconditional_base(&base);
    let cfg = FinetuneConfig {
        train_class_embedding: false,
        ..finetune_config(Mode::Loda)
    };
    let err = prepare(&base, &cfg, Some(&class_names()), Device::Cpu)
        .err()
        .expect("a frozen zero table must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains(base.to_str().unwrap()), "{msg}");
    assert!(msg.contains("unconditional"), "{msg}");
    assert!(msg.contains("--freeze-class-embedding"), "{msg}");
}

#[test]
fn sampling_or_scoring_the_base_alone_is_refused_saying_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_unconditional_base(&base);
    let msg = format!(
        "{:#}",
        load_model_dir(&base, Device::Cpu)
            .err()
            .expect("an unconditional folder is no sampling model")
    );
    assert!(msg.contains(base.to_str().unwrap()), "{msg}");
    assert!(msg.contains("unconditional"), "{msg}");
    assert!(msg.contains("dpsynth finetune"), "{msg}");
}

#[test]
fn clip_scan_measures_an_unconditional_base_with_the_null_class() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_unconditional_base(&base);
    let data = private_folder(&tmp.path().join("public"), 3);
    let tr = prepare(&base, &finetune_config(Mode::Loda), None, Device::Cpu).unwrap();
    let scan = ClipScanConfig {
        limit: 6,
        batch: 3,
        seed: 0,
    };
    let pass = clip_pass(&tr, &data, 1, &scan, 0.003, Device::Cpu, &mut |_| {}).unwrap();
    let norms = pass.norms.sorted();
    assert_eq!(norms.len(), 6);
    assert!(norms.iter().all(|&n| n > 0.0 && n.is_finite()), "{norms:?}");
}

#[test]
fn a_base_saved_by_diffusers_loads_as_diffusers_computes_it_and_fine_tunes() {
    let base = fixture("base");
    let io = read(&fixture("base_io.safetensors"));
    let unet = UNet::load(&base, Device::Cpu).unwrap();
    assert_eq!(unet.num_class_embeds(), None);
    // an unconditional model ignores the labels
    let labels = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let eps = tch::no_grad(|| unet.forward(&io["x"], &io["t"], &labels));
    let diff = max_abs_diff(&eps, &io["eps"]);
    println!("base: max |dpsynth - diffusers| = {diff:.3e}");
    assert!(diff < DIFFUSERS_TOLERANCE, "{diff}");

    let tmp = tempfile::tempdir().unwrap();
    let data = private_folder(&tmp.path().join("private"), 1);
    let out = tmp.path().join("out");
    let done = finetune(
        &base,
        &data,
        &finetune_config(Mode::Loda),
        &out,
        false,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
    assert_eq!(model.unet.num_class_embeds(), Some(4));
    assert_eq!(model.classes, class_names());
}

#[test]
fn the_fine_tuned_folder_loads_in_diffusers_as_class_conditional() {
    let folder = fixture("finetuned");
    let io = read(&fixture("finetuned_io.safetensors"));
    let model = load_model_dir(&folder, Device::Cpu).unwrap();
    assert_eq!(model.unet.num_class_embeds(), Some(4));
    assert_eq!(model.classes, class_names());
    assert!(model.adapter.is_some());
    // with the adapters, against diffusers with python/dpsynth_loader.py
    let ours = tch::no_grad(|| model.unet.forward(&io["x"], &io["t"], &io["labels"]));
    let diff = max_abs_diff(&ours, &io["eps"]);
    println!("fine-tuned with adapters: max |dpsynth - diffusers| = {diff:.3e}");
    assert!(diff < DIFFUSERS_TOLERANCE, "{diff}");
    // the U-Net alone, against plain UNet2DModel.from_pretrained: diffusers reads the class
    // embedding dpsynth added
    let plain = UNet::load(&folder, Device::Cpu).unwrap();
    let ours = tch::no_grad(|| plain.forward(&io["x"], &io["t"], &io["labels"]));
    let diff = max_abs_diff(&ours, &io["eps_plain"]);
    println!("fine-tuned U-Net alone: max |dpsynth - diffusers| = {diff:.3e}");
    assert!(diff < DIFFUSERS_TOLERANCE, "{diff}");
    // and the class embedding matters: one input under each label
    let x = io["x"].narrow(0, 0, 1).expand([4, 1, 8, 8], false);
    let t = Tensor::from(500i64);
    let by_class = tch::no_grad(|| model.unet.forward(&x, &t, &io["labels"]));
    let effect = max_abs_diff(&by_class.narrow(0, 0, 3), &by_class.narrow(0, 3, 1));
    println!("class effect: {effect:.3e}");
    assert!(effect > CLASS_EFFECT, "{effect}");
}
