//! Benchmark: one non-private training step vs one DP-SGD step of the classifier CNN.
//!
//! Both steps run in this one process on the same model, batch and optimizer (SGD), interleaved
//! rep by rep so that load from other processes hits both alike; the report gives the median of
//! the wall-clock time and of the process CPU time (`CLOCK_PROCESS_CPUTIME_ID`, all threads) of
//! each step, and their ratios. On a shared machine the CPU time is the steadier figure: it does
//! not count time spent waiting for a core.
//!
//! Peak memory is measured separately: the benchmark re-runs itself as child processes
//! (`--peak setup|nonprivate|dp`), each doing only that kind of step, and reads `VmHWM` (peak
//! resident set) from `/proc/self/status`; the increment over the `setup` child (libtorch, model
//! and batch, no step) is the step's own peak memory.
//!
//! See `bench/README.md` for the command.

mod common;

use anyhow::{bail, Context, Result};
use dpsynth::dp::{DpSgd, DpSgdConfig, Optimizer, OptimizerConfig, Strategy};
use dpsynth::nn::classifier::{Classifier, ClassifierConfig};
use tch::{nn, Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peak {
    Setup,
    NonPrivate,
    Dp,
}

#[derive(Debug, Clone)]
struct Args {
    batch: i64,
    reps: usize,
    warmup: usize,
    strategy: Strategy,
    threads: Option<i32>,
    chunk: Option<i64>,
    peak: Option<Peak>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        batch: 256,
        reps: 50,
        warmup: 5,
        strategy: Strategy::Auto,
        threads: None,
        chunk: None,
        peak: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--batch" => args.batch = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--threads" => args.threads = Some(value()?.parse()?),
            "--chunk" => args.chunk = Some(value()?.parse()?),
            "--strategy" => {
                args.strategy = match value()?.as_str() {
                    "auto" => Strategy::Auto,
                    "ghost" => Strategy::Ghost,
                    "materialise" => Strategy::Materialise,
                    s => bail!("unknown strategy {s}"),
                }
            }
            "--peak" => {
                args.peak = Some(match value()?.as_str() {
                    "setup" => Peak::Setup,
                    "nonprivate" => Peak::NonPrivate,
                    "dp" => Peak::Dp,
                    s => bail!("unknown peak mode {s}"),
                })
            }
            f => bail!(
                "unknown flag {f} (flags: --batch --reps --warmup --threads --chunk --strategy --peak)"
            ),
        }
    }
    if args.batch <= 0 || args.reps == 0 {
        bail!("--batch and --reps must be positive");
    }
    Ok(args)
}

/// Model, batch and the two ways to train it.
struct Bench {
    _vs: nn::VarStore,
    model: Classifier,
    params: Vec<Tensor>,
    x: Tensor,
    y: Tensor,
    opt: Optimizer,
    dp: DpSgd,
}

impl Bench {
    fn new(args: &Args) -> Result<Self> {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), ClassifierConfig::mnist())?;
        let params = vs.trainable_variables();
        let x = Tensor::randn([args.batch, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [args.batch], (Kind::Int64, Device::Cpu));
        let sgd = OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let opt = Optimizer::new(shallow(&params), sgd)?;
        let mut cfg = DpSgdConfig::new(1.0, 1.0, args.batch as f64);
        cfg.rules.strategy = args.strategy;
        if let Some(chunk) = args.chunk {
            cfg.rules.chunk_elements = chunk;
        }
        let dp = DpSgd::new(shallow(&params), cfg, None)?;
        Ok(Self {
            _vs: vs,
            model,
            params,
            x,
            y,
            opt,
            dp,
        })
    }

    fn losses(&self) -> Tensor {
        self.model.forward(&self.x).cross_entropy_loss::<Tensor>(
            &self.y,
            None,
            Reduction::None,
            -100,
            0.0,
        )
    }

    /// forward, mean loss, backward into `.grad`, SGD update, zero the grads.
    fn nonprivate_step(&mut self) -> Result<()> {
        self.losses().mean(Kind::Float).backward();
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.opt.step(&grads)?;
        for p in &mut self.params {
            p.zero_grad();
        }
        Ok(())
    }
}

fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}

/// Runs this benchmark as a child doing only `mode` steps; returns its VmHWM in MiB.
fn child_peak(args: &Args, mode: &str) -> Result<f64> {
    let chunk = args.chunk.unwrap_or(1 << 24).to_string();
    let reps = args.warmup.max(3).to_string();
    let threads = tch::get_num_threads().to_string();
    let batch = args.batch.to_string();
    let argv = [
        "--peak",
        mode,
        "--batch",
        &batch,
        "--threads",
        &threads,
        "--chunk",
        &chunk,
        "--reps",
        &reps,
    ];
    common::child_peak_mib(&argv.map(String::from))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let mut bench = Bench::new(&args)?;
    if let Some(peak) = args.peak {
        for _ in 0..args.reps {
            match peak {
                Peak::Setup => {}
                Peak::NonPrivate => bench.nonprivate_step()?,
                Peak::Dp => dp_step_recorded(&mut bench)?,
            }
        }
        return common::print_vm_hwm();
    }

    for _ in 0..args.warmup {
        bench.nonprivate_step()?;
        dp_step_recorded(&mut bench)?;
    }
    let (mut np, mut dp) = (common::Samples::default(), common::Samples::default());
    for _ in 0..args.reps {
        np.time(|| bench.nonprivate_step())?;
        dp.time(|| dp_step_recorded(&mut bench))?;
    }
    let (np_wall, np_cpu) = np.medians();
    let (dp_wall, dp_cpu) = dp.medians();
    let setup = child_peak(&args, "setup")?;
    let peak_np = child_peak(&args, "nonprivate")?;
    let peak_dp = child_peak(&args, "dp")?;
    println!(
        "classifier CNN (mnist config), batch {} x 1x28x28, f32, CPU, {} torch threads, \
         {} reps (median), strategy {:?}",
        args.batch,
        tch::get_num_threads(),
        args.reps,
        args.strategy
    );
    println!("                  wall ms    CPU ms");
    println!("non-private step: {np_wall:8.2}  {np_cpu:8.2}");
    println!("DP-SGD step:      {dp_wall:8.2}  {dp_cpu:8.2}");
    println!(
        "ratio DP / non-private: wall {:.3}, CPU {:.3}",
        dp_wall / np_wall,
        dp_cpu / np_cpu
    );
    println!(
        "peak RSS (VmHWM): setup {setup:.1} MiB, non-private {peak_np:.1} MiB (+{:.1}), \
         DP {peak_dp:.1} MiB (+{:.1})",
        peak_np - setup,
        peak_dp - setup
    );
    println!(
        "{{\"impl\":\"dpsynth\",\"batch\":{},\"threads\":{},\"nonprivate_wall_ms\":{np_wall:.3},\
         \"nonprivate_cpu_ms\":{np_cpu:.3},\"dp_wall_ms\":{dp_wall:.3},\"dp_cpu_ms\":{dp_cpu:.3},\
         \"vmhwm_setup_mib\":{setup:.1},\"vmhwm_nonprivate_mib\":{peak_np:.1},\
         \"vmhwm_dp_mib\":{peak_dp:.1}}}",
        args.batch,
        tch::get_num_threads(),
    );
    Ok(())
}

/// Recorded forward, backward to layer outputs, per-example clipping, noise, SGD update.
fn dp_step_recorded(bench: &mut Bench) -> Result<()> {
    let Bench {
        model,
        x,
        y,
        dp,
        opt,
        ..
    } = bench;
    dp.accumulate(1, || {
        model
            .forward(x)
            .cross_entropy_loss::<Tensor>(y, None, Reduction::None, -100, 0.0)
    })?;
    let grads = dp.finish_step()?;
    opt.step(&grads)
}
