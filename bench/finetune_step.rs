//! Benchmark: one fine-tuning step of the shipped base U-Net, four ways, in one process.
//!
//! - `loda`: non-private LoDA (mean loss, `backward()`, Adam on the adapters and the class
//!   embedding, zero grads);
//! - `dp-loda`: DP-LoDA through the real [`DpSgd`] engine (recorded forward, per-example
//!   gradients, clipping to C, Gaussian noise) and the same Adam update;
//! - `full`: non-private full fine-tuning (every weight);
//! - `dp-full`: DP full fine-tuning (every weight, DP-SGD).
//!
//! The trainable parameters are set up by [`dpsynth::train::finetune::prepare`], the function
//! `dpsynth finetune` uses, with the settings of `configs/run-default.toml` (rank 4, α = 4, SiLU,
//! ResNet convs, class embedding trained, K = 1 by default, C = 1, Adam lr 2e-3). Every step sees
//! the same batch: random images in [-1, 1], random labels, fixed timesteps, noise and class
//! dropout (K draws per example). Steps are interleaved rep by rep so that load from other
//! processes hits all four alike; the report gives medians of wall-clock and process CPU time.
//!
//! Peak memory: the benchmark re-runs itself as child processes (`--peak setup|loda|dp-loda|full|
//! dp-full`) that each set up everything and then run only one kind of step; the increment of
//! `VmHWM` over the `setup` child is that step's own peak. See `bench/README.md`.

mod common;

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use dpsynth::diffusion::loss::{draw, eps_loss_with, Draws, LossConfig};
use dpsynth::dp::{DpSgd, DpSgdConfig, Optimizer};
use dpsynth::train::finetune::{prepare, FinetuneConfig, Mode, Trainee};
use tch::{Device, Kind, Tensor};

use common::Samples;

/// The kinds of step, in the order they are timed within a rep.
const KINDS: [&str; 4] = ["loda", "dp-loda", "full", "dp-full"];

#[derive(Debug, Clone)]
struct Args {
    base: PathBuf,
    batch: i64,
    k: i64,
    reps: usize,
    warmup: usize,
    threads: Option<i32>,
    peak: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        base: PathBuf::from("models/mnist-base"),
        batch: 64,
        k: 1,
        reps: 20,
        warmup: 3,
        threads: None,
        peak: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => args.base = PathBuf::from(value()?),
            "--batch" => args.batch = value()?.parse()?,
            "--noise-multiplicity" => args.k = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--threads" => args.threads = Some(value()?.parse()?),
            "--peak" => {
                let v = value()?;
                ensure!(
                    v == "setup" || KINDS.contains(&v.as_str()),
                    "unknown peak mode {v}: expected setup, {}",
                    KINDS.join(", ")
                );
                args.peak = Some(v);
            }
            f => bail!(
                "unknown flag {f} (flags: --base --batch --noise-multiplicity --reps --warmup \
                 --threads --peak)"
            ),
        }
    }
    ensure!(
        args.batch > 0 && args.reps > 0 && args.k > 0,
        "--batch, --reps and --noise-multiplicity must be positive"
    );
    Ok(args)
}

/// One fine-tuning mode: its model, trainable tensors, optimizer and DP engine.
struct Trained {
    t: Trainee,
    params: Vec<Tensor>,
    opt: Optimizer,
    dp: DpSgd,
}

impl Trained {
    fn new(args: &Args, mode: Mode) -> Result<Self> {
        let cfg = run_default(mode);
        let t = prepare(&args.base, &cfg, None, Device::Cpu)?;
        let params = t.tensors();
        let opt = t.optimizer(&cfg)?;
        // σ does not change the work; the expected batch is the physical one
        let dp_cfg = DpSgdConfig::new(cfg.clip, 1.0, args.batch as f64);
        let dp = DpSgd::new(shallow(&params), dp_cfg, None)?;
        Ok(Self { t, params, opt, dp })
    }

    fn losses(&self, x0: &Tensor, draws: &Draws) -> Tensor {
        eps_loss_with(&self.t.model.unet, &self.t.model.schedule, x0, draws)
    }

    /// Mean loss, `backward()`, Adam on the trainable tensors, zero grads.
    fn nonprivate_step(&mut self, x0: &Tensor, draws: &Draws) -> Result<()> {
        self.losses(x0, draws).mean(Kind::Float).backward();
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.opt.step(&grads)?;
        for p in &mut self.params {
            p.zero_grad();
        }
        Ok(())
    }

    /// Per-example clipped gradients (K rows each), noise, Adam: one logical batch of one
    /// physical batch.
    fn dp_step(&mut self, x0: &Tensor, draws: &Draws, k: i64) -> Result<()> {
        let Self { t, dp, opt, .. } = self;
        let (unet, schedule) = (&t.model.unet, &t.model.schedule);
        dp.accumulate(k, || eps_loss_with(unet, schedule, x0, draws))?;
        let grads = dp.finish_step()?;
        opt.step(&grads)
    }

    fn trainable_count(&self) -> i64 {
        self.params.iter().map(Tensor::numel).sum::<usize>() as i64
    }
}

