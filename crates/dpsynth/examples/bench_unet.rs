//! Times non-private U-Net training (forward + backward + AdamW), DDIM sampling with
//! classifier-free guidance and, with `--dp-iters N`, DP-SGD steps of LoDA fine-tuning (rank 4 on
//! the ResNet convs, class embedding trained, per-example clipping). The PyTorch + diffusers peer
//! is `bench/peers/diffusers_unet.py`; see `bench/README.md`. `--config` takes a diffusers
//! `config.json` or a pretraining TOML (`configs/*-base.toml`, its `[model]` table).
//! `--train-iters 0` skips training and `--sample-batch 0` or `--sample-steps 0` sampling (so
//! that one process measures one thing, as `bench/scaling.py` runs it); `--json` adds a last
//! line with every figure as one JSON object. `--bf16` times the sampling again with the U-Net
//! in bfloat16, right after the float32 run, and pretraining's steps with float32 and with
//! bfloat16 (mixed precision) gradients side by side, and prints the ratios.
//!
//! ```text
//! cargo run --release -p dpsynth --example bench_unet -- \
//!     [--config bench/unet_mnist.json] [--device cpu|cuda] [--train-batch 64] [--train-iters 10]
//!     [--sample-batch 16] [--sample-steps 50] [--guidance 3.0] [--dp-iters 0] [--threads N]
//!     [--bf16] [--json]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dpsynth::diffusion::loss::{draw, eps_loss, eps_loss_with, LossConfig};
use dpsynth::diffusion::precision::Precision;
use dpsynth::diffusion::sampler::{sample, SamplerConfig};
use dpsynth::diffusion::NoiseSchedule;
use dpsynth::dp::engine::{DpSgd, DpSgdConfig};
use dpsynth::dp::optim::{Optimizer, OptimizerConfig as DpOptimizerConfig};
use dpsynth::nn::adapter::{attach, AdapterConfig, AdapterKind};
use dpsynth::nn::unet::{UNet, UNetConfig};
use dpsynth::train::mixed_precision::StepPrecision;
use dpsynth::train::pretrain::PretrainConfig;
use serde_json::{json, Value};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

struct Args {
    config: PathBuf,
    device: Device,
    train_batch: i64,
    train_iters: usize,
    sample_batch: usize,
    sample_steps: usize,
    guidance: f64,
    dp_iters: usize,
    threads: Option<i32>,
    json: bool,
    bf16: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        config: PathBuf::from("bench/unet_mnist.json"),
        device: Device::Cpu,
        train_batch: 64,
        train_iters: 10,
        sample_batch: 16,
        sample_steps: 50,
        guidance: 3.0,
        dp_iters: 0,
        threads: None,
        json: false,
        bf16: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--json" {
            a.json = true;
            continue;
        }
        if flag == "--bf16" {
            a.bf16 = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--config" => a.config = PathBuf::from(&value),
            "--device" => {
                a.device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => bail!(bad()),
                }
            }
            "--train-batch" => a.train_batch = value.parse().with_context(bad)?,
            "--train-iters" => a.train_iters = value.parse().with_context(bad)?,
            "--sample-batch" => a.sample_batch = value.parse().with_context(bad)?,
            "--sample-steps" => a.sample_steps = value.parse().with_context(bad)?,
            "--guidance" => a.guidance = value.parse().with_context(bad)?,
            "--dp-iters" => a.dp_iters = value.parse().with_context(bad)?,
            "--threads" => a.threads = Some(value.parse().with_context(bad)?),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat (Linux); with other
