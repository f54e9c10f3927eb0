//! The sampling loop with classifier-free guidance, shared by the samplers: DDPM (ancestral,
//! `super::ddpm`), DDIM (`super::ddim`) and DPM-Solver++ (2M, `super::dpm_solver`), each an
//! update rule behind [`Step`].
//!
//! All walk a decreasing list of timesteps (all `T` of them, or `num_steps` spaced "leading" or
//! "trailing" as in diffusers), predicting ε with guidance
//! `ε = ε_uncond + w (ε_cond − ε_uncond)` from one forward pass over `2B` rows (conditional rows
//! then null-class rows), estimating `x̂0` (clipped to [-1, 1] like diffusers' `clip_sample`) and
//! stepping to the next timestep. Noise comes from per-image seeded streams
//! ([`ImageNoise`]), so a run is repeatable and an image does not depend on its batch.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::ddim::Ddim;
use super::ddpm::Ddpm;
use super::dpm_solver::DpmState;
use super::noise::ImageNoise;
use super::precision::{Cast, Precision};
use super::{EpsModel, NoiseSchedule};

/// How `num_steps` inference timesteps are picked from `0..T` (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    /// `t_i = i · ⌊T / n⌋`, i = n−1 … 0 (ends at t = 0).
    Leading,
    /// `t_i = round(T − i · T / n) − 1`, i = 0 … n−1 (starts at t = T − 1).
    Trailing,
    /// The first `n` of `round(linspace(0, T − 1, n + 1))` reversed (starts at t = T − 1;
    /// numpy's round, half to even), diffusers' default for DPM-Solver.
    Linspace,
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Ancestral sampling from the DDPM posterior with the "fixed small" variance.
    Ddpm,
    /// DDIM; `eta` = 0 is deterministic, 1 matches DDPM's variance.
    Ddim {
        /// Scale of the per-step noise.
        eta: f64,
    },
    /// DPM-Solver++ (2M): deterministic, second order in log-SNR, good images in 10-20 steps.
    DpmSolver,
}

impl SamplerKind {
    /// "DDPM", "DDIM" or "DPM-Solver++(2M)", for reports (DDIM's η is not named).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim { .. } => "DDIM",
            Self::Ddpm => "DDPM",
            Self::DpmSolver => "DPM-Solver++(2M)",
        }
    }
}

/// A sampler as users name it (`dpsynth sample --sampler`, `sampler` in a run config's
/// `[sample]` table): its update rule and how its timesteps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerChoice {
    /// DDPM ancestral sampling (the default: clean images in few steps and stable under
    /// guidance).
    #[default]
    Ddpm,
    /// DDIM (deterministic with η = 0). With guidance above 1 it can draw broken images from
    /// small models.
    Ddim,
    /// DPM-Solver++ (2M), as diffusers' DPMSolverMultistepScheduler: deterministic, second
    /// order, over "linspace" timesteps.
    Dpm,
}

impl SamplerChoice {
    /// The update rule, with DDIM's η.
    pub fn kind(self, eta: f64) -> SamplerKind {
        match self {
            Self::Ddim => SamplerKind::Ddim { eta },
            Self::Ddpm => SamplerKind::Ddpm,
            Self::Dpm => SamplerKind::DpmSolver,
        }
    }

    /// How its timesteps are spaced: "leading" for DDPM and DDIM, diffusers' "linspace" for
    /// DPM-Solver.
    pub fn spacing(self) -> Spacing {
        match self {
            Self::Ddim | Self::Ddpm => Spacing::Leading,
            Self::Dpm => Spacing::Linspace,
        }
    }

    /// The sampler settings of `num_steps` steps at guidance `guidance_scale`, `batch_size`
    /// images per forward pass, with DDIM's `eta`, x̂0 clipped to [-1, 1].
    pub fn config(
        self,
        num_steps: usize,
        guidance_scale: f64,
        batch_size: usize,
        eta: f64,
    ) -> SamplerConfig {
        SamplerConfig {
            kind: self.kind(eta),
            num_steps,
            spacing: self.spacing(),
            guidance_scale,
            batch_size,
            clip_sample: true,
            precision: Precision::Float32,
        }
    }
}

/// Options of [`sample`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Update rule.
    pub kind: SamplerKind,
    /// Number of denoising steps (≤ T).
    pub num_steps: usize,
    /// How the steps are spaced.
    pub spacing: Spacing,
    /// Classifier-free guidance weight w (1 = conditional model only, 0 = unconditional only).
    pub guidance_scale: f64,
    /// Images per forward pass (each pass runs 2× as many rows when guiding).
    pub batch_size: usize,
    /// Clip the x̂0 estimate to [-1, 1] at each step (diffusers' `clip_sample`).
    pub clip_sample: bool,
    /// The number format of the model's forward passes; the model's weights must be in it
    /// ([`crate::synth::ModelDir::set_precision`]). Absent from reports older than the key:
    /// float32.
    #[serde(default)]
    pub precision: Precision,
}