/// `configs/run-default.toml`'s fine-tuning settings for `mode` (the library defaults with one
/// epoch; neither ε nor the epochs change the work of a step).
fn run_default(mode: Mode) -> FinetuneConfig {
    let mut cfg = FinetuneConfig::new(mode, 10.0, 1e-5);
    cfg.epochs = 1.0;
    cfg
}

fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}

/// Everything the four steps share: both models, the batch and its draws.
struct Bench {
    loda: Trained,
    full: Trained,
    x0: Tensor,
    draws: Draws,
    k: i64,
}

impl Bench {
    fn new(args: &Args) -> Result<Self> {
        tch::manual_seed(0);
        let loda = Trained::new(args, Mode::Loda)?;
        let full = Trained::new(args, Mode::Full)?;
        let [c, h, w] = loda
            .t
            .model
            .unet
            .sample_shape()
            .context("base model has no sample_size")?;
        let x0 = Tensor::rand([args.batch, c, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let null = loda.t.model.unet.null_class().context("no null class")?;
        let labels = Tensor::randint(null, [args.batch], (Kind::Int64, Device::Cpu));
        let loss_cfg = LossConfig {
            repeats: args.k,
            class_dropout: run_default(Mode::Loda).class_dropout,
        };
        let draws = draw(&loda.t.model.schedule, &x0, &labels, &loss_cfg, Some(null))?;
        Ok(Self {
            loda,
            full,
            x0,
            draws,
            k: args.k,
        })
    }

    fn step(&mut self, kind: &str) -> Result<()> {
        let Self {
            loda,
            full,
            x0,
            draws,
            k,
        } = self;
        match kind {
            "loda" => loda.nonprivate_step(x0, draws),
            "dp-loda" => loda.dp_step(x0, draws, *k),
            "full" => full.nonprivate_step(x0, draws),
            "dp-full" => full.dp_step(x0, draws, *k),
            "setup" => Ok(()),
            other => bail!("unknown step kind {other}"),
        }
    }
}

fn child_peak(args: &Args, kind: &str) -> Result<f64> {
    let argv = [
        "--peak".to_string(),
        kind.to_string(),
        "--base".to_string(),
        args.base.display().to_string(),
        "--batch".to_string(),
        args.batch.to_string(),
        "--noise-multiplicity".to_string(),
        args.k.to_string(),
        "--threads".to_string(),
        tch::get_num_threads().to_string(),
        "--reps".to_string(),
        args.warmup.max(3).to_string(),
    ];
    common::child_peak_mib(&argv)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let mut bench = Bench::new(&args)?;
    if let Some(kind) = &args.peak {
        for _ in 0..args.reps {
            bench.step(kind)?;
        }
        return common::print_vm_hwm();
    }

    for _ in 0..args.warmup {
        for kind in KINDS {
            bench.step(kind)?;
        }
    }
    let mut samples: Vec<Samples> = KINDS.iter().map(|_| Samples::default()).collect();
    for _ in 0..args.reps {
        for (kind, s) in KINDS.iter().zip(&mut samples) {
            s.time(|| bench.step(kind))?;
        }
    }
    let medians: Vec<(f64, f64)> = samples.iter().map(Samples::medians).collect();
    let setup = child_peak(&args, "setup")?;
    let peaks = KINDS
        .iter()
        .map(|kind| child_peak(&args, kind))
        .collect::<Result<Vec<_>>>()?;

    let b = args.batch as f64;
    println!(
        "{}: batch {} x {:?}, K = {}, f32, CPU, {} torch threads, {} reps (median); trainable \
         parameters: LoDA {}, full {}",
        args.base.display(),
        args.batch,
        bench.x0.size()[1..].to_vec(),
        args.k,
        tch::get_num_threads(),
        args.reps,
        bench.loda.trainable_count(),
        bench.full.trainable_count(),
    );
    println!(
        "step       wall ms   CPU ms  wall ms/ex  CPU ms/ex  wall/loda  CPU/loda  peak RSS +MiB"
    );
    let (loda_wall, loda_cpu) = medians[0];
    for ((kind, (wall, cpu)), peak) in KINDS.iter().zip(&medians).zip(&peaks) {
        println!(
            "{kind:<9} {wall:8.1} {cpu:8.1} {:11.3} {:10.3} {:10.3} {:9.3} {:14.1}",
            wall / b,
            cpu / b,
            wall / loda_wall,
            cpu / loda_cpu,
            peak - setup
        );
    }
    println!("peak RSS (VmHWM) of the setup child: {setup:.1} MiB");
    let fields: Vec<String> = KINDS
        .iter()
        .zip(&medians)
        .zip(&peaks)
        .map(|((kind, (wall, cpu)), peak)| {
            let key = kind.replace('-', "_");
            format!(
                "\"{key}_wall_ms\":{wall:.3},\"{key}_cpu_ms\":{cpu:.3},\"{key}_vmhwm_mib\":{peak:.1}"
            )
        })
        .collect();
    println!(
        "{{\"impl\":\"dpsynth\",\"batch\":{},\"k\":{},\"threads\":{},\"vmhwm_setup_mib\":{setup:.1},{}}}",
        args.batch,
        args.k,
        tch::get_num_threads(),
        fields.join(",")
    );
    Ok(())
}