/// jobs on the machine it is steadier than wall time. `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Wall and CPU seconds of `f`.
fn timed<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    sync(device);
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let out = f()?;
    sync(device);
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    Ok((out, wall, cpu))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let config = if args.config.extension().is_some_and(|e| e == "toml") {
        PretrainConfig::load(&args.config)?.model
    } else {
        UNetConfig::load(&args.config)?
    };
    let [c, h, w] = {
        let (h, w) = config
            .sample_size
            .context("the bench config needs sample_size")?
            .hw();
        [config.in_channels, h, w]
    };
    let classes = config
        .num_class_embeds
        .context("the bench config needs num_class_embeds")?
        - 1;
    tch::manual_seed(0);
    let mut unet = UNet::new(config, args.device)?;
    let params: i64 = unet.vs.variables().values().map(|v| v.numel() as i64).sum();
    let schedule = NoiseSchedule::linear(1000)?;
    println!(
        "dpsynth U-Net: {params} parameters, device {:?}, torch threads {}",
        args.device,
        tch::get_num_threads()
    );

    let mut report = json!({
        "impl": "dpsynth",
        "config": args.config,
        "params": params,
        "device": format!("{:?}", args.device),
        "threads": tch::get_num_threads(),
        "train": null,
        "sample": null,
        "dp_loda": null,
    });
    if args.train_iters > 0 {
        report["train"] = train(&unet, &schedule, &args, [c, h, w], classes)?;
        if args.bf16 {
            report["train_mixed_precision"] =
                mixed_precision_training(&unet, &schedule, &args, [c, h, w], classes)?;
        }
    }
    if args.sample_batch > 0 && args.sample_steps > 0 {
        report["sample"] = sampling(
            &unet,
            &schedule,
            &args,
            [c, h, w],
            classes,
            Precision::Float32,
        )?;
        if args.bf16 {
            // the same sampling with the weights in bfloat16, then back (the DP timing after it
            // does not depend on the weights' values)
            Precision::Bfloat16.convert(&mut unet.vs);
            let bf16 = sampling(
                &unet,
                &schedule,
                &args,
                [c, h, w],
                classes,
                Precision::Bfloat16,
            )?;
            Precision::Float32.convert(&mut unet.vs);
            let ratio = report["sample"]["wall_s"].as_f64().unwrap_or(f64::NAN)
                / bf16["wall_s"].as_f64().unwrap_or(f64::NAN);
            println!("sample: bfloat16 is {ratio:.2}x as fast as float32 (wall)");
            report["sample_bf16"] = bf16;
        }
    }
    if args.dp_iters > 0 {
        report["dp_loda"] = dp_loda(&mut unet, &schedule, &args, [c, h, w], classes)?;
    }
    if args.json {
        println!("{report}");
    }
    Ok(())
}

/// `--train-batch` random images in [-1, 1] of shape `[c, h, w]` and random labels below
/// `classes`.
fn random_batch(args: &Args, [c, h, w]: [i64; 3], classes: i64) -> (Tensor, Tensor) {
    let b = args.train_batch;
    let x0 = Tensor::rand([b, c, h, w], (Kind::Float, args.device)) * 2.0 - 1.0;
    (
        x0,
        Tensor::randint(classes, [b], (Kind::Int64, args.device)),
    )
}

