//! Benchmark: one guided sampling step of the shipped CIFAR-10 base, plain and with LoDA
//! adapters, in one process.
//!
//! - `base`: the U-Net alone, which is also what full fine-tuning and merged LoRA sample with;
//! - `loda`: the same U-Net with LoDA adapters at the run defaults' placement (rank 4, α = 4,
//!   SiLU, ResNet convs), their zero-initialised maps made non-zero as after fine-tuning.
//!
//! A step is one forward pass of the denoiser, outside autograd, in the sampling precision
//! `auto` picks on this CPU ([`PrecisionChoice::Auto`]) and through the same [`Cast`] the
//! samplers use, over `2 × batch` rows: a classifier-free guided step of `batch` images (the
//! conditional and the null-class rows). Steps are interleaved rep by rep so that load from
//! other processes hits both alike; the report gives medians of wall-clock and process CPU time
//! and LoDA's ratio to the base. See `bench/README.md`.

#[allow(dead_code)] // the peak-memory helpers: sampling's memory is not what this measures
mod common;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use dpsynth::diffusion::precision::{Cast, PrecisionChoice};
use dpsynth::diffusion::EpsModel;
use dpsynth::nn::adapter::{attach, AdapterConfig, AdapterKind};
use dpsynth::synth::{load_model_dir, ModelDir};
use tch::{nn, Device, Kind, Tensor};

use common::Samples;

/// The kinds of step, in the order they are timed within a rep.
const KINDS: [&str; 2] = ["base", "loda"];

#[derive(Debug, Clone)]
struct Args {
    base: PathBuf,
    batch: i64,
    reps: usize,
    warmup: usize,
    threads: Option<i32>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        base: PathBuf::from("models/cifar-base"),
        batch: 250,
        reps: 10,
        warmup: 2,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => args.base = PathBuf::from(value()?),
            "--batch" => args.batch = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--threads" => args.threads = Some(value()?.parse()?),
            f => bail!("unknown flag {f} (flags: --base --batch --reps --warmup --threads)"),
        }
    }
    ensure!(
        args.batch > 0 && args.reps > 0,
        "--batch and --reps must be positive"
    );
    Ok(args)
}

/// The base model folder with LoDA adapters attached, every adapter weight non-zero.
fn with_loda(base: &Path) -> Result<ModelDir> {
    let mut model = load_model_dir(base, Device::Cpu)?;
    let store = nn::VarStore::new(Device::Cpu);
    let cfg = AdapterConfig::new(AdapterKind::Loda, 4);
    attach(&mut model.unet, &store, &cfg)?;
    tch::no_grad(|| {
        for (_, v) in store.variables() {
            let _ = v.shallow_clone().f_add_(&(v.randn_like() * 0.01))?;
        }
        Ok::<_, tch::TchError>(())
    })?;
    model.adapter = Some(cfg);
    model.adapter_store = Some(store);
    Ok(model)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    tch::manual_seed(0);
    let precision = PrecisionChoice::Auto.resolve(Device::Cpu);
    let mut models = [
        load_model_dir(&args.base, Device::Cpu)?,
        with_loda(&args.base)?,
    ];
    for m in &mut models {
        m.set_precision(precision);
    }
    let unet = &models[0].unet;
    let [c, h, w] = unet
        .sample_shape()
        .context("base model has no sample_size")?;
    let null = unet.null_class().context("base model has no null class")?;
    let rows = 2 * args.batch;
    let x = Tensor::randn([rows, c, h, w], (Kind::Float, Device::Cpu));
    let t = Tensor::randint(1000, [rows], (Kind::Int64, Device::Cpu));
    let labels = Tensor::cat(
        &[
            Tensor::randint(null, [args.batch], (Kind::Int64, Device::Cpu)),
            Tensor::full([args.batch], null, (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let step = |m: &ModelDir| -> Result<()> {
        let eps = tch::no_grad(|| Cast(&m.unet).predict_eps(&x, &t, &labels));
        ensure!(
            eps.size() == x.size(),
            "unexpected ε shape {:?}",
            eps.size()
        );
        Ok(())
    };

    for _ in 0..args.warmup {
        for m in &models {
            step(m)?;
        }
    }
    let mut samples: Vec<Samples> = KINDS.iter().map(|_| Samples::default()).collect();
    for _ in 0..args.reps {
        for (m, s) in models.iter().zip(&mut samples) {
            s.time(|| step(m))?;
        }
    }
    let medians: Vec<(f64, f64)> = samples.iter().map(Samples::medians).collect();

    println!(
        "{}: guided step of {} images ({rows} rows) x {:?}, {}, CPU, {} torch threads, {} reps \
         (median)",
        args.base.display(),
        args.batch,
        [c, h, w],
        precision.name(),
        tch::get_num_threads(),
        args.reps,
    );
    println!("step   wall ms   CPU ms  wall/base  CPU/base");
    let (base_wall, base_cpu) = medians[0];
    for (kind, (wall, cpu)) in KINDS.iter().zip(&medians) {
        println!(
            "{kind:<5} {wall:8.1} {cpu:8.1} {:10.3} {:9.3}",
            wall / base_wall,
            cpu / base_cpu
        );
    }
    let fields: Vec<String> = KINDS
        .iter()
        .zip(&medians)
        .map(|(kind, (wall, cpu))| {
            format!("\"{kind}_wall_ms\":{wall:.3},\"{kind}_cpu_ms\":{cpu:.3}")
        })
        .collect();
    println!(
        "{{\"impl\":\"dpsynth\",\"batch\":{},\"precision\":\"{}\",\"threads\":{},{}}}",
        args.batch,
        precision.name(),
        tch::get_num_threads(),
        fields.join(",")
    );
    Ok(())
}
