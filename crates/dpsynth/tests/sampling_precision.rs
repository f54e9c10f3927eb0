//! Sampling in bfloat16: `ModelDir::set_precision` converts the U-Net and its adapters, the
//! sampler runs the forward passes in the model's format and its own arithmetic in float32, and
//! the images are the float32 ones up to bfloat16's rounding. A sampler asked for one format
//! with a model in another is an error, never a silent conversion.

use dpsynth::diffusion::precision::Precision;
use dpsynth::diffusion::sampler::SamplerConfig;
use dpsynth::synth::{generate, load_model_dir, ModelDir};
use dpsynth::train::finetune::{finetune, Mode};
use tch::{Device, Kind};

mod common;
use common::{finetune_config, private_data, tiny_base};

fn kinds(model: &ModelDir) -> Vec<Kind> {
    let stores = std::iter::once(&model.unet.vs).chain(model.adapter_store.as_ref());
    stores
        .flat_map(|s| s.variables().into_values().map(|t| t.kind()))
        .collect()
}

#[test]
fn bfloat16_sampling_draws_the_float32_images_up_to_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let data = private_data(4);
    let out = tmp.path().join("o");
    let cfg = finetune_config(Mode::Loda);
    let done = finetune(&base, &data, &cfg, &out, false, Device::Cpu, &mut |_| {}).unwrap();
    let f32_cfg = SamplerConfig::ddpm(10, 2.0);
    let bf16_cfg = SamplerConfig {
        precision: Precision::Bfloat16,
        ..f32_cfg
    };

    let model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
    assert!(model.adapter_store.is_some(), "the LoDA model has adapters");
    let reference = generate(&model, 8, &f32_cfg, 3, &mut |_| {}).unwrap();
    let err = generate(&model, 8, &bf16_cfg, 3, &mut |_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("bfloat16"), "{err:#}");

    let mut model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
    model.set_precision(Precision::Bfloat16);
    assert!(kinds(&model).iter().all(|&k| k == Kind::BFloat16));
    let err = generate(&model, 8, &f32_cfg, 3, &mut |_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("float32"), "{err:#}");
    let bf16 = generate(&model, 8, &bf16_cfg, 3, &mut |_| {}).unwrap();

    // the images are u8; bfloat16 keeps about 3 significant digits of every weight and
    // activation, so most pixels are unchanged and none moves far
    let (a, b) = (&reference.images, &bf16.images);
    assert_eq!(a.len(), b.len());
    let diffs: Vec<i32> = a
        .iter()
        .zip(b.iter())
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    let max = *diffs.iter().max().unwrap();
    assert!(
        mean > 0.0,
        "bfloat16 changed no pixel: did the forward passes run in float32?"
    );
    assert!(mean < 2.0, "mean pixel difference {mean:.3} of 255");
    assert!(max < 64, "largest pixel difference {max} of 255");

    model.set_precision(Precision::Float32);
    assert!(kinds(&model).iter().all(|&k| k == Kind::Float));
}