/// Times non-private training: forward + backward + AdamW on random data, after 2 warm-up steps.
fn train(
    unet: &UNet,
    schedule: &NoiseSchedule,
    args: &Args,
    [c, h, w]: [i64; 3],
    classes: i64,
) -> Result<Value> {
    let mut opt = tch::nn::AdamW::default().build(&unet.vs, 1e-4)?;
    let b = args.train_batch;
    let (x0, labels) = random_batch(args, [c, h, w], classes);
    let loss_cfg = LossConfig::default();
    let mut step = || -> Result<()> {
        let loss = eps_loss(unet, schedule, &x0, &labels, &loss_cfg)?.mean(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step();
        Ok(())
    };
    for _ in 0..2 {
        step()?;
    }
    let ((), secs, cpu) = timed(args.device, || {
        for _ in 0..args.train_iters {
            step()?;
        }
        Ok(())
    })?;
    let n = b as f64 * args.train_iters as f64;
    println!(
        "train: batch {b}, {} iters in {secs:.2}s wall, {cpu:.2}s CPU: {:.1} samples/s, {:.1} samples/CPU-s",
        args.train_iters,
        n / secs,
        n / cpu
    );
    Ok(json!({"batch": b, "iters": args.train_iters, "wall_s": secs, "cpu_s": cpu}))
}

/// Times pretraining's steps (`train::mixed_precision`: ε-prediction loss, gradients, AdamW
/// on float32 weights) with the gradients computed in float32 and in bfloat16, interleaved rep
/// by rep after a warm-up step of each, and prints the ratio.
fn mixed_precision_training(
    unet: &UNet,
    schedule: &NoiseSchedule,
    args: &Args,
    [c, h, w]: [i64; 3],
    classes: i64,
) -> Result<Value> {
    let params: Vec<(String, Tensor)> = unet.vs.variables().into_iter().collect();
    let mut opt = Optimizer::new(
        params.iter().map(|(_, t)| t.shallow_clone()).collect(),
        DpOptimizerConfig::AdamW {
            lr: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let b = args.train_batch;
    let (x0, labels) = random_batch(args, [c, h, w], classes);
    let loss_cfg = LossConfig::default();
    let kinds = [Precision::Float32, Precision::Bfloat16];
    let steps = kinds
        .iter()
        .map(|&p| StepPrecision::new(unet.config(), p, args.device))
        .collect::<Result<Vec<_>>>()?;
    let mut step = |s: &StepPrecision| -> Result<()> {
        let (_, grads) = s.loss_and_grads(unet, &params, |m| {
            Ok(eps_loss(m, schedule, &x0, &labels, &loss_cfg)?.mean(Kind::Float))
        })?;
        opt.step(&grads)
    };
    let mut secs = [0.0; 2];
    for s in &steps {
        step(s)?;
    }
    for _ in 0..args.train_iters {
        for (i, s) in steps.iter().enumerate() {
            let ((), wall, _) = timed(args.device, || step(s))?;
            secs[i] += wall;
        }
    }
    let n = b as f64 * args.train_iters as f64;
    for (p, s) in kinds.iter().zip(secs) {
        println!(
            "train ({}, mixed precision step): batch {b}, {} iters in {s:.2}s wall: {:.1} samples/s",
            p.name(),
            args.train_iters,
            n / s
        );
    }
    println!(
        "train: bfloat16 steps are {:.2}x as fast as float32 (wall)",
        secs[0] / secs[1]
    );
    Ok(
        json!({"batch": b, "iters": args.train_iters, "float32_wall_s": secs[0], "bfloat16_wall_s": secs[1]}),
    )
}

/// Times DDIM sampling with guidance (one forward of 2B rows per step), after a 2-step warm-up.
fn sampling(
    unet: &UNet,
    schedule: &NoiseSchedule,
    args: &Args,
    [c, h, w]: [i64; 3],
    classes: i64,
    precision: Precision,
) -> Result<Value> {
    let cfg = SamplerConfig {
        batch_size: args.sample_batch,
        precision,
        ..SamplerConfig::ddim(args.sample_steps, args.guidance)
    };
    let labels: Vec<i64> = (0..args.sample_batch as i64).map(|i| i % classes).collect();
    // warm-up with few steps
    let warm = SamplerConfig {
        num_steps: 2,
        ..cfg
    };
    let _ = sample(unet, schedule, &labels, [c, h, w], &warm, 0, args.device)?;
    let (images, secs, cpu) = timed(args.device, || {
        sample(unet, schedule, &labels, [c, h, w], &cfg, 1, args.device)
    })?;
    let n = images.size()[0] as f64;
    println!(
        "sample ({}): DDIM-{} guidance {}, {n} images in {secs:.2}s wall, {cpu:.2}s CPU: {:.2} images/s, {:.2} images/CPU-s",
        precision.name(),
        args.sample_steps,
        args.guidance,
        n / secs,
        n / cpu
    );
    Ok(json!({
        "precision": precision.name(),
        "batch": args.sample_batch,
        "steps": args.sample_steps,
        "guidance": args.guidance,
        "images": n,
        "wall_s": secs,
        "cpu_s": cpu,
    }))
}

/// Times DP-SGD steps of LoDA fine-tuning on random data: a logical batch of `--train-batch`
/// examples in one micro-batch, per-example clipping, noise.
fn dp_loda(
    unet: &mut UNet,
    schedule: &NoiseSchedule,
    args: &Args,
    [c, h, w]: [i64; 3],
    classes: i64,
) -> Result<Value> {
    for (k, v) in unet.vs.variables() {
        let _ = v.set_requires_grad(k.starts_with("class_embedding."));
    }
    let store = tch::nn::VarStore::new(args.device);
    attach(unet, &store, &AdapterConfig::new(AdapterKind::Loda, 4))?;
    let mut params: Vec<Tensor> = store.trainable_variables();
    params.extend(
        unet.vs
            .trainable_variables()
            .into_iter()
            .filter(Tensor::requires_grad),
    );
    let trainable: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let b = args.train_batch;
    let mut dp = DpSgd::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        DpSgdConfig::new(1.0, 1.0, b as f64),
        Some(0),
    )?;
    let (x0, labels) = random_batch(args, [c, h, w], classes);
    let loss_cfg = LossConfig::default();
    let mut step = || -> Result<()> {
        let d = draw(schedule, &x0, &labels, &loss_cfg, Some(classes))?;
        dp.accumulate(1, || eps_loss_with(unet, schedule, &x0, &d))?;
        dp.finish_step()?;
        Ok(())
    };
    step()?;
    let ((), secs, cpu) = timed(args.device, || {
        for _ in 0..args.dp_iters {
            step()?;
        }
        Ok(())
    })?;
    let n = b as f64 * args.dp_iters as f64;
    println!(
        "dp-loda: {trainable} trainable, batch {b}, {} steps in {secs:.2}s wall, {cpu:.2}s CPU: {:.1} examples/s, {:.1} examples/CPU-s",
        args.dp_iters,
        n / secs,
        n / cpu
    );
    Ok(json!({
        "trainable": trainable,
        "batch": b,
        "steps": args.dp_iters,
        "wall_s": secs,
        "cpu_s": cpu,
    }))
}
