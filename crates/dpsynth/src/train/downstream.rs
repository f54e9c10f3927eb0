//! The downstream test of synthetic data: train a classifier on synthetic images only, pick the
//! epoch on a held-out part of the synthetic set, and measure it on real test images.
//!
//! The network follows the data unless named ([`Arch`]): the CNN for grayscale images, trained
//! as before (SGD, constant learning rate, no augmentation); the ResNet for colour images, trained
//! with the standard CIFAR recipe (random crop with 4-pixel padding and horizontal flip, cosine
//! learning-rate decay to zero over the run, weight decay 5e-4).

use std::sync::Arc;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::classifier::evaluate;
use crate::data::augment::random_crop_flip;
use crate::data::Dataset;
use crate::dp::optim::{Optimizer, OptimizerConfig};
use crate::metrics::Metrics;
use crate::nn::arch::{Arch, NetSpec};
use crate::nn::classifier::cross_entropy_per_example;
use crate::nn::classifier::ImageClassifier;

/// Padding of the random crop of the ResNet recipe.
const CROP_PAD: i64 = 4;
/// Weight decay of the ResNet recipe.
const RESNET_WEIGHT_DECAY: f64 = 5e-4;

/// Settings of the downstream classifier training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownstreamConfig {
    /// Epochs over the synthetic training part.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Fraction of the synthetic set held out for choosing the epoch.
    pub val_fraction: f64,
    /// Seed for initialisation, the split and shuffling.
    pub seed: u64,
    /// The network (`auto`: from the data's shape).
    #[serde(default)]
    pub arch: Arch,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            epochs: 15,
            batch_size: 128,
            lr: 0.05,
            momentum: 0.9,
            val_fraction: 0.1,
            seed: 0,
            arch: Arch::Auto,
        }
    }
}

/// What the downstream test measured.
#[derive(Debug, Clone, Serialize)]
pub struct DownstreamResult {
    /// Metrics on the real test set, with the epoch chosen on synthetic validation data.
    pub test: Metrics,
    /// The chosen epoch (1-based).
    pub best_epoch: usize,
    /// Synthetic validation accuracy per epoch.
    pub val_accuracy: Vec<f64>,
    /// Synthetic images trained on / held out.
    pub train_examples: usize,
    /// Synthetic images held out for validation.
    pub val_examples: usize,
    /// The network trained (`cnn` or `resnet`).
    pub arch: Arch,
    /// The trained network, with the chosen epoch's weights.
    #[serde(skip)]
    pub model: Arc<dyn ImageClassifier>,
}

/// Trains on `synthetic` (minus a held-out part) and tests on `real_test`.
pub fn train_and_test(
    synthetic: &Dataset,
    real_test: &Dataset,
    cfg: &DownstreamConfig,
    device: Device,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<DownstreamResult> {
    ensure!(
        synthetic.num_classes() == real_test.num_classes(),
        "synthetic data has {} classes, the test set {}",
        synthetic.num_classes(),
        real_test.num_classes()
    );
    ensure!(
        synthetic.num_classes() >= 2,
        "the data has {} class ({}): a downstream classifier needs at least two",
        synthetic.num_classes(),
        synthetic.class_names.join(", ")
    );
    ensure!(
        [synthetic.channels, synthetic.height, synthetic.width]
            == [real_test.channels, real_test.height, real_test.width],
        "synthetic images are {}x{}x{}, test images {}x{}x{}",
        synthetic.channels,
        synthetic.height,
        synthetic.width,
        real_test.channels,
        real_test.height,
        real_test.width
    );
    ensure!(
        cfg.epochs > 0 && cfg.batch_size > 0,
        "epochs and batch size must be positive"
    );
    tch::manual_seed(cfg.seed as i64);
    let perm: Vec<usize> = Vec::<i64>::try_from(Tensor::randperm(
        synthetic.len() as i64,
        (Kind::Int64, Device::Cpu),
    ))?
    .into_iter()
    .map(|i| i as usize)
    .collect();
    let n_val =
        ((synthetic.len() as f64 * cfg.val_fraction).round() as usize).min(synthetic.len() - 1);
    let (val_idx, train_idx) = perm.split_at(n_val);
    let train = synthetic.subset(train_idx);
    let val = synthetic.subset(val_idx);

    let spec = NetSpec::for_data(
        cfg.arch,
        synthetic.channels,
        synthetic.height,
        synthetic.width,
        synthetic.num_classes(),
    )?;
    // the CIFAR recipe for the ResNet; the CNN keeps the recipe its MNIST figures were made with
    let cifar_recipe = spec.arch() == Arch::Resnet;
    let vs = nn::VarStore::new(device);
    let model = spec.build(&vs.root())?;
    let params: Vec<Tensor> = vs.trainable_variables();
    let mut opt = Optimizer::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        OptimizerConfig::Sgd {
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: if cifar_recipe {
                RESNET_WEIGHT_DECAY
            } else {
                0.0
            },
        },
    )?;
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total_steps = (cfg.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut val_accuracy = Vec::new();
    for epoch in 1..=cfg.epochs {
        let order = Vec::<i64>::try_from(Tensor::randperm(
            train.len() as i64,
            (Kind::Int64, Device::Cpu),
        ))?;
        let order: Vec<usize> = order.into_iter().map(|i| i as usize).collect();
        for chunk in order.chunks(cfg.batch_size) {
            let (x, y) = train.batch(chunk, device);
            let x = if cifar_recipe {
                let progress = step as f64 / total_steps;
                opt.set_lr(cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
                random_crop_flip(&x, CROP_PAD)
            } else {
                x
            };
            step += 1;
            let loss = cross_entropy_per_example(&model.forward(&x), &y)?.mean(Kind::Float);
            let grads = Tensor::run_backward(&[loss], &params, false, false);
            opt.step(&grads)?;
        }
        let acc = if val.is_empty() {
            0.0
        } else {
            evaluate(model.as_ref(), &val, device).accuracy
        };
        val_accuracy.push(acc);
        on_epoch(epoch, acc);
        if best.as_ref().is_none_or(|(b, _, _)| acc > *b) {
            let snapshot = params.iter().map(|p| p.detach().copy()).collect();
            best = Some((acc, epoch, snapshot));
        }
    }
    let (_, best_epoch, snapshot) = best.expect("at least one epoch");
    tch::no_grad(|| {
        for (p, s) in params.iter().zip(&snapshot) {
            p.shallow_clone().copy_(s);
        }
    });
    Ok(DownstreamResult {
        test: evaluate(model.as_ref(), real_test, device),
        best_epoch,
        val_accuracy,
        train_examples: train.len(),
        val_examples: val.len(),
        arch: spec.arch(),
        model: Arc::from(model),
    })
}