impl SamplerConfig {
    /// DDIM with `num_steps` steps, η = 0, "leading" spacing, guidance `w`, batches of 256.
    pub fn ddim(num_steps: usize, guidance_scale: f64) -> Self {
        Self {
            kind: SamplerKind::Ddim { eta: 0.0 },
            num_steps,
            spacing: Spacing::Leading,
            guidance_scale,
            batch_size: 256,
            clip_sample: true,
            precision: Precision::Float32,
        }
    }

    /// DDPM ancestral sampling over `num_steps` "leading" timesteps (all `T` of them for the
    /// original sampler), guidance `w`, batches of 256. dpsynth's default: with guidance, or with
    /// few steps, it draws far cleaner images than deterministic DDIM from the small shipped
    /// models (ARCHITECTURE.md, "Sampler").
    pub fn ddpm(num_steps: usize, guidance_scale: f64) -> Self {
        Self {
            kind: SamplerKind::Ddpm,
            num_steps,
            spacing: Spacing::Leading,
            guidance_scale,
            batch_size: 256,
            clip_sample: true,
            precision: Precision::Float32,
        }
    }
}

impl SamplerConfig {
    /// DPM-Solver++ (2M) over `num_steps` "linspace" timesteps (diffusers' defaults), guidance
    /// `w`, batches of 256, x̂0 clipped to [-1, 1] as the other samplers do.
    pub fn dpm(num_steps: usize, guidance_scale: f64) -> Self {
        Self {
            kind: SamplerKind::DpmSolver,
            spacing: Spacing::Linspace,
            ..Self::ddpm(num_steps, guidance_scale)
        }
    }
}

/// The decreasing inference timesteps, as diffusers' `set_timesteps` with `steps_offset = 0`.
pub fn timesteps(
    num_train_timesteps: usize,
    num_steps: usize,
    spacing: Spacing,
) -> Result<Vec<i64>> {
    let (t_max, n) = (num_train_timesteps, num_steps);
    ensure!(
        (1..=t_max).contains(&n),
        "number of sampling steps must be in 1..={t_max}, got {n}"
    );
    let ts: Vec<i64> = match spacing {
        Spacing::Leading => {
            let ratio = (t_max / n) as i64;
            (0..n as i64).rev().map(|i| i * ratio).collect()
        }
        Spacing::Trailing => {
            let ratio = t_max as f64 / n as f64;
            (0..n)
                .map(|i| (t_max as f64 - i as f64 * ratio).round() as i64 - 1)
                .collect()
        }
        Spacing::Linspace => {
            // as numpy: k · step with step = last / n, the end point exact
            let last = (t_max - 1) as f64;
            let step = last / n as f64;
            (1..=n)
                .rev()
                .map(|k| {
                    let v = if k == n { last } else { k as f64 * step };
                    v.round_ties_even() as i64
                })
                .collect()
        }
    };
    Ok(ts)
}

/// A sampler's update rule: from `x_t` and the model's (guided) ε at `t` to `x_{t_prev}`. Each
/// sampler is one file implementing it ([`super::ddpm`], [`super::ddim`],
/// [`super::dpm_solver`]) and one [`SamplerKind`] variant; the loop in [`sample`] is shared.
pub trait Step {
    /// Whether the rule adds fresh noise at every step but the last (then `noise` is given).
    fn stochastic(&self) -> bool;

    /// One update from `t` to `t_prev` (`t_prev < 0`: the clean image). `noise` is standard
    /// normal, of `x`'s shape, when [`Step::stochastic`] and `t_prev >= 0`.
    fn step(
        &mut self,
        schedule: &NoiseSchedule,
        x: &Tensor,
        eps: &Tensor,
        t: (i64, i64),
        clip_sample: bool,
        noise: Option<&Tensor>,
    ) -> Tensor;
}

impl SamplerKind {
    /// A fresh update rule of this kind (multistep rules keep state between steps).
    pub fn stepper(self) -> Box<dyn Step> {
        match self {
            Self::Ddpm => Box::new(Ddpm),
            Self::Ddim { eta } => Box::new(Ddim { eta }),
            Self::DpmSolver => Box::new(DpmState::default()),
        }
    }
}

/// Predicted clean image `x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t`, optionally clipped to [-1, 1].
pub(crate) fn predict_x0(x: &Tensor, eps: &Tensor, alpha_bar: f64, clip: bool) -> Tensor {
    let x0 = (x - eps * (1.0 - alpha_bar).sqrt()) / alpha_bar.sqrt();
    if clip {
        x0.clamp(-1.0, 1.0)
    } else {
        x0
    }
}

/// Guided ε for a batch: one forward over `[x; x]` with `[labels; null]` when guiding.
fn guided_eps(
    model: &impl EpsModel,
    x: &Tensor,
    t: i64,
    labels: &Tensor,
    w: f64,
    null: Option<i64>,
) -> Tensor {
    let b = x.size()[0];
    let device = x.device();
    let tt = Tensor::full([b], t, (Kind::Int64, device));
    match null {
        Some(null) if w != 1.0 => {
            let nulls = Tensor::full([b], null, (Kind::Int64, device));
            let eps = model.predict_eps(
                &Tensor::cat(&[x, x], 0),
                &Tensor::cat(&[&tt, &tt], 0),
                &Tensor::cat(&[labels, &nulls], 0),
            );
            let (cond, uncond) = (eps.narrow(0, 0, b), eps.narrow(0, b, b));
            &uncond + (cond - &uncond) * w
        }
        _ => model.predict_eps(x, &tt, labels),
    }
}

