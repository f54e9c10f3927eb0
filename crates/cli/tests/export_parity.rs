//! `dpsynth export` against Python: the exported folders, loaded by diffusers (LoRA merged) or by
//! `python/dpsynth_loader.py` (LoDA, LoRA unmerged), compute what dpsynth's adapted model does.
//!
//! The fixture under `crates/dpsynth/tests/data/export_parity/` is made in two steps, by hand:
//! `write_fixture_models` below (ignored; dpsynth writes two tiny model folders with random
//! non-zero adapters), then `scripts/fixtures/export_parity.py` (exports them with the
//! `dpsynth` binary, runs the Python side on fixed inputs and saves its outputs). These tests
//! only read it: no Python at test time.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::dpsynth;
use dpsynth::diffusion::BetaSchedule;
use dpsynth::nn::adapter::{attach, AdapterActivation, AdapterConfig, AdapterKind};
use dpsynth::nn::unet::{UNet, UNetConfig};
use dpsynth::synth::{load_model_dir, save_model_dir, SchedulerConfig};
use tch::{nn, Device, Tensor};

/// Both sides compute in float32 with the same operations, but libtorch and PyTorch's
/// diffusers may take different kernels and summation orders (convs, attention, GroupNorm), each
/// rounding at about 1e-7 relative; over the ~30 layers of the tiny U-Net, on outputs of order 1,
/// that stays near 1e-6. 1e-4 leaves room for that and is the bound of `unet_parity.rs`, while an
/// adapter missing, misplaced or wrongly scaled moves the output by more than `ADAPTER_EFFECT`.
const TOLERANCE: f64 = 1e-4;
/// The least max |ε with adapters − ε of the base| the fixture must show, so that a Python side
/// that ignored the adapters could not pass.
const ADAPTER_EFFECT: f64 = 1e-2;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dpsynth/tests/data/export_parity")
        .join(case)
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

/// Runs `dpsynth export --model MODEL --out OUT [extra]`: exit code, stdout and stderr.
fn run_export(model: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "--threads",
        "1",
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    dpsynth(&args)
}

