//! `dpsynth sample`: a labelled synthetic dataset from a model folder.

use std::path::PathBuf;

use crate::progress::{resumed_line, Progress};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use dpsynth::data::{grid, imagefolder};
use dpsynth::diffusion::precision::PrecisionChoice;
use dpsynth::diffusion::sampler::{SamplerChoice, SamplerConfig};
use dpsynth::fsutil::write_atomic;
use dpsynth::synth::load_model_dir;
use dpsynth::synth::resume::{self, Sampling, PART_IMAGES};
use tch::Device;

/// `--sampler`: the library's [`SamplerChoice`] on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sampler {
    /// DDPM ancestral sampling over --steps evenly spaced timesteps (the default: clean images
    /// in few steps and stable under guidance).
    Ddpm,
    /// DDIM (deterministic with --eta 0). With guidance above 1 it can draw broken images from
    /// small models.
    Ddim,
    /// DPM-Solver++ (2M), as diffusers' DPMSolverMultistepScheduler: deterministic, second
    /// order, over "linspace" timesteps.
    Dpm,
}

impl From<Sampler> for SamplerChoice {
    fn from(s: Sampler) -> Self {
        match s {
            Sampler::Ddpm => Self::Ddpm,
            Sampler::Ddim => Self::Ddim,
            Sampler::Dpm => Self::Dpm,
        }
    }
}

/// `--precision`: the library's [`PrecisionChoice`] on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// bfloat16 where the CPU computes it natively (AVX512-BF16), else float32.
    Auto,
    /// float32 always.
    Float32,
    /// bfloat16 always (emulated, and slow, on CPUs without AVX512-BF16).
    Bfloat16,
}

impl From<PrecisionArg> for PrecisionChoice {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Auto => Self::Auto,
            PrecisionArg::Float32 => Self::Float32,
            PrecisionArg::Bfloat16 => Self::Bfloat16,
        }
    }
}

#[derive(Args)]
pub struct SampleArgs {
    /// Model folder (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json,
    /// classes.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Images per class.
    #[arg(long, default_value_t = 100)]
    pub per_class: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale w (1: no guidance, one forward per step).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Sampler.
    #[arg(long, value_enum, default_value = "ddpm")]
    pub sampler: Sampler,
    /// DDIM η (0: deterministic); only with --sampler ddim.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Number format of the model while sampling (the model folder is not changed).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: images/ (ImageFolder), grid.png, report.json. Must not hold images/ (a
    /// finished sampling). While sampling, sampling/partial.safetensors there keeps the finished
    /// images; the same command run again resumes after them.
    #[arg(long)]
    pub out: PathBuf,
}

impl SampleArgs {
    /// The sampler settings these flags describe, on `device`.
    pub fn sampler_config(&self, device: Device) -> SamplerConfig {
        SamplerConfig {
            precision: PrecisionChoice::from(self.precision).resolve(device),
            ..SamplerChoice::from(self.sampler).config(
                self.steps,
                self.guidance,
                self.batch,
                self.eta,
            )
        }
    }
}

/// Runs `dpsynth sample`, resuming the progress file an interrupted run left in `--out`.
pub fn run(a: SampleArgs, device: Device) -> Result<()> {
    anyhow::ensure!(a.per_class > 0, "--per-class must be at least 1");
    anyhow::ensure!(
        !a.out.join("images").exists(),
        "{}: already holds images/ (a finished sampling); choose another --out",
        a.out.display()
    );
    anyhow::ensure!(
        a.eta == 0.0 || matches!(a.sampler, Sampler::Ddim),
        "--eta {} applies to --sampler ddim only (DDPM's noise is fixed)",
        a.eta
    );
    let mut model = load_model_dir(&a.model, device)?;
    let cfg = a.sampler_config(device);
    model.prepare_sampling(cfg.precision)?;
    let sampling = Sampling::open(&model, a.per_class, &cfg, a.seed, &a.out, PART_IMAGES)?;
    let total = sampling.total();
    let bar = Progress::new(total as u64, "images");
    if sampling.resumed() > 0 {
        let done = sampling.resumed() as u64;
        eprintln!("{}", resumed_line(done, total as u64, sampling.file()));
        bar.start_at(done);
    }
    let sampled = sampling.run(&mut |n| bar.set_position(n as u64))?;
    // over every run that sampled some of the images
    let (ds, secs) = (sampled.dataset, sampled.seconds);
    bar.finish();
    imagefolder::write(&ds, &a.out.join("images"))?;
    grid::write_grid(&ds, a.per_class.min(10), 2, &a.out.join("grid.png"))?;
    resume::remove(&a.out)?;
    let report = serde_json::json!({
        "command": "sample",
        "model": a.model,
        "images": total,
        "per_class": a.per_class,
        "classes": model.classes,
        "sampler": cfg,
        "seed": a.seed,
        "seconds": secs,
        "images_per_second": total as f64 / secs,
    });
    let path = a.out.join("report.json");
    write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{total} images in {secs:.1}s ({:.1}/s): {}/images, grid {}/grid.png",
        total as f64 / secs,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
