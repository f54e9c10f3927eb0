//! The U-Net against diffusers' `UNet2DModel`: same parameter names, same outputs, and the
//! checks of the weights files. The fixture is written by `scripts/fixtures/unet_parity.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dpsynth::dp::tape;
use dpsynth::nn::unet::{UNet, UNetConfig};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/unet_parity")
        .join(name)
}

fn io(name: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn parity(name: &str) {
    let unet = UNet::load(&fixture(name), Device::Cpu).unwrap();
    let io = io(name);
    unet.check_input(&io["x"], &io["t"], &io["labels"]).unwrap();
    let eps = tch::no_grad(|| unet.forward(&io["x"], &io["t"], &io["labels"]));
    assert_eq!(eps.size(), io["x"].size());
    let diff = max_abs_diff(&eps, &io["eps"]);
    println!("{name}: max |eps - diffusers eps| = {diff:.3e}");
    assert!(diff < 1e-4, "{name}: max abs diff {diff}");
}

#[test]
fn forward_matches_diffusers() {
    parity("main");
}

#[test]
fn forward_matches_diffusers_variant_options() {
    // scale_shift, mid-block scale factor, freq_shift, no flip, downsample padding 0, mish,
    // centred input, one attention head
    parity("variant");
}

#[test]
fn parameter_names_are_the_diffusers_state_dict_keys() {
    for name in ["main", "variant"] {
        let config = UNetConfig::load(&fixture(name).join("config.json")).unwrap();
        let unet = UNet::new(config, Device::Cpu).unwrap();
        let ours: BTreeMap<String, Vec<i64>> = unet
            .vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        let theirs: BTreeMap<String, Vec<i64>> =
            Tensor::read_safetensors(fixture(name).join("diffusion_pytorch_model.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.size()))
                .collect();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn every_parameter_goes_through_a_dp_layer() {
    // with every parameter trainable, one recorded forward must touch each of them, so DP-SGD
    // can compute per-sample gradients for any subset
    let unet = UNet::load(&fixture("main"), Device::Cpu).unwrap();
    let io = io("main");
    let (_, entries) = tape::record_forward(|| unet.forward(&io["x"], &io["t"], &io["labels"]));
    let mut seen = BTreeSet::new();
    for e in &entries {
        seen.insert(e.weight.data_ptr() as usize);
        if let Some(b) = &e.bias {
            seen.insert(b.data_ptr() as usize);
        }
    }
    for (name, v) in unet.vs.variables() {
        assert!(
            seen.contains(&(v.data_ptr() as usize)),
            "{name} is not recorded"
        );
    }
}

#[test]
fn save_then_load_round_trips() {
    let unet = UNet::load(&fixture("main"), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    unet.save(&out).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["config.json", "diffusion_pytorch_model.safetensors"]
    );
    let back = UNet::load(&out, Device::Cpu).unwrap();
    assert_eq!(back.config(), unet.config());
    let io = io("main");
    let (a, b) = tch::no_grad(|| {
        (
            unet.forward(&io["x"], &io["t"], &io["labels"]),
            back.forward(&io["x"], &io["t"], &io["labels"]),
        )
    });
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // saving again over the existing files works (rename over)
    back.save(&out).unwrap();
}

/// Copies the fixture's weights with `edit` applied and returns the load error message.
fn load_error(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> String {
    let mut tensors =
        Tensor::read_safetensors(fixture("main").join("diffusion_pytorch_model.safetensors"))
            .unwrap();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let config = UNetConfig::load(&fixture("main").join("config.json")).unwrap();
    let unet = UNet::new(config, Device::Cpu).unwrap();
    let msg = format!("{:#}", unet.load_weights(&file).unwrap_err());
    assert!(msg.contains("weights.safetensors"), "{msg}");
    msg
}

#[test]
fn bad_weights_files_name_the_tensor_and_file() {
    let key = "down_blocks.1.attentions.0.to_q.weight";
    let msg = load_error(|t| t.retain(|(k, _)| k != key));
    assert!(msg.contains("missing") && msg.contains(key), "{msg}");

    let msg = load_error(|t| {
        t.push((
            "extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    assert!(msg.contains("extra.weight"), "{msg}");

    let msg = load_error(|t| {
        for (k, v) in t.iter_mut() {
            if k == key {
                *v = Tensor::zeros([3, 3], (Kind::Float, Device::Cpu));
            }
        }
    });
    assert!(msg.contains(key) && msg.contains("[3, 3]"), "{msg}");
}

#[test]
fn half_precision_weights_load() {
    let tensors: Vec<(String, Tensor)> =
        Tensor::read_safetensors(fixture("main").join("diffusion_pytorch_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_kind(Kind::Half)))
            .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let config = UNetConfig::load(&fixture("main").join("config.json")).unwrap();
    let unet = UNet::new(config, Device::Cpu).unwrap();
    unet.load_weights(&file).unwrap();
    assert!(unet
        .vs
        .variables()
        .values()
        .all(|v| v.kind() == Kind::Float));
}

#[test]
fn missing_folder_is_an_error_naming_the_file() {
    let err = UNet::load(Path::new("/nonexistent/model"), Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/model/config.json"));
}

#[test]
fn bad_input_is_reported() {
    let unet = UNet::load(&fixture("main"), Device::Cpu).unwrap();
    let io = io("main");
    let x3 = Tensor::zeros([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    assert!(unet.check_input(&x3, &io["t"], &io["labels"]).is_err());
    let odd = Tensor::zeros([4, 1, 15, 15], (Kind::Float, Device::Cpu));
    assert!(unet.check_input(&odd, &io["t"], &io["labels"]).is_err());
    let big = Tensor::from_slice(&[0i64, 1, 2, 11]);
    let msg = format!(
        "{:#}",
        unet.check_input(&io["x"], &io["t"], &big).unwrap_err()
    );
    assert!(msg.contains("0..11"), "{msg}");
    // a scalar timestep broadcasts
    let t = Tensor::from(5i64);
    unet.check_input(&io["x"], &t, &io["labels"]).unwrap();
    let y = tch::no_grad(|| unet.forward(&io["x"], &t, &io["labels"]));
    assert_eq!(y.size(), io["x"].size());
}
