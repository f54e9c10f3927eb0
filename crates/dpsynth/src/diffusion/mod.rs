//! Diffusion math: noise schedules, the ε-prediction training loss, the samplers (one file per
//! update rule: `ddpm`, `ddim`, `dpm_solver`; the guided loop in `sampler`), an exponential moving average of weights, and the held-out loss
//! that scores a model on public or test images.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod ema;
pub mod heldout;
pub mod loss;
pub mod noise;
pub mod precision;
pub mod sampler;
pub mod schedule;

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::nn::unet::UNet;

pub use schedule::{BetaSchedule, NoiseSchedule};

/// A network that predicts the noise ε in `x_t` (what the loss trains and the samplers call).
pub trait EpsModel {
    /// ε for `x` `[B, C, H, W]` at int64 timesteps `t` `[B]` with int64 class labels `[B]`.
    fn predict_eps(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Tensor;

    /// The label that means "no class" (classifier-free guidance and class dropout); `None` for
    /// an unconditional model.
    fn null_class(&self) -> Option<i64>;

    /// Checks one batch of inputs before a run, so bad input is an error rather than a
    /// libtorch panic. The default accepts everything.
    fn check_input(&self, _x: &Tensor, _t: &Tensor, _labels: &Tensor) -> Result<()> {
        Ok(())
    }

    /// The kind of the model's weights, which its inputs must have (samplers cast to it). The
    /// default is float32.
    fn weight_kind(&self) -> Kind {
        Kind::Float
    }
}

impl EpsModel for UNet {
    fn predict_eps(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Tensor {
        self.forward(x, t, labels)
    }

    fn null_class(&self) -> Option<i64> {
        UNet::null_class(self)
    }

    fn check_input(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<()> {
        UNet::check_input(self, x, t, labels)
    }

    fn weight_kind(&self) -> Kind {
        self.conv_in.weight.kind()
    }
}