/// Runs `dpsynth export --model MODEL --out OUT [extra]`, asserting success.
fn export(model: &Path, out: &Path, extra: &[&str]) {
    let (code, stdout, stderr) = run_export(model, out, extra);
    assert_eq!(code, 0, "export failed: {stdout}\n{stderr}");
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// dpsynth's forward pass of the model folder `dir` (adapters attached if it has any).
fn forward(dir: &Path, io: &BTreeMap<String, Tensor>) -> Tensor {
    let model = load_model_dir(dir, Device::Cpu).unwrap();
    tch::no_grad(|| model.unet.forward(&io["x"], &io["t"], &io["labels"]))
}

/// Asserts that `theirs` matches dpsynth's `ours` within the tolerance, and that the adapters
/// matter (`theirs` is far from the base's output).
fn assert_parity(case: &str, ours: &Tensor, theirs: &Tensor, base: &Tensor) {
    let diff = max_abs_diff(ours, theirs);
    let effect = max_abs_diff(theirs, base);
    println!("{case}: max |dpsynth - python| = {diff:.3e} (adapters move eps by {effect:.3e})");
    assert!(diff < TOLERANCE, "{case}: max abs diff {diff}");
    assert!(
        effect > ADAPTER_EFFECT,
        "{case}: adapters change eps by {effect}"
    );
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (a_t, b_t) = (read(a), read(b));
    assert_eq!(
        a_t.keys().collect::<Vec<_>>(),
        b_t.keys().collect::<Vec<_>>()
    );
    for (k, v) in &a_t {
        assert_eq!(max_abs_diff(v, &b_t[k]), 0.0, "{k}");
    }
}

const BASE_FILES: [&str; 4] = [
    "classes.json",
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "scheduler_config.json",
];

/// Checks an unmerged export of `model` in `out`: the six files, the base and adapter weights
/// as they were, and an adapter config that names the kind and every adapted layer.
fn check_unmerged_files(model: &Path, out: &Path, kind: &str) {
    let mut expected: Vec<&str> = BASE_FILES.to_vec();
    expected.extend(["adapter_config.json", "adapter_model.safetensors"]);
    expected.sort();
    assert_eq!(files(out), expected);
    for f in [
        "diffusion_pytorch_model.safetensors",
        "adapter_model.safetensors",
    ] {
        assert_same_tensors(&model.join(f), &out.join(f));
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["kind"], kind);
    assert_eq!(cfg["rank"], 2);
    assert_eq!(cfg["alpha"], 3.0);
    assert_eq!(cfg["activation"], "silu");
    let layers: Vec<&str> = cfg["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let weights = read(&out.join("adapter_model.safetensors"));
    let with_a: Vec<&str> = weights
        .keys()
        .filter_map(|k| k.strip_prefix("adapter.")?.strip_suffix(".A.weight"))
        .collect();
    assert_eq!(layers, with_a);
    for l in [
        "down_blocks.0.resnets.0.conv1",
        "up_blocks.1.resnets.0.conv_shortcut",
        "mid_block.attentions.0.to_out.0",
        "time_embedding.linear_1",
        "down_blocks.1.resnets.0.time_emb_proj",
    ] {
        assert!(layers.contains(&l), "{l} not in {layers:?}");
    }
}

#[test]
fn loda_export_loaded_in_python_matches_dpsynth() {
    let model = fixture("loda/model");
    let io = read(&fixture("loda/io.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(&model, &out, &[]);
    check_unmerged_files(&model, &out, "loda");
    let ours = forward(&out, &io);
    assert_eq!(max_abs_diff(&ours, &forward(&model, &io)), 0.0);
    assert_parity("loda", &ours, &io["eps"], &io["eps_base"]);
}

#[test]
fn lora_merged_export_in_diffusers_matches_dpsynth_adapters() {
    let model = fixture("lora/model");
    let io = read(&fixture("lora/io.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(&model, &out, &[]);
    assert_eq!(files(&out), BASE_FILES);
    // dpsynth's forward with the adapters attached, against diffusers on the merged weights
    let ours = forward(&model, &io);
    assert_parity("lora merged", &ours, &io["eps_merged"], &io["eps_base"]);
    // and dpsynth reading its own merged export
    assert!(max_abs_diff(&forward(&out, &io), &ours) < TOLERANCE);
}

#[test]
fn lora_unmerged_export_loaded_in_python_matches_dpsynth() {
    let model = fixture("lora/model");
    let io = read(&fixture("lora/io.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(&model, &out, &["--unmerged"]);
    check_unmerged_files(&model, &out, "lora");
    let ours = forward(&out, &io);
    assert_parity("lora unmerged", &ours, &io["eps_unmerged"], &io["eps_base"]);
}

#[test]
fn export_of_a_folder_without_adapters_fails_naming_it() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dpsynth/tests/data/unet_parity/main");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let (code, _, stderr) = run_export(&model, &out, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains(model.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("has no adapters"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn adapter_config_whose_layers_do_not_match_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in files(&fixture("loda/model")) {
        std::fs::copy(fixture("loda/model").join(&f), model.join(&f)).unwrap();
    }
    let cfg_path = model.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["layers"].as_array_mut().unwrap().pop();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = dir.path().join("export");
    let (code, _, stderr) = run_export(&model, &out, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains(cfg_path.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("up_blocks.1.resnets.1.time_emb_proj"),
        "{stderr}"
    );
}

/// The tiny class-conditional base of the fixture: two resolutions, attention in the second
/// and in the mid block, so every adapter site (ResNet convs and shortcuts, attention
/// projections, time-embedding linears) is present.
const TINY_BASE: &str = r#"{"sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [4, 8], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 2, "attention_head_dim": 4, "num_class_embeds": 4}"#;

/// Adds `scale` · N(0, 1) to every variable of `vs`.
fn perturb(vs: &nn::VarStore, scale: f64) {
    tch::no_grad(|| {
        for v in vs.variables().values() {
            let mut v = v.shallow_clone();
            let _ = v.f_add_(&(v.randn_like() * scale));
        }
    });
}

/// Writes a fixture model folder: the tiny base with every parameter perturbed (so no GroupNorm
/// is the identity) and adapters of `kind` on every site with random non-zero weights.
fn write_fixture_model(dir: &Path, kind: AdapterKind, seed: i64) {
    tch::manual_seed(seed);
    let mut unet = UNet::new(UNetConfig::from_json(TINY_BASE).unwrap(), Device::Cpu).unwrap();
    perturb(&unet.vs, 0.1);
    let store = nn::VarStore::new(Device::Cpu);
    let cfg = AdapterConfig {
        alpha: 3.0,
        activation: AdapterActivation::Silu,
        attention: true,
        time_embedding: true,
        ..AdapterConfig::new(kind, 2)
    };
    attach(&mut unet, &store, &cfg).unwrap();
    perturb(&store, 0.3);
    let classes = ["zero", "one", "two"].map(String::from);
    let scheduler = SchedulerConfig::of(BetaSchedule::DDPM_LINEAR, 1000);
    save_model_dir(
        dir,
        &unet,
        &scheduler,
        &classes,
        &[0, 1, 2],
        Some((&cfg, &store)),
    )
    .unwrap();
}

#[test]
#[ignore = "writes the fixture's model folders; run by hand before scripts/fixtures/export_parity.py"]
fn write_fixture_models() {
    write_fixture_model(&fixture("loda/model"), AdapterKind::Loda, 0);
    write_fixture_model(&fixture("lora/model"), AdapterKind::Lora, 1);
}
