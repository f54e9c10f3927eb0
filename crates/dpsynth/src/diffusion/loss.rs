//! The ε-prediction loss with K noise draws per example and class dropout.
//!
//! Each example of a batch of B is repeated K times, every repeat with its own timestep and
//! noise, giving B·K rows ordered example-major (row r belongs to example r / K). The loss is
//! returned per row so DP-SGD can average the K rows of an example before clipping ("noise
//! multiplicity": K draws lower the loss variance at no privacy cost, since they all come from
//! one example).

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use super::{EpsModel, NoiseSchedule};

/// The probability of replacing a label with the null class, as in classifier-free guidance.
pub const DEFAULT_CLASS_DROPOUT: f64 = 0.1;

/// Options of [`eps_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// K, the noise draws per example (≥ 1).
    pub repeats: i64,
    /// Probability that a row's label is replaced by the null class (ignored for an
    /// unconditional model).
    pub class_dropout: f64,
}

impl Default for LossConfig {
    /// K = 1, class dropout 0.1.
    fn default() -> Self {
        Self {
            repeats: 1,
            class_dropout: DEFAULT_CLASS_DROPOUT,
        }
    }
}

/// The random draws of one loss evaluation, one per row (`B·K` rows, example-major).
#[derive(Debug)]
pub struct Draws {
    /// Timesteps, int64 `[B·K]`, uniform on `0..T`.
    pub t: Tensor,
    /// Standard normal noise `[B·K, C, H, W]`.
    pub noise: Tensor,
    /// Labels after class dropout, int64 `[B·K]`.
    pub labels: Tensor,
}

/// Draws timesteps, noise and class dropout for `x0` `[B, C, H, W]` with `labels` `[B]`, on
/// `x0`'s device with libtorch's generator (seed it with `tch::manual_seed`).
pub fn draw(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    labels: &Tensor,
    cfg: &LossConfig,
    null_class: Option<i64>,
) -> Result<Draws> {
    check(x0, labels, cfg)?;
    let k = cfg.repeats;
    let rows = x0.size()[0] * k;
    let device = x0.device();
    let t = Tensor::randint(
        schedule.num_train_timesteps() as i64,
        [rows],
        (Kind::Int64, device),
    );
    let mut shape = x0.size();
    shape[0] = rows;
    let noise = Tensor::randn(shape.as_slice(), (x0.kind(), device));
    let mut labels = labels
        .to_device(device)
        .to_kind(Kind::Int64)
        .repeat_interleave_self_int(k, 0, Some(rows));
    if let Some(null) = null_class {
        if cfg.class_dropout > 0.0 {
            let drop = Tensor::rand([rows], (Kind::Float, device)).lt(cfg.class_dropout);
            labels = labels.where_self(&drop.logical_not(), &Tensor::from(null).to_device(device));
        }
    }
    Ok(Draws { t, noise, labels })
}

/// Per-row loss `mean_{C,H,W} (ε_θ(x_t, t, y) − ε)²` for the given draws, shape `[B·K]`.
///
/// `x0` is `[B, C, H, W]`; each example is repeated `K = draws.t.size()[0] / B` times.
pub fn eps_loss_with(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    draws: &Draws,
) -> Tensor {
    let b = x0.size()[0];
    let rows = draws.t.size()[0];
    let x0 = x0.repeat_interleave_self_int(rows / b.max(1), 0, Some(rows));
    let x_t = schedule.add_noise(&x0, &draws.noise, &draws.t);
    let eps = model.predict_eps(&x_t, &draws.t, &draws.labels);
    (eps - &draws.noise)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float)
}

/// Draws K (timestep, noise) pairs per example and class dropout, then returns the per-row
/// loss `[B·K]` (rows example-major: row r belongs to example r / K).
pub fn eps_loss(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    labels: &Tensor,
    cfg: &LossConfig,
) -> Result<Tensor> {
    let draws = draw(schedule, x0, labels, cfg, model.null_class())?;
    Ok(eps_loss_with(model, schedule, x0, &draws))
}

/// Averages a per-row loss `[B·K]` over each example's K rows, giving `[B]`.
pub fn per_example(row_loss: &Tensor, repeats: i64) -> Tensor {
    row_loss.view([-1, repeats]).mean_dim(1, false, Kind::Float)
}

fn check(x0: &Tensor, labels: &Tensor, cfg: &LossConfig) -> Result<()> {
    ensure!(
        cfg.repeats >= 1,
        "loss repeats K must be >= 1, got {}",
        cfg.repeats
    );
    ensure!(
        (0.0..=1.0).contains(&cfg.class_dropout),
        "class dropout must be a probability, got {}",
        cfg.class_dropout
    );
    ensure!(
        x0.dim() == 4,
        "images must be [B, C, H, W], got {:?}",
        x0.size()
    );
    ensure!(
        labels.size() == [x0.size()[0]],
        "labels must be [{}], got {:?}",
        x0.size()[0],
        labels.size()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Predicts zero noise: the per-row loss is then the mean square of the drawn noise.
    struct Zero;
    impl EpsModel for Zero {
        fn predict_eps(&self, x: &Tensor, _t: &Tensor, _labels: &Tensor) -> Tensor {
            x.zeros_like()
        }
        fn null_class(&self) -> Option<i64> {
            Some(10)
        }
    }

    #[test]
    fn rows_are_example_major() {
        tch::manual_seed(0);
        let s = NoiseSchedule::linear(1000).unwrap();
        let x0 = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, 2, 3]);
        let cfg = LossConfig {
            repeats: 4,
            class_dropout: 0.0,
        };
        let d = draw(&s, &x0, &labels, &cfg, Some(10)).unwrap();
        assert_eq!(d.t.size(), [12]);
        assert_eq!(d.noise.size(), [12, 1, 4, 4]);
        let got: Vec<i64> = Vec::try_from(&d.labels).unwrap();
        assert_eq!(got, vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
        let loss = eps_loss_with(&Zero, &s, &x0, &d);
        assert_eq!(loss.size(), [12]);
        let want = d
            .noise
            .square()
            .flatten(1, -1)
            .mean_dim(1, false, Kind::Float);
        assert!(loss.allclose(&want, 1e-6, 1e-6, false));
        assert_eq!(per_example(&loss, 4).size(), [3]);
    }

    #[test]
    fn class_dropout_uses_the_null_class() {
        tch::manual_seed(1);
        let s = NoiseSchedule::linear(1000).unwrap();
        let x0 = Tensor::zeros([1000, 1, 2, 2], (Kind::Float, Device::Cpu));
        let labels = Tensor::zeros([1000], (Kind::Int64, Device::Cpu));
        let cfg = LossConfig {
            repeats: 2,
            class_dropout: 0.1,
        };
        let d = draw(&s, &x0, &labels, &cfg, Some(10)).unwrap();
        let nulls = d.labels.eq(10).sum(Kind::Int64).int64_value(&[]);
        let zeros = d.labels.eq(0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(nulls + zeros, 2000);
        assert!((120..=280).contains(&nulls), "{nulls} of 2000 dropped");
    }

    #[test]
    fn bad_input_is_an_error() {
        let s = NoiseSchedule::linear(10).unwrap();
        let x0 = Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let labels = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        assert!(eps_loss(&Zero, &s, &x0, &labels, &LossConfig::default()).is_err());
        let labels = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let k0 = LossConfig {
            repeats: 0,
            ..LossConfig::default()
        };
        assert!(eps_loss(&Zero, &s, &x0, &labels, &k0).is_err());
    }
}
