//! pytorch-fid's Inception and FID, and a numpy KID, against dpsynth's: same parameter names,
//! same features on random weights, same FID/MMD² numbers. The fixture is written by
//! `scripts/fixtures/fid_parity.py`; the random weights are not committed (the network has
//! 21.8M parameters) but rebuilt here by the script's recipe, documented in its docstring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dpsynth::fidelity::{frechet_distance, kid, mmd2_unbiased, KidSettings};
use dpsynth::nn::inception::InceptionV3;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fid_parity")
        .join(name)
}

fn read(name: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name))
        .unwrap()
        .into_iter()
        .collect()
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The fixture script's recipe: tensor `name` of `shape`, element by element.
fn recipe(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let h = fnv1a64(name);
    let fan_in: i64 = shape.iter().skip(1).product();
    let values: Vec<f32> = (0..n as u64)
        .map(|j| {
            let mut z = h.wrapping_add(j.wrapping_mul(GOLDEN)).wrapping_add(GOLDEN);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            let v = if name.ends_with(".conv.weight") {
                (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt()
            } else if name.ends_with(".bn.weight") || name.ends_with(".bn.running_var") {
                0.5 + u
            } else if name.ends_with(".bn.bias") || name.ends_with(".bn.running_mean") {
                (2.0 * u - 1.0) * 0.2
            } else {
                (2.0 * u - 1.0) * 0.01
            };
            v as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// pytorch-fid's state-dict keys and shapes.
fn state_dict_shapes() -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(fixture("state_dict.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every tensor of the state dict by the recipe, with a user file's extras (fc, counters).
fn recipe_state_dict() -> BTreeMap<String, Tensor> {
    state_dict_shapes()
        .into_iter()
        .map(|(k, shape)| {
            let t = if k.ends_with("num_batches_tracked") {
                Tensor::from(0i64)
            } else {
                recipe(&k, &shape)
            };
            (k, t)
        })
        .collect()
}

#[test]
fn parameter_names_are_pytorch_fid_state_dict_keys() {
    let net = InceptionV3::new(Device::Cpu);
    let ours: BTreeMap<String, Vec<i64>> = net
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect();
    let theirs: BTreeMap<String, Vec<i64>> = state_dict_shapes()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn features_match_pytorch_fid() {
    // write the recipe weights as a user's converted file would be, then load it
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inception.safetensors");
    let sd = recipe_state_dict();
    let named: Vec<(&str, &Tensor)> = sd.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, &file).unwrap();
    let net = InceptionV3::load(&file, Device::Cpu).unwrap();
    let io = read("io.safetensors");
    for which in ["rgb", "gray"] {
        let x = io[which].to_kind(Kind::Float) / 255.0;
        let ours = net.features(&x).unwrap();
        let theirs = &io[&format!("{which}_features")];
        assert_eq!(ours.size(), theirs.size());
        let diff = (&ours - theirs).abs().max().double_value(&[]);
        let scale = theirs.abs().max().double_value(&[]);
        println!("{which}: max |ours - pytorch-fid| = {diff:.3e} (max |feature| {scale:.3})");
        // float32 through ~95 conv layers: rounding differences of 1e-7 relative grow to
        // ~1e-5 relative; 1e-4 of the largest feature leaves a margin and still catches any
        // wrong padding, pool or normalisation, which change features at the 1e-2 level
        assert!(diff < 1e-4 * scale, "{which}: {diff} vs scale {scale}");
    }
}

#[test]
fn bad_weight_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let e = format!(
        "{:#}",
        InceptionV3::load(&missing, Device::Cpu).unwrap_err()
    );
    assert!(
        e.contains("nope.safetensors") && e.contains("no such file"),
        "{e}"
    );

    let pth = dir.path().join("pt_inception.pth");
    std::fs::write(&pth, b"not read").unwrap();
    let e = format!("{:#}", InceptionV3::load(&pth, Device::Cpu).unwrap_err());
    assert!(
        e.contains("pt_inception.pth") && e.contains("save_file"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"garbage").unwrap();
    let e = format!(
        "{:#}",
        InceptionV3::load(&garbage, Device::Cpu).unwrap_err()
    );
    assert!(e.contains("garbage.safetensors"), "{e}");

    let wrong = dir.path().join("wrong.safetensors");
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("conv.weight", &t)], &wrong).unwrap();
    let e = format!("{:#}", InceptionV3::load(&wrong, Device::Cpu).unwrap_err());
    assert!(
        e.contains("wrong.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn fid_and_mmd_match_pytorch_fid_and_numpy() {
    let feats = read("fid_kid.safetensors");
    let text = std::fs::read_to_string(fixture("fid_kid.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let (x, y) = (
            &feats[case["x"].as_str().unwrap()],
            &feats[case["y"].as_str().unwrap()],
        );
        let fid = frechet_distance(x, y).unwrap();
        let mmd = mmd2_unbiased(x, y).unwrap();
        let (want_fid, want_mmd) = (
            case["fid"].as_f64().unwrap(),
            case["mmd2"].as_f64().unwrap(),
        );
        println!("{case}: fid {fid:.12} mmd2 {mmd:.12}");
        // f64 throughout: agreement to ~1e-9 absolute, bounded by the eigen/sqrtm routes
        assert!(
            (fid - want_fid).abs() < 1e-8 * (1.0 + want_fid.abs()),
            "fid {fid} vs {want_fid}"
        );
        assert!(
            (mmd - want_mmd).abs() < 1e-10 * (1.0 + want_mmd.abs()),
            "mmd {mmd} vs {want_mmd}"
        );
    }
}

#[test]
fn kid_over_whole_sets_is_the_mmd() {
    // with subsets as large as both sets, every subset is the whole set: sd 0, mean = MMD²
    let feats = read("fid_kid.safetensors");
    let (a, c) = (&feats["a"], &feats["c"]);
    let settings = KidSettings {
        subsets: 5,
        subset_size: 1000,
    };
    let k = kid(a, c, &settings, 7).unwrap();
    assert_eq!(k.subset_size, 50);
    assert!((k.mean - mmd2_unbiased(a, c).unwrap()).abs() < 1e-12);
    assert!(k.sd < 1e-12);
    // smaller subsets scatter, and a seed repeats them
    let small = KidSettings {
        subsets: 20,
        subset_size: 10,
    };
    let k1 = kid(a, &feats["b"], &small, 3).unwrap();
    assert!(k1.sd > 0.0);
    assert_eq!(k1, kid(a, &feats["b"], &small, 3).unwrap());
}
