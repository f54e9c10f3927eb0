//! `dpsynth export`: a fine-tuned model folder as files diffusers users can load.
//!
//! Every export holds a diffusers `UNet2DModel` folder (`config.json`,
//! `diffusion_pytorch_model.safetensors`) that `UNet2DModel.from_pretrained` loads unchanged, plus
//! `scheduler_config.json` (`DDPMScheduler.from_pretrained` reads it) and `classes.json` (a JSON
//! array of class names; class `i` is label `i`, the null class of guidance is `len(classes)`).
//!
//! - LoRA, by default: the adapters are folded into the base weights
//!   (`nn::adapter::merge_lora`), so the folder is a plain `UNet2DModel` that computes what the
//!   adapted model did.
//! - LoDA, and LoRA with `--unmerged`: the base weights as they are, plus the adapters, which
//!   `python/dpsynth_loader.py` attaches to the diffusers model. LoDA adapters are not linear in
//!   their input, so they cannot be folded.
//!
//! The adapter files of an unmerged export:
//! - `adapter_config.json`: `kind` (`loda` or `lora`), `rank` r, `alpha` α (the update is scaled
//!   by α / r), `activation` (LoDA's non-linearity: `silu`, `tanh` or `relu`), the placement
//!   switches `resnet_convs`, `attention`, `time_embedding`, and `layers`, the adapted modules by
//!   their diffusers names (`down_blocks.0.resnets.0.conv1`, `mid_block.attentions.0.to_q`, ...);
//! - `adapter_model.safetensors`: per layer `adapter.{layer}.A.weight`, `B.weight`, and for LoDA
//!   `D1.weight`, `D1.bias`, `D2.weight`, `D2.bias`. A layer with input x returns
//!   `W x + (α / r) · B(g(A x))`, where `g(u) = u` (LoRA) or `u + D2(act(D1 u))` (LoDA); for a
//!   conv, `A` is a conv with the layer's kernel, stride, padding and dilation and `B`, `D1`, `D2`
//!   are 1 × 1 convs; for a linear layer all four are linear maps.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;
use dpsynth::nn::adapter::{layer_names, merge_lora, AdapterKind};
use dpsynth::synth::{load_model_dir, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use tch::Device;

#[derive(Args)]
pub struct ExportArgs {
    /// A fine-tuned model folder with LoRA or LoDA adapters (e.g. OUT/finetune/model).
    #[arg(long)]
    model: PathBuf,
    /// Output folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json,
    /// classes.json, and for an unmerged export adapter_config.json and
    /// adapter_model.safetensors (load them with python/dpsynth_loader.py). Must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// Keep LoRA adapters separate instead of folding them into the base weights. LoDA
    /// adapters are always kept separate: they are not linear and cannot be folded.
    #[arg(long)]
    unmerged: bool,
}

/// Runs `dpsynth export`.
pub fn run(a: ExportArgs, device: Device) -> Result<()> {
    ensure!(
        !a.out.exists(),
        "{}: already exists; choose a new --out",
        a.out.display()
    );
    ensure!(
        a.model.is_dir(),
        "{}: not a model folder (--model)",
        a.model.display()
    );
    ensure!(
        a.model.join(ADAPTER_CONFIG).exists(),
        "{}: has no adapters (no {ADAPTER_CONFIG}); it is already a plain UNet2DModel folder, \
         nothing to export",
        a.model.display()
    );
    let mut model = load_model_dir(&a.model, device)?;
    let (Some(acfg), Some(store)) = (model.adapter.clone(), model.adapter_store.as_ref()) else {
        anyhow::bail!("{}: adapters were not loaded", a.model.display());
    };
    if acfg.kind == AdapterKind::Lora && !a.unmerged {
        let merged = merge_lora(&mut model.unet)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
        model.save(&a.out, None)?;
        println!(
            "{}: {merged} LoRA adapters merged into the base weights; a plain UNet2DModel folder",
            a.out.display()
        );
    } else {
        let kind = match acfg.kind {
            AdapterKind::Lora => "LoRA",
            AdapterKind::Loda => "LoDA",
        };
        model.save(&a.out, Some((&acfg, store)))?;
        println!(
            "{}: a UNet2DModel folder plus {} {kind} adapters ({ADAPTER_CONFIG}, \
             {ADAPTER_WEIGHTS}); load it with python/dpsynth_loader.py",
            a.out.display(),
            layer_names(store).len()
        );
    }
    Ok(())
}
