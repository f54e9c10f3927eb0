//! The class-embedding table a fine-tuning run starts from, built from the base's table before
//! any private data is read.
//!
//! The base's classes need not be the private data's, in name or in number. When they differ,
//! the fine-tuned model gets a fresh table of `private classes + 1` rows (the last is the null
//! class, copied from the base's null row), and each private class's row starts from:
//! - the base row of the class with the same name, when the base has one;
//! - else the mean of the base rows of the public classes a class-init table lists for it
//!   (`class_init` in a run config, `--class-init FILE` on `finetune`; a class map of
//!   `crate::data::class_map`), e.g. CIFAR-10's `cat` from Tiny ImageNet's `tabby`, `Persian
//!   cat` and `Egyptian cat`;
//! - else the base's null row, so the class begins as the base's unconditional model.
//!
//! An unconditional base (a diffusers `UNet2DModel` without `num_class_embeds`, as most public
//! DDPM checkpoints are) goes through the same plan: it has no classes, so every private class
//! starts from the null row, and its null row is zero. The class embedding is added to the time
//! embedding, so a table of zeros leaves the model exactly the base; the fine-tuned model is a
//! class-conditional `UNet2DModel` (`num_class_embeds` = private classes + 1) whose table is
//! learned under DP. The table must then be trained ([`ensure_learnable`]). With no private
//! classes (`clip-scan`), such a base gets the null row alone.
//!
//! All of this reads only the base model and public class names: it costs no privacy.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tch::Tensor;

use crate::nn::unet::UNet;

/// A class-init table: private class name → names of public classes of the base whose rows its
/// row starts from (their mean; none: the null row). Read with [`load_class_init`].
pub type ClassInit = crate::data::class_map::ClassMap;

/// Reads a class-init table (a class map, `crate::data::class_map`).
pub fn load_class_init(path: &Path) -> Result<ClassInit> {
    Ok(crate::data::class_map::load(path)?)
}

/// Where one private class's row starts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStart {
    /// The base's row of the class with this name.
    Same(String),
    /// The mean of the base's rows of these public classes.
    Mean(Vec<String>),
    /// The base's null row.
    Null,
}

/// The start of each private class's row, in label order. Errors name the table's entries that
/// name a class the private data or the base does not have.
pub fn plan_rows(
    base_classes: &[String],
    private: &[String],
    init: Option<&ClassInit>,
) -> Result<Vec<RowStart>> {
    if let Some(table) = init {
        for (name, public) in table {
            ensure!(
                private.contains(name),
                "class_init: '{name}' is not a class of the private data (its classes: {})",
                private.join(", ")
            );
            for p in public {
                ensure!(
                    base_classes.contains(p),
                    "class_init: '{p}' (for '{name}') is not a class of the base model"
                );
            }
        }
    }
    Ok(private
        .iter()
        .map(|name| {
            if base_classes.contains(name) {
                RowStart::Same(name.clone())
            } else if let Some(public) = init.and_then(|t| t.get(name)).filter(|p| !p.is_empty()) {
                RowStart::Mean(public.clone())
            } else {
                RowStart::Null
            }
        })
        .collect())
}

/// A copy of `base` (same weights, same device) whose class table has one row per entry of
/// `plan` plus the null row, started as the plan says. `base_classes` names the base's rows.
/// For an unconditional base (no class embedding) the null row is zero, so the copy computes
/// exactly what the base does; its plan can hold only [`RowStart::Null`].
pub fn rebuild(unet: &UNet, base_classes: &[String], plan: &[RowStart]) -> Result<UNet> {
    let table = unet.class_embedding.as_ref();
    let null_row = match (table, unet.null_class()) {
        (Some(t), Some(null)) => t.weight.get(null),
        _ => Tensor::zeros(
            [unet.config().time_embed_dim()],
            (tch::Kind::Float, unet.device()),
        ),
    };
    let mut config = unet.config().clone();
    config.num_class_embeds = Some(plan.len() as i64 + 1);
    let out = UNet::new(config, unet.device())?;
    let _guard = tch::no_grad_guard();
    let from = unet.vs.variables();
    for (name, mut to) in out.vs.variables() {
        if name.starts_with("class_embedding.") {
            continue;
        }
        let src = from
            .get(&name)
            .with_context(|| format!("the base model has no weight {name}"))?;
        to.copy_(src);
    }
    let row = |name: &str| -> Result<Tensor> {
        let i = base_classes
            .iter()
            .position(|c| c == name)
            .with_context(|| format!("the base model has no class '{name}'"))?;
        let table = table.context("the base model is unconditional: it has no class rows")?;
        Ok(table.weight.get(i as i64))
    };
    let rows = plan
        .iter()
        .map(|start| match start {
            RowStart::Same(name) => row(name),
            RowStart::Mean(names) => {
                let rows = names.iter().map(|n| row(n)).collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&rows, 0).mean_dim(0, false, rows[0].kind()))
            }
            RowStart::Null => Ok(null_row.shallow_clone()),
        })
        .chain(std::iter::once(Ok(null_row.shallow_clone())))
        .collect::<Result<Vec<_>>>()?;
    let mut new_table = out
        .class_embedding
        .as_ref()
        .expect("built with num_class_embeds")
        .weight
        .shallow_clone();
    new_table.copy_(&Tensor::stack(&rows, 0));
    Ok(out)
}

/// Refuses a plan with private classes that are not the base's when the class table cannot
/// learn (`frozen`); the message names the base folder `base`'s class list. A frozen table on
/// an `unconditional` base is always refused, naming the folder: its rows are zeros.
pub fn ensure_learnable(
    plan: &[RowStart],
    frozen: bool,
    unconditional: bool,
    base: &Path,
) -> Result<()> {
    if frozen && unconditional {
        bail!(
            "the base model {} is unconditional (no num_class_embeds): the class embedding \
             fine-tuning adds for the private classes starts at zero and must be learned, so it \
             cannot be frozen (drop --freeze-class-embedding)",
            base.display()
        );
    }
    let foreign = plan
        .iter()
        .filter(|s| !matches!(s, RowStart::Same(_)))
        .count();
    if frozen && foreign > 0 {
        bail!(
            "{} private classes are not classes of the base model ({}): their embeddings must \
             be learned, so the class embedding cannot be frozen (drop --freeze-class-embedding)",
            foreign,
            base.join(crate::synth::CLASSES_FILE).display()
        );
    }
    Ok(())
}
