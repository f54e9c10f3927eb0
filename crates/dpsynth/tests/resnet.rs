//! The GroupNorm ResNet classifier: shapes and parameter names, exact per-example gradient norms
//! under DP-SGD (against a brute-force loop of batch-size-1 backward passes, float64), and the
//! downstream test picking it for colour images.

use dpsynth::data::Dataset;
use dpsynth::dp::engine::{DpSgd, DpSgdConfig};
use dpsynth::nn::arch::{Arch, NetSpec};
use dpsynth::nn::classifier::cross_entropy_per_example;
use dpsynth::nn::resnet::{ResNet, ResNetConfig};
use dpsynth::train::downstream::{train_and_test, DownstreamConfig};
use tch::{nn, Device, Kind, Tensor};

/// libtorch has one global generator; tests that seed it and draw from it hold this lock, so
/// that tests running in parallel do not interleave their draws and each result repeats.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn shapes_names_and_size() {
    let _rng = torch_rng();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs.root(), ResNetConfig::cifar10()).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(model.forward(&x).size(), [2, 10]);
    let names: Vec<String> = vs.variables().into_keys().collect();
    for n in [
        "stem.conv.weight",
        "stage1.0.gn2.bias",
        "stage2.0.short.conv.weight",
        "stage3.0.conv1.weight",
        "fc.weight",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    // stage 1 keeps the shape, so it has no shortcut conv
    assert!(!names.iter().any(|n| n.starts_with("stage1.0.short")));
    let params: i64 = vs.variables().values().map(|v| v.numel() as i64).sum();
    assert!((70_000..90_000).contains(&params), "{params} parameters");
    let bad = ResNetConfig {
        groups: 5,
        ..ResNetConfig::cifar10()
    };
    assert!(ResNet::new(&(&vs.root() / "bad"), bad).is_err());
}

#[test]
fn per_example_norms_match_brute_force() {
    let _rng = torch_rng();
    tch::manual_seed(2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = ResNetConfig {
        widths: [4, 8, 8],
        groups: 2,
        blocks_per_stage: 2,
        ..ResNetConfig::cifar10()
    };
    let model = ResNet::new(&vs.root(), cfg).unwrap();
    vs.double();
    let params = vs.trainable_variables();
    let b = 4;
    let x = Tensor::randn([b, 3, 12, 12], (Kind::Double, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 3, 9, 3]);
    let mut dp = DpSgd::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        DpSgdConfig::new(1e9, 0.0, b as f64),
        Some(0),
    )
    .unwrap();
    let stats = dp
        .accumulate(1, || {
            cross_entropy_per_example(&model.forward(&x), &y).unwrap()
        })
        .unwrap();
    for i in 0..b {
        let loss =
            cross_entropy_per_example(&model.forward(&x.narrow(0, i, 1)), &y.narrow(0, i, 1))
                .unwrap()
                .sum(Kind::Double);
        let grads = Tensor::run_backward(&[loss], &params, false, false);
        let norm = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        let got = stats.norms[i as usize];
        assert!(
            (got - norm).abs() <= 1e-6 * norm,
            "example {i}: engine {got}, brute force {norm}"
        );
    }
}

#[test]
fn arch_follows_the_data_unless_named() {
    let spec = |arch, c| NetSpec::for_data(arch, c, 32, 32, 10).unwrap().arch();
    assert_eq!(spec(Arch::Auto, 3), Arch::Resnet);
    assert_eq!(spec(Arch::Auto, 1), Arch::Cnn);
    assert_eq!(spec(Arch::Cnn, 3), Arch::Cnn);
    assert_eq!(spec(Arch::Resnet, 1), Arch::Resnet);
    assert!(NetSpec::for_data(Arch::Cnn, 1, 28, 32, 10).is_err());
    assert!("vgg".parse::<Arch>().is_err());
}

#[test]
fn downstream_trains_the_resnet_on_colour_images() {
    let _rng = torch_rng();
    // two classes that differ in colour: red-ish and blue-ish noise
    let n = 64;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = (i % 2) as u8;
        labels.push(c);
        for ch in 0..3u8 {
            let base: u8 = if (ch == 0) == (c == 0) { 200 } else { 40 };
            images.extend((0..64u32).map(|p| base.wrapping_add((p * 7 + i as u32) as u8 % 30)));
        }
    }
    let ds = Dataset::new(
        std::path::Path::new("test"),
        images,
        labels,
        [3, 8, 8],
        vec!["red".into(), "blue".into()],
    )
    .unwrap();
    let cfg = DownstreamConfig {
        epochs: 3,
        batch_size: 16,
        ..DownstreamConfig::default()
    };
    let r = train_and_test(&ds, &ds, &cfg, Device::Cpu, &mut |_, _| {}).unwrap();
    assert_eq!(r.arch, Arch::Resnet);
    assert!(r.test.accuracy > 0.9, "accuracy {}", r.test.accuracy);
}
