//! The `dpsynth` command-line tool: parses arguments and calls the library.

mod audit_cmd;
mod baseline_cmd;
mod clip_scan_cmd;
mod data_cmd;
mod device;
mod evaluate_cmd;
mod export_cmd;
mod finetune_cmd;
mod loss_cmd;
mod pretrain_cmd;
mod privacy_cmd;
mod progress;
mod results_cmd;
mod run_cmd;
mod sample_cmd;
mod size_plot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Differentially private synthetic image data: DP-SGD fine-tuning of diffusion models with
/// low-dimensional adapters (LoDA).
#[derive(Parser)]
#[command(name = "dpsynth", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DPSYNTH_BUILD_COMMIT"), ")"), about, long_about = None)]
struct Cli {
    /// Folder holding fetched datasets (mnist/, fashion-mnist/, cifar10/).
    #[arg(long, global = true, default_value = "data", env = "DPSYNTH_DATA")]
    data_dir: PathBuf,
    /// CPU threads for libtorch and for the dead-leaves and photo-crops generators (default: one
    /// per core). Use 1 per process when running several jobs side by side: oversubscribed
    /// OpenMP threads slow everything down.
    #[arg(long, global = true, env = "DPSYNTH_THREADS")]
    threads: Option<i32>,
    /// Where models run: cpu, cuda (the first GPU) or cuda:N. Asking for CUDA where libtorch
    /// sees none is an error, never a silent fall-back to the CPU.
    #[arg(long, global = true, default_value = "cpu", env = "DPSYNTH_DEVICE")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, inspect and visualise datasets.
    Data {
        #[command(subcommand)]
        command: data_cmd::DataCommand,
    },
    /// Privacy arithmetic for DP-SGD: ε of a schedule, or σ for a target ε.
    Privacy {
        #[command(subcommand)]
        command: privacy_cmd::PrivacyCommand,
    },
    /// Train the DP-SGD classifier directly on private data (the baseline dpsynth must beat).
    Baseline(baseline_cmd::BaselineArgs),
    /// Pretrain the class-conditional U-Net on public data (non-private).
    Pretrain(pretrain_cmd::PretrainArgs),
    /// DP fine-tuning of a pretrained model on private data (loda, lora, attention, full, scratch).
    Finetune(finetune_cmd::FinetuneArgs),
    /// Train the downstream classifier on (synthetic) data and test it on real data.
    Evaluate(evaluate_cmd::EvaluateArgs),
    /// Sample a labelled synthetic dataset (ImageFolder + grid) from a model folder.
    Sample(sample_cmd::SampleArgs),
    /// Score a model on public or test images: its held-out ε-prediction loss (lower: the
    /// model's distribution is closer to the images'). Compares bases before spending privacy.
    Loss(loss_cmd::LossArgs),
    /// Measure per-example gradient norms of a fine-tuning setup on public images, to choose the
    /// clipping bound C (--clip) at no privacy cost.
    ClipScan(clip_scan_cmd::ClipScanArgs),
    /// Audit a fine-tuning config: an empirical lower bound on epsilon from one training run
    /// with canaries (Steinke, Nasr and Jagielski 2023), beside the accountant's epsilon.
    Audit(audit_cmd::AuditArgs),
    /// Export a fine-tuned model folder for diffusers: LoRA merged into plain UNet2DModel
    /// weights, or (LoDA, LoRA with --unmerged) the base UNet2DModel plus the adapters, which
    /// python/dpsynth_loader.py attaches.
    Export(export_cmd::ExportArgs),
    /// The main job: DP fine-tuning on private data, sampling, and the downstream test, from one
    /// config (the embedded default: MNIST, the shipped base model, DP-LoDA at epsilon 10).
    Run(run_cmd::RunArgs),
    /// Regenerate the results tables of docs/RESULTS.md and docs/SELECTION.md from the committed
    /// reports under results/ (`--check`: fail if they disagree).
    Results(results_cmd::ResultsArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`dpsynth data info ... | head`) like other Unix tools,
    // instead of panicking inside println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n < 1 {
            eprintln!("error: --threads must be at least 1, got {n}");
            return ExitCode::FAILURE;
        }
        tch::set_num_threads(n);
    }
    let dir = &cli.data_dir;
    let device = || device::parse_device(&cli.device);
    let result = match cli.command {
        Command::Data { command } => data_cmd::run(command, dir),
        Command::Privacy { command } => privacy_cmd::run(command),
        Command::Baseline(a) => device().and_then(|d| baseline_cmd::run(a, dir, d)),
        Command::Pretrain(a) => device().and_then(|d| pretrain_cmd::run(a, dir, d)),
        Command::Finetune(a) => device().and_then(|d| finetune_cmd::run(a, dir, d)),
        Command::Evaluate(a) => device().and_then(|d| evaluate_cmd::run(a, dir, d)),
        Command::Sample(a) => device().and_then(|d| sample_cmd::run(a, d)),
        Command::Loss(a) => device().and_then(|d| loss_cmd::run(a, dir, d)),
        Command::ClipScan(a) => device().and_then(|d| clip_scan_cmd::run(a, dir, d)),
        Command::Audit(a) => device().and_then(|d| audit_cmd::run(a, dir, d)),
        Command::Export(a) => device().and_then(|d| export_cmd::run(a, d)),
        Command::Run(a) => device().and_then(|d| run_cmd::run(a, dir, d)),
        Command::Results(a) => results_cmd::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
