//! Fixtures shared by the fine-tuning tests: tiny colour base models (class-conditional and
//! unconditional), private data, a class-init table, and the brute-force reference of a clipped
//! sum.
#![allow(dead_code)] // each test crate uses some of them

use std::path::Path;

use dpsynth::data::Dataset;
use dpsynth::nn::unet::{UNet, UNetConfig};
use dpsynth::synth::{save_extras, SchedulerConfig};
use dpsynth::train::finetune::{FinetuneConfig, Mode};
use tch::{Device, Kind, Tensor};

/// The tiny 8×8 colour U-Net's config, with `num_class_embeds` (`None`: unconditional).
fn tiny_config(num_class_embeds: Option<i64>) -> UNetConfig {
    UNetConfig {
        num_class_embeds,
        ..UNetConfig::from_json(
            r#"{"sample_size": 8, "in_channels": 3, "out_channels": 3,
                "block_out_channels": [8, 16], "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "UpBlock2D"],
                "norm_num_groups": 4}"#,
        )
        .unwrap()
    }
}

/// Saves the tiny U-Net (seed 0) with a linear schedule and `classes`.
fn save_tiny(dir: &Path, num_class_embeds: Option<i64>, classes: &[String]) {
    tch::manual_seed(0);
    UNet::new(tiny_config(num_class_embeds), Device::Cpu)
        .unwrap()
        .save(dir)
        .unwrap();
    let sched: SchedulerConfig =
        serde_json::from_str(r#"{"beta_schedule": "linear", "num_train_timesteps": 1000}"#)
            .unwrap();
    save_extras(dir, &sched, classes).unwrap();
}

/// A tiny 8×8 colour U-Net with 4 classes + null, saved with placeholder classes `0`..`3`.
pub fn tiny_base(dir: &Path) {
    let classes: Vec<String> = (0..4).map(|c| c.to_string()).collect();
    save_tiny(dir, Some(5), &classes);
}

/// The same tiny U-Net without a class embedding (an unconditional `UNet2DModel`, as most
/// public DDPM checkpoints are), with an empty `classes.json`.
pub fn tiny_unconditional_base(dir: &Path) {
    save_tiny(dir, None, &[]);
}

pub fn private_data(classes: usize) -> Dataset {
    let n = 16;
    let images: Vec<u8> = (0..n * 3 * 64).map(|i| (i * 37 % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
    let names = ["plane", "car", "bird", "cat", "deer"][..classes]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Dataset::new(Path::new("private"), images, labels, [3, 8, 8], names).unwrap()
}

/// A seeded, quick fine-tuning config for the tiny bases: 2 epochs of batch 8 at ε = 10 (RDP).
pub fn finetune_config(mode: Mode) -> FinetuneConfig {
    FinetuneConfig {
        epochs: 2.0,
        batch_size: 8,
        physical_batch: 8,
        seed: Some(0),
        checkpoint_every: 100,
        lr: 1e-2,
        accountant: privacy::Accountant::Rdp,
        ..FinetuneConfig::new(mode, 10.0, 1e-5)
    }
}

/// `finetune_config(mode)` with a class-init table relating the private `car` to the tiny base's
/// classes 1 and 3 and `cat` to its class 2 (every other private class has no entry).
pub fn car_cat_config(mode: Mode) -> FinetuneConfig {
    let mut cfg = finetune_config(mode);
    cfg.class_init = Some(
        [
            ("car".to_string(), vec!["1".to_string(), "3".to_string()]),
            ("cat".to_string(), vec!["2".to_string()]),
        ]
        .into_iter()
        .collect(),
    );
    cfg
}

/// The class-embedding table of a model's variables, in double precision.
pub fn class_table(vars: &std::collections::HashMap<String, Tensor>) -> Tensor {
    vars["class_embedding.weight"].to_kind(Kind::Double)
}

/// Whether two rows are equal to rounding of f32: rows copied from the base, or the mean of two,
/// differ by at most 1e-6 on values of order 1.
pub fn same_row(a: &Tensor, b: &Tensor) -> bool {
    (a - b).abs().max().double_value(&[]) < 1e-6
}

/// The reference clipped sum of per-example gradients: for each trainable tensor j,
/// Σ_i factors[i] · per_example[i][j] (the factors being min(1, C / (‖g_i‖ + ε))).
pub fn scaled_sum(per_example: &[Vec<Tensor>], factors: &[f64]) -> Vec<Tensor> {
    (0..per_example[0].len())
        .map(|j| {
            per_example
                .iter()
                .zip(factors)
                .map(|(g, f)| &g[j] * *f)
                .reduce(|a, b| a + b)
                .expect("at least one example")
        })
        .collect()
}
