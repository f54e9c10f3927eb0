//! SGD, Adam and AdamW over explicit (parameter, gradient) pairs.
//!
//! The private gradients come out of [`super::DpSgd::finish_step`] as plain tensors, outside
//! autograd. tch's `nn::Optimizer` reads gradients from the parameters' `.grad`, which tch 0.24
//! cannot set directly (it has no `set_grad`), and it optimises every trainable variable of a
//! whole `VarStore`. Applying the updates ourselves keeps `.grad` untouched (a test checks that
//! DP-SGD never fills it), works for any parameter subset (adapters) and makes the update rule
//! explicit. The formulas follow `torch.optim` (SGD with momentum and L2 weight decay, Adam with
//! bias correction and L2 weight decay, AdamW with decoupled weight decay).

use anyhow::{ensure, Result};
use tch::Tensor;

/// Which update rule to apply, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// `buf = μ·buf + (g + λp)`; `p -= lr·buf` (plain SGD when μ = 0).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum μ.
        momentum: f64,
        /// L2 weight decay λ added to the gradient.
        weight_decay: f64,
    },
    /// Adam with L2 weight decay added to the gradient.
    Adam {
        /// Learning rate.
        lr: f64,
        /// (β1, β2).
        betas: (f64, f64),
        /// Denominator epsilon.
        eps: f64,
        /// L2 weight decay added to the gradient.
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay `p *= 1 - lr·λ`.
    AdamW {
        /// Learning rate.
        lr: f64,
        /// (β1, β2).
        betas: (f64, f64),
        /// Denominator epsilon.
        eps: f64,
        /// Decoupled weight decay λ.
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    fn lr(&self) -> f64 {
        match *self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } | Self::AdamW { lr, .. } => lr,
        }
    }
}

/// An optimizer over a fixed list of parameters.
#[derive(Debug)]
pub struct Optimizer {
    params: Vec<Tensor>,
    cfg: OptimizerConfig,
    lr: f64,
    /// Per-parameter multipliers of the learning rate (1 unless set).
    lr_scales: Vec<f64>,
    /// Momentum buffer (SGD) or first moment (Adam); created on the first step.
    first: Vec<Option<Tensor>>,
    /// Second moment (Adam).
    second: Vec<Option<Tensor>>,
    steps: i32,
}

impl Optimizer {
    /// Creates the optimizer; the learning rate starts at the config's and can be changed.
    pub fn new(params: Vec<Tensor>, cfg: OptimizerConfig) -> Result<Self> {
        ensure!(
            cfg.lr().is_finite() && cfg.lr() >= 0.0,
            "learning rate must be non-negative, got {}",
            cfg.lr()
        );
        let n = params.len();
        Ok(Self {
            params,
            lr: cfg.lr(),
            lr_scales: vec![1.0; n],
            cfg,
            first: (0..n).map(|_| None).collect(),
            second: (0..n).map(|_| None).collect(),
            steps: 0,
        })
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate (schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Multiplies parameter `i`'s learning rate by `scale` (e.g. a faster class embedding). Not
    /// part of [`Optimizer::named_state`]: set it again after a restore.
    pub fn set_lr_scale(&mut self, i: usize, scale: f64) -> Result<()> {
        ensure!(
            i < self.params.len(),
            "parameter {i} of {}",
            self.params.len()
        );
        ensure!(
            scale.is_finite() && scale >= 0.0,
            "learning-rate scale must be non-negative, got {scale}"
        );
        self.lr_scales[i] = scale;
        Ok(())
    }

    /// The optimizer's state as named tensors for a checkpoint: the moments that exist, as
    /// `{prefix}first.{i}` / `{prefix}second.{i}`, and the step count as `{prefix}steps`.
    pub fn named_state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![(format!("{prefix}steps"), Tensor::from(self.steps as i64))];
        for (kind, bufs) in [("first", &self.first), ("second", &self.second)] {
            for (i, b) in bufs.iter().enumerate() {
                if let Some(b) = b {
                    out.push((format!("{prefix}{kind}.{i}"), b.shallow_clone()));
                }
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::named_state`] (same parameter list), checking
    /// shapes; moments absent from `saved` stay unset.
    pub fn restore(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<()> {
        let steps = saved
            .get(&format!("{prefix}steps"))
            .ok_or_else(|| anyhow::anyhow!("checkpoint has no optimizer state '{prefix}steps'"))?;
        self.steps = i32::try_from(steps.int64_value(&[]))?;
        for (kind, bufs) in [("first", &mut self.first), ("second", &mut self.second)] {
            for (i, b) in bufs.iter_mut().enumerate() {
                let name = format!("{prefix}{kind}.{i}");
                if let Some(t) = saved.get(&name) {
                    ensure!(
                        t.size() == self.params[i].size(),
                        "optimizer state '{name}' has shape {:?}, parameter {i} has {:?}",
                        t.size(),
                        self.params[i].size()
                    );
                    *b = Some(
                        t.to_kind(self.params[i].kind())
                            .to_device(self.params[i].device()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Updates every parameter in place with its gradient (same order as at construction).
    pub fn step(&mut self, grads: &[Tensor]) -> Result<()> {
        ensure!(
            grads.len() == self.params.len(),
            "{} gradients for {} parameters",
            grads.len(),
            self.params.len()
        );
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            ensure!(
                p.size() == g.size(),
                "gradient {i} has shape {:?}, parameter {:?}",
                g.size(),
                p.size()
            );
        }
        let _no_grad = tch::no_grad_guard();
        self.steps += 1;
        for (i, g) in grads.iter().enumerate() {
            self.update(i, g)?;
        }
        Ok(())
    }

    /// Applies the configured rule to parameter `i` with gradient `g` (grad mode off).
    fn update(&mut self, i: usize, g: &Tensor) -> Result<()> {
        let lr = self.lr * self.lr_scales[i];
        let mut p = self.params[i].shallow_clone();
        let g = g.f_to_kind(p.kind())?.f_to_device(p.device())?;
        match self.cfg {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                let g = if weight_decay != 0.0 {
                    g + &p * weight_decay
                } else {
                    g
                };
                let dir = if momentum != 0.0 {
                    let buf = match self.first[i].take() {
                        Some(b) => b * momentum + g,
                        None => g,
                    };
                    self.first[i] = Some(buf.shallow_clone());
                    buf
                } else {
                    g
                };
                let _ = p.f_sub_(&(dir * lr))?;
            }
            OptimizerConfig::Adam {
                betas,
                eps,
                weight_decay,
                ..
            }
            | OptimizerConfig::AdamW {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                let decoupled = matches!(self.cfg, OptimizerConfig::AdamW { .. });
                let g = if weight_decay != 0.0 && !decoupled {
                    g + &p * weight_decay
                } else {
                    g
                };
                if decoupled && weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                let (b1, b2) = betas;
                let m = match self.first[i].take() {
                    Some(m) => m * b1 + &g * (1.0 - b1),
                    None => &g * (1.0 - b1),
                };
                let v = match self.second[i].take() {
                    Some(v) => v * b2 + g.square() * (1.0 - b2),
                    None => g.square() * (1.0 - b2),
                };
                let bc1 = 1.0 - b1.powi(self.steps);
                let bc2 = 1.0 - b2.powi(self.steps);
                let denom = (&v / bc2).sqrt() + eps;
                let _ = p.f_sub_(&(&m / &denom * (lr / bc1)))?;
                self.first[i] = Some(m);
                self.second[i] = Some(v);
            }
        }
        Ok(())
    }
}
