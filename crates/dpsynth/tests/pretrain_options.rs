//! Pretraining options. Started from an earlier model (`train.init`), the run starts from that
//! model's weights, and a model of another architecture is refused, naming the key and the
//! folder. In bfloat16 (`train.precision`), the steps see the float32 run's losses up to
//! bfloat16's rounding, and everything saved stays float32.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use dpsynth::nn::unet::WEIGHTS_FILE;
use dpsynth::train::pretrain::{pretrain, PretrainConfig, PretrainRun};
use tch::{Device, Tensor};

/// Two classes of flat 8×8 grey images in an ImageFolder tree; returns its spec.
fn images(dir: &Path) -> String {
    let root = dir.join("images");
    for (class, v) in [("x", 30u8), ("y", 220)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..4u8 {
            image::GrayImage::from_pixel(8, 8, image::Luma([v.wrapping_add(5 * i)]))
                .save(root.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    format!("imagefolder:{}", root.display())
}

/// A tiny pretraining config: `channels` sets the architecture, `extra` is added to [train].
fn config(dir: &Path, name: &str, channels: u32, extra: &str) -> PretrainConfig {
    let path = dir.join(name);
    let data = images(dir);
    std::fs::write(
        &path,
        format!(
            r#"
[model]
sample_size = 8
in_channels = 1
out_channels = 1
block_out_channels = [{channels}, {channels}]
layers_per_block = 1
down_block_types = ["DownBlock2D", "DownBlock2D"]
up_block_types = ["UpBlock2D", "UpBlock2D"]
norm_num_groups = 4
num_class_embeds = 3

[schedule]
beta_schedule = "linear"
num_train_timesteps = 100

[[data]]
spec = "{data}"

[train]
steps = 2
batch_size = 4
ema_decay = 0.9
class_dropout = 0.1
seed = 0
checkpoint_every = 100
{extra}
"#
        ),
    )
    .unwrap();
    PretrainConfig::load(&path).unwrap()
}

/// Held by each test while it trains: a run seeds libtorch's global generator, which the tests
/// of this file, run on parallel threads, would otherwise draw from in turn.
static GENERATOR: Mutex<()> = Mutex::new(());

fn run(cfg: &PretrainConfig, out: &Path, data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    run_with_losses(cfg, out, data_dir).map(|(model, _)| model)
}

/// [`run`], also returning each step's loss.
fn run_with_losses(
    cfg: &PretrainConfig,
    out: &Path,
    data_dir: &Path,
) -> anyhow::Result<(std::path::PathBuf, Vec<f64>)> {
    let run = PretrainRun {
        data_dir,
        out,
        resume: false,
        device: Device::Cpu,
    };
    let mut losses = Vec::new();
    let model = pretrain(cfg, &run, &mut |s| losses.push(s.loss))?;
    Ok((model, losses))
}

fn weights(model: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(model.join(WEIGHTS_FILE))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn a_run_from_init_starts_from_its_weights_and_refuses_another_architecture() {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let first = run(
        &config(dir.path(), "a.toml", 8, "lr = 1e-2"),
        &dir.path().join("a"),
        dir.path(),
    )
    .unwrap();
    // at lr 0 the weights never move: the shipped EMA is the init model's weights (without
    // init it would be the seed's random initialisation, which the first run trained away from)
    let init = format!("lr = 0.0\ninit = '{}'", first.display());
    let second = run(
        &config(dir.path(), "b.toml", 8, &init),
        &dir.path().join("b"),
        dir.path(),
    )
    .unwrap();
    let (a, b) = (weights(&first), weights(&second));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let y = &b[name];
        // tolerance 1e-6: the EMA mixes equal tensors in f32
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} moved by {diff}");
    }

    let err = run(
        &config(dir.path(), "c.toml", 12, &init),
        &dir.path().join("c"),
        dir.path(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("train.init") && msg.contains("another model"),
        "{msg}"
    );
    assert!(
        !dir.path().join("c/model").exists(),
        "a refused run wrote a model"
    );
}

#[test]
fn bfloat16_steps_see_the_float32_losses_and_save_float32() {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_, f32_losses) = run_with_losses(
        &config(dir.path(), "f.toml", 8, "lr = 1e-3"),
        &dir.path().join("f"),
        dir.path(),
    )
    .unwrap();
    let bf16 = config(dir.path(), "h.toml", 8, "lr = 1e-3\nprecision = 'bfloat16'");
    let (model, bf16_losses) = run_with_losses(&bf16, &dir.path().join("h"), dir.path()).unwrap();
    assert_eq!(f32_losses.len(), 2);
    assert_eq!(f32_losses.len(), bf16_losses.len());
    for (a, b) in f32_losses.iter().zip(&bf16_losses) {
        // the same weights, batch and draws (step 1) or nearly (step 2): bfloat16 keeps about 3
        // significant digits of each weight and activation
        let rel = (a - b).abs() / a.abs();
        assert!(rel < 0.05, "float32 loss {a}, bfloat16 loss {b}");
        assert!(
            a != b,
            "bfloat16 changed nothing: did the step run in float32?"
        );
    }
    for (name, t) in weights(&model) {
        assert_eq!(t.kind(), tch::Kind::Float, "{name}");
    }
    let ckpt = dir.path().join("h/checkpoint");
    let tensors = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    for (name, t) in Tensor::read_safetensors(&tensors).unwrap() {
        // float32 weights, EMA and moments (and an int64 step count): nothing in bfloat16
        assert_ne!(t.kind(), tch::Kind::BFloat16, "checkpoint {name}");
    }
}
