//! Reading and writing a VarStore as a safetensors file keyed by parameter name, with strict
//! checks on load and atomic writes on save.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::fsutil;

/// How many names an error lists before summarising the rest.
const LIST_MAX: usize = 8;

fn list(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(LIST_MAX).map(|s| s.as_str()).collect();
    let more = names.len().saturating_sub(LIST_MAX);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Copies every tensor of the safetensors `file` into the variable of the same name in `vs`.
///
/// The file must hold exactly the variables of `vs` with the same shapes; floating-point
/// tensors of another precision are converted. The error names the offending tensor(s) and the
/// file. Nothing is copied unless every check passes.
pub fn load_safetensors(vs: &VarStore, file: &Path) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(file)
        .with_context(|| format!("cannot read safetensors file {}", file.display()))?
        .into_iter()
        .collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let missing: Vec<&String> = vars.keys().filter(|k| !tensors.contains_key(*k)).collect();
    if !missing.is_empty() {
        bail!(
            "{} is missing {} tensor(s) the model needs: {}",
            file.display(),
            missing.len(),
            list(&missing)
        );
    }
    let extra: Vec<&String> = tensors.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !extra.is_empty() {
        bail!(
            "{} has {} tensor(s) the model does not have: {}",
            file.display(),
            extra.len(),
            list(&extra)
        );
    }
    for (name, var) in &vars {
        let src = &tensors[name];
        if src.size() != var.size() {
            bail!(
                "tensor `{name}` in {} has shape {:?}, the model expects {:?}",
                file.display(),
                src.size(),
                var.size()
            );
        }
        if !matches!(
            src.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            bail!(
                "tensor `{name}` in {} has dtype {:?}, expected floating point",
                file.display(),
                src.kind()
            );
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&tensors[name])
                .with_context(|| format!("cannot copy tensor `{name}` from {}", file.display()))?;
        }
        Ok(())
    })
}

/// Writes every variable of `vs` to the safetensors `file` (float32 or the store's kind, on the
/// CPU), atomically: a temp file in the same folder, synced, then renamed over `file`.
pub fn save_safetensors(vs: &VarStore, file: &Path) -> Result<()> {
    let named: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let named: Vec<(String, Tensor)> = named.into_iter().collect();
    let tmp = fsutil::temp_beside(file, ".safetensors.partial")
        .with_context(|| format!("cannot create a temp file beside {}", file.display()))?;
    Tensor::write_safetensors(&named, tmp.path())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    fsutil::persist(tmp, file).with_context(|| format!("cannot write {}", file.display()))
}