/// Generates one image per entry of `labels`, each of shape `shape` (`[C, H, W]`), with the
/// images' noise streams seeded by `seed`. Runs under `no_grad` on `device`, `cfg.batch_size`
/// images at a time, and returns float32 `[N, C, H, W]` on the CPU clamped to [-1, 1].
pub fn sample(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    labels: &[i64],
    shape: [i64; 3],
    cfg: &SamplerConfig,
    seed: u64,
    device: Device,
) -> Result<Tensor> {
    sample_with_progress(
        model,
        schedule,
        labels,
        shape,
        cfg,
        seed,
        device,
        &mut |_| {},
    )
}

/// [`sample`], calling `progress(images_done)` after each batch (for progress bars).
#[allow(clippy::too_many_arguments)]
pub fn sample_with_progress(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    labels: &[i64],
    shape: [i64; 3],
    cfg: &SamplerConfig,
    seed: u64,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor> {
    sample_from(
        model, schedule, labels, 0, shape, cfg, seed, device, progress,
    )
}

/// [`sample_with_progress`] for the images `first..first + labels.len()` of a run: `labels`
/// are those images' labels, each image gets its own noise stream (image index, `seed`), so
/// the images are those an uninterrupted run from image 0 draws (what lets sampling resume,
/// [`crate::synth::resume`]). `progress` counts the `first` images as done.
#[allow(clippy::too_many_arguments)]
pub fn sample_from(
    model: &impl EpsModel,
    schedule: &NoiseSchedule,
    labels: &[i64],
    first: usize,
    shape: [i64; 3],
    cfg: &SamplerConfig,
    seed: u64,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor> {
    let ts = timesteps(schedule.num_train_timesteps(), cfg.num_steps, cfg.spacing)?;
    ensure!(cfg.batch_size >= 1, "sampler batch size must be >= 1");
    ensure!(
        shape.iter().all(|&d| d > 0),
        "image shape must be positive, got {shape:?}"
    );
    if let SamplerKind::Ddim { eta } = cfg.kind {
        ensure!(eta >= 0.0, "DDIM eta must be >= 0, got {eta}");
    }
    ensure!(
        model.weight_kind() == cfg.precision.kind(),
        "the model's weights are {:?} but sampling runs in {}: convert the model first \
         (ModelDir::set_precision)",
        model.weight_kind(),
        cfg.precision.name()
    );
    // the update rules' arithmetic stays in float32 whatever the model's kind
    let model = &Cast(model);
    let null = model.null_class();
    if cfg.guidance_scale != 1.0 && null.is_none() {
        bail!(
            "guidance scale {} needs a class-conditional model with a null class",
            cfg.guidance_scale
        );
    }
    if let Some(null) = null {
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l > null) {
            bail!("class label {bad} is outside 0..={null} (the last is the null class)");
        }
    }
    let mut out = Vec::new();
    for (chunk_index, chunk) in labels.chunks(cfg.batch_size).enumerate() {
        let first = first + chunk_index * cfg.batch_size;
        let mut noise = ImageNoise::new(seed, first, chunk.len(), shape);
        let y = Tensor::from_slice(chunk).to_device(device);
        let x = noise.next(device);
        let t0 = Tensor::full([chunk.len() as i64], ts[0], (Kind::Int64, device));
        model.check_input(&x, &t0, &y)?;
        let images = tch::no_grad(|| {
            let mut x = x;
            let mut rule = cfg.kind.stepper();
            for (i, &t) in ts.iter().enumerate() {
                let t_prev = ts.get(i + 1).copied().unwrap_or(-1);
                let eps = guided_eps(model, &x, t, &y, cfg.guidance_scale, null);
                let z = (rule.stochastic() && t_prev >= 0).then(|| noise.next(device));
                x = rule.step(schedule, &x, &eps, (t, t_prev), cfg.clip_sample, z.as_ref());
            }
            x.clamp(-1.0, 1.0).to_device(Device::Cpu)
        });
        out.push(images);
        progress(first + chunk.len());
    }
    if out.is_empty() {
        let [c, h, w] = shape;
        return Ok(Tensor::zeros([0, c, h, w], (Kind::Float, Device::Cpu)));
    }
    Ok(Tensor::cat(&out, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings() {
        assert_eq!(
            timesteps(1000, 4, Spacing::Leading).unwrap(),
            [750, 500, 250, 0]
        );
        assert_eq!(
            timesteps(1000, 4, Spacing::Trailing).unwrap(),
            [999, 749, 499, 249]
        );
        assert_eq!(
            timesteps(10, 10, Spacing::Leading).unwrap(),
            (0..10).rev().collect::<Vec<_>>()
        );
        assert!(timesteps(10, 0, Spacing::Leading).is_err());
        assert!(timesteps(10, 11, Spacing::Trailing).is_err());
    }
}
