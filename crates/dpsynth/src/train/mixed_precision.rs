//! Mixed-precision training steps: the gradients of a float32 U-Net computed on a bfloat16
//! copy of it (refreshed from the float32 weights before each step), so that the optimizer, the
//! EMA and the checkpoints stay float32. Pretraining uses it (`train.precision`); DP training
//! does not, since the per-example norms DP-SGD clips must be those of what it sums.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::diffusion::precision::{Cast, Precision};
use crate::nn::unet::{UNet, UNetConfig};

/// Where a training step's gradients are computed: on the float32 model itself, or on a
/// bfloat16 copy of it refreshed before each step (mixed precision).
pub enum StepPrecision {
    /// On the model.
    Float32,
    /// On a bfloat16 copy.
    Bfloat16 {
        /// The copy (boxed: the other variant holds nothing).
        copy: Box<UNet>,
        /// The copy's weights by name.
        tensors: HashMap<String, Tensor>,
    },
}

impl StepPrecision {
    /// Gradients in `precision` for a U-Net of `config` on `device` (a bfloat16 copy draws its
    /// initial weights from libtorch's generator: build this before seeding).
    pub fn new(config: &UNetConfig, precision: Precision, device: Device) -> Result<Self> {
        Ok(match precision {
            Precision::Float32 => Self::Float32,
            Precision::Bfloat16 => {
                let mut copy = UNet::new(config.clone(), device)?;
                precision.convert(&mut copy.vs);
                let tensors = copy.vs.variables();
                Self::Bfloat16 {
                    copy: Box::new(copy),
                    tensors,
                }
            }
        })
    }

    /// The loss `loss` computes (float32, from a model called through [`Cast`]) and its
    /// float32 gradients with respect to `params`, named weights of `model`, in their order.
    pub fn loss_and_grads(
        &self,
        model: &UNet,
        params: &[(String, Tensor)],
        loss: impl Fn(&Cast<UNet>) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        match self {
            Self::Float32 => {
                let l = loss(&Cast(model))?;
                let inputs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
                let grads = Tensor::run_backward(&[&l], &inputs, false, false);
                Ok((l, grads))
            }
            Self::Bfloat16 { copy, tensors } => {
                let mut low = Vec::with_capacity(params.len());
                for (name, weight) in params {
                    let t = tensors
                        .get(name)
                        .with_context(|| format!("the bfloat16 copy has no weight {name}"))?;
                    // a copy between kinds rounds to bfloat16
                    tch::no_grad(|| t.shallow_clone().copy_(weight));
                    low.push(t);
                }
                let l = loss(&Cast(&**copy))?;
                let grads = Tensor::run_backward(&[&l], &low, false, false);
                Ok((l, grads.iter().map(|g| g.to_kind(Kind::Float)).collect()))
            }
        }
    }
}
