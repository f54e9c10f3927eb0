//! The held-out loss against its definition: a perfect ε oracle scores 0, a zero predictor
//! scores E[ε²] = 1, the labels reach the model as asked, and the draws are repeatable.

use std::path::Path;

use dpsynth::data::dataset::Dataset;
use dpsynth::diffusion::heldout::{
    heldout_loss, paired_difference, Conditioning, HeldoutConfig, HeldoutLoss,
};
use dpsynth::diffusion::{EpsModel, NoiseSchedule};
use tch::{Device, Kind, Tensor};

const NULL: i64 = 3;

/// 200 images 1×4×4 of three classes; every pixel of every image is `value`.
fn constant_data(value: u8) -> Dataset {
    let n = 200;
    Dataset::new(
        Path::new("test"),
        vec![value; n * 16],
        (0..n).map(|i| (i % 3) as u8).collect(),
        [1, 4, 4],
        vec!["a".into(), "b".into(), "c".into()],
    )
    .unwrap()
}

/// Knows that every image is the constant `x0`, so it recovers ε exactly from x_t and t.
struct Oracle {
    x0: f64,
    schedule: NoiseSchedule,
}

impl EpsModel for Oracle {
    fn predict_eps(&self, x: &Tensor, t: &Tensor, _labels: &Tensor) -> Tensor {
        let ab = self
            .schedule
            .alphas_cumprod_tensor(x.device())
            .to_kind(Kind::Double)
            .index_select(0, t)
            .view([-1, 1, 1, 1]);
        ((x.to_kind(Kind::Double) - ab.sqrt() * self.x0) / (-&ab + 1.0).sqrt()).to_kind(Kind::Float)
    }
    fn null_class(&self) -> Option<i64> {
        Some(NULL)
    }
}

/// Predicts 0 for the null class and 1 for every real class.
struct ByLabel;

impl EpsModel for ByLabel {
    fn predict_eps(&self, x: &Tensor, _t: &Tensor, labels: &Tensor) -> Tensor {
        labels
            .ne(NULL)
            .to_kind(Kind::Float)
            .view([-1, 1, 1, 1])
            .expand_as(x)
    }
    fn null_class(&self) -> Option<i64> {
        Some(NULL)
    }
}

fn score(model: &impl EpsModel, data: &Dataset, cfg: &HeldoutConfig) -> HeldoutLoss {
    let s = NoiseSchedule::linear(1000).unwrap();
    heldout_loss(model, &s, data, cfg, Device::Cpu, &mut |_| {}).unwrap()
}

fn cfg(conditioning: Conditioning) -> HeldoutConfig {
    HeldoutConfig {
        limit: 1000,
        draws: 4,
        batch: 64,
        seed: 5,
        buckets: 4,
        conditioning,
    }
}

#[test]
fn a_perfect_oracle_scores_zero() {
    let data = constant_data(200);
    let oracle = Oracle {
        x0: 200.0 / 127.5 - 1.0,
        schedule: NoiseSchedule::linear(1000).unwrap(),
    };
    let r = score(&oracle, &data, &cfg(Conditioning::Null));
    assert_eq!((r.images, r.draws), (200, 800), "limit above the data size");
    assert!(r.mean < 1e-8, "{r:?}");
    // an oracle for another image is far from zero: the images do reach the model
    let wrong = Oracle { x0: 0.0, ..oracle };
    assert!(score(&wrong, &data, &cfg(Conditioning::Null)).mean > 0.01);
}

#[test]
fn labels_reach_the_model_as_asked() {
    let data = constant_data(10);
    // null class: the model predicts 0, the loss is E[ε²] = 1
    let null = score(&ByLabel, &data, &cfg(Conditioning::Null));
    assert!((null.mean - 1.0).abs() < 5.0 * null.std_err, "{null:?}");
    // own labels: it predicts 1, the loss is E[(1 − ε)²] = 2
    let own = score(&ByLabel, &data, &cfg(Conditioning::Labels));
    assert!((own.mean - 2.0).abs() < 5.0 * own.std_err, "{own:?}");
    // the standard error is that of the mean of 200 images of 4 draws × 16 pixels of ε²
    let expected = (2.0f64 / 64.0 / 200.0).sqrt();
    assert!((null.std_err / expected - 1.0).abs() < 0.25, "{null:?}");
}

