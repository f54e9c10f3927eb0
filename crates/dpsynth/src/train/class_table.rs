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
//!   cat` and `Egyptian cat`; or, with [`InitRows::Each`], one row per listed public class,
//!   each that class's own row (the class then has several rows: its images are trained and
//!   sampled across them, `crate::synth::rows_in_turn`);
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
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::nn::unet::UNet;

/// A class-init table: private class name → names of public classes of the base whose rows its
/// row starts from (their mean; none: the null row). Read with [`load_class_init`].
pub type ClassInit = crate::data::class_map::ClassMap;

/// Reads a class-init table (a class map, `crate::data::class_map`).
pub fn load_class_init(path: &Path) -> Result<ClassInit> {
    Ok(crate::data::class_map::load(path)?)
}

/// How a private class with several related public classes starts (`class_init_rows` in a run
/// config, `--class-init-rows` on `finetune`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitRows {
    /// One row, the mean of the public classes' rows.
    #[default]
    Mean,
    /// One row, their mean rescaled to the mean norm of the rows it averages. A mean of rows
    /// that point different ways is shorter than any of them (on `models/cifar-base` the
    /// CIFAR-10 means are 0.39-0.72 of their rows' norm), and a trained base has only seen rows
    /// of about one norm.
    ScaledMean,
    /// One row per public class, each a copy of that class's row: the private class is
    /// trained and sampled as a mixture of them.
    Each,
}

impl std::str::FromStr for InitRows {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "scaled_mean" => Ok(Self::ScaledMean),
            "each" => Ok(Self::Each),
            other => bail!("unknown class-init rows '{other}': expected mean, scaled_mean or each"),
        }
    }
}

/// Where one private class's row (or rows) start.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStart {
    /// The base's row of the class with this name.
    Same(String),
    /// The mean of the base's rows of these public classes.
    Mean(Vec<String>),
    /// That mean rescaled to the mean norm of those rows ([`InitRows::ScaledMean`]).
    ScaledMean(Vec<String>),
    /// One row per public class, each a copy of its base row.
    Each(Vec<String>),
    /// The base's null row.
    Null,
}

impl RowStart {
    /// The class rows this start gives the class.
    pub fn rows(&self) -> usize {
        match self {
            RowStart::Each(names) => names.len(),
            _ => 1,
        }
    }
}

/// The class (index into the plan) each row of a table rebuilt by [`rebuild`] draws, in row
/// order (the null row excluded).
pub fn row_classes(plan: &[RowStart]) -> Vec<usize> {
    plan.iter()
        .enumerate()
        .flat_map(|(c, start)| std::iter::repeat_n(c, start.rows()))
        .collect()
}

/// The start of each private class's row (or rows, `rows`), in label order. Errors name the
/// table's entries that name a class the private data or the base does not have.
pub fn plan_rows(
    base_classes: &[String],
    private: &[String],
    init: Option<&ClassInit>,
    rows: InitRows,
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
                match rows {
                    InitRows::Mean => RowStart::Mean(public.clone()),
                    InitRows::ScaledMean => RowStart::ScaledMean(public.clone()),
                    InitRows::Each => RowStart::Each(public.clone()),
                }
            } else {
                RowStart::Null
            }
        })
        .collect())
}

/// A copy of `base` (same weights, same device) whose class table has the rows of each entry of
/// `plan` ([`RowStart::rows`], in order: [`row_classes`]) plus the null row, started as the
/// plan says. `base_classes` names the base's rows.
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
    config.num_class_embeds = Some(plan.iter().map(RowStart::rows).sum::<usize>() as i64 + 1);
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
    let mut rows = Vec::new();
    for start in plan {
        match start {
            RowStart::Same(name) => rows.push(row(name)?),
            RowStart::Mean(names) | RowStart::ScaledMean(names) => {
                let public = names.iter().map(|n| row(n)).collect::<Result<Vec<_>>>()?;
                let stacked = Tensor::stack(&public, 0);
                let mean = stacked.mean_dim(0, false, stacked.kind());
                rows.push(match start {
                    RowStart::ScaledMean(_) => rescaled(&mean, &stacked),
                    _ => mean,
                });
            }
            RowStart::Each(names) => {
                for n in names {
                    rows.push(row(n)?);
                }
            }
            RowStart::Null => rows.push(null_row.shallow_clone()),
        }
    }
    rows.push(null_row.shallow_clone());
    let mut new_table = out
        .class_embedding
        .as_ref()
        .expect("built with num_class_embeds")
        .weight
        .shallow_clone();
    new_table.copy_(&Tensor::stack(&rows, 0));
    Ok(out)
}

/// `mean` rescaled to the mean L2 norm of the rows of `rows` (`[n, d]`); unchanged when it is
/// zero (rows that cancel exactly have no direction to keep).
fn rescaled(mean: &Tensor, rows: &Tensor) -> Tensor {
    let norm = mean.norm().double_value(&[]);
    if norm == 0.0 {
        return mean.shallow_clone();
    }
    let target = rows
        .norm_scalaropt_dim(2, [1i64].as_slice(), false)
        .mean(rows.kind())
        .double_value(&[]);
    mean * (target / norm)
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
