//! `dpsynth export`: a fine-tuned model folder as plain diffusers weights. LoRA adapters are
//! folded into the base weights (`nn::adapter::merge_lora`), so the exported folder is a
//! `UNet2DModel` that `UNet2DModel.from_pretrained` loads unchanged. LoDA adapters are not
//! linear and cannot be folded: such a folder is refused, with the reason.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::Args;
use dpsynth::nn::adapter::merge_lora;
use dpsynth::synth::{load_model_dir, save_extras};
use tch::Device;

#[derive(Args)]
pub struct ExportArgs {
    /// A fine-tuned model folder with LoRA adapters (e.g. OUT/finetune/model).
    #[arg(long)]
    model: PathBuf,
    /// Output folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json,
    /// classes.json. Must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `dpsynth export`.
pub fn run(a: ExportArgs, device: Device) -> Result<()> {
    ensure!(
        !a.out.exists(),
        "{}: already exists; choose a new --out",
        a.out.display()
    );
    let mut model = load_model_dir(&a.model, device)?;
    ensure!(
        model.adapter.is_some(),
        "{}: has no adapters; it is already a plain UNet2DModel folder",
        a.model.display()
    );
    let merged =
        merge_lora(&mut model.unet).map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    write(&model, &a.out)?;
    println!(
        "{}: {merged} LoRA adapters merged into the base weights; a plain UNet2DModel folder",
        a.out.display()
    );
    Ok(())
}

/// Writes the merged U-Net, its scheduler and its class names to `out`.
fn write(model: &dpsynth::synth::ModelDir, out: &Path) -> Result<()> {
    model.unet.save(out)?;
    save_extras(out, &model.scheduler, &model.classes)
}