#[test]
fn buckets_partition_the_draws_and_the_draws_repeat() {
    let data = constant_data(10);
    let c = cfg(Conditioning::Null);
    let r = score(&ByLabel, &data, &c);
    assert_eq!(
        r.buckets
            .iter()
            .map(|b| (b.start, b.end))
            .collect::<Vec<_>>(),
        [(0, 250), (250, 500), (500, 750), (750, 1000)]
    );
    assert_eq!(r.buckets.iter().map(|b| b.draws).sum::<usize>(), r.draws);
    assert!(r.buckets.iter().all(|b| b.draws > 100));
    let pooled: f64 = r
        .buckets
        .iter()
        .map(|b| b.mean * b.draws as f64)
        .sum::<f64>();
    assert!((pooled / r.draws as f64 - r.mean).abs() < 1e-9);
    assert_eq!(r.per_image.len(), r.images);
    let per_image_mean = r.per_image.iter().sum::<f64>() / r.images as f64;
    assert!((per_image_mean - r.mean).abs() < 1e-9);
    assert_eq!(score(&ByLabel, &data, &c), r, "same seed, same draws");
    let other = score(&ByLabel, &data, &HeldoutConfig { seed: 6, ..c });
    assert_ne!(other.mean, r.mean, "another seed, other draws");
    // an image's draws are its own: neither the batch nor the other images change them
    let rebatched = score(&ByLabel, &data, &HeldoutConfig { batch: 7, ..c });
    assert_eq!(rebatched.per_image, r.per_image);
    let subset = score(&ByLabel, &data, &HeldoutConfig { limit: 10, ..c });
    assert_eq!((subset.images, subset.draws), (10, 40));
    assert_eq!(subset.per_image, r.per_image[..10]);
}

#[test]
fn bad_options_are_errors() {
    let data = constant_data(10);
    let s = NoiseSchedule::linear(1000).unwrap();
    let run = |c: HeldoutConfig| {
        heldout_loss(&ByLabel, &s, &data, &c, Device::Cpu, &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let c = cfg(Conditioning::Null);
    assert!(run(HeldoutConfig { limit: 0, ..c }).contains("limit"));
    assert!(run(HeldoutConfig { draws: 0, ..c }).contains("draws"));
    assert!(run(HeldoutConfig { buckets: 1001, ..c }).contains("buckets"));
    // three classes given as labels to a model with two (null = 2) would index past its table
    struct TwoClasses;
    impl EpsModel for TwoClasses {
        fn predict_eps(&self, x: &Tensor, _: &Tensor, _: &Tensor) -> Tensor {
            x.zeros_like()
        }
        fn null_class(&self) -> Option<i64> {
            Some(2)
        }
    }
    let c = cfg(Conditioning::Labels);
    let err = heldout_loss(&TwoClasses, &s, &data, &c, Device::Cpu, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("3 classes, the model 2"), "{err}");
}

#[test]
fn paired_difference_is_the_mean_and_standard_error_of_the_differences() {
    // differences 1, 2, 3: mean 2, sample variance 1, standard error 1/√3
    let (mean, se) = paired_difference(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
    assert!((mean - 2.0).abs() < 1e-12);
    assert!((se - 1.0 / 3f64.sqrt()).abs() < 1e-12);
    // the same images scored twice differ by nothing
    assert_eq!(
        paired_difference(&[0.3, 0.1], &[0.3, 0.1]).unwrap(),
        (0.0, 0.0)
    );
    assert!(paired_difference(&[1.0], &[1.0, 2.0]).is_err());
    assert!(paired_difference(&[], &[]).is_err());
}
