//! Training loops and their checkpoints.

pub mod checkpoint;
pub mod class_table;
pub mod classifier;
pub mod clip_scan;
pub mod downstream;
pub mod finetune;
pub mod plot;
pub mod pretrain;

use tch::Tensor;

/// Shallow copies (shared storage) of a list of tensors.
pub(crate) fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}

/// Named tensors sorted by name: the stable order of checkpoints and optimizer state.
pub(crate) fn sorted_by_name(
    vars: impl IntoIterator<Item = (String, Tensor)>,
) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vars.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Shallow copies (shared storage) of named tensors, e.g. to add optimizer state beside them.
pub(crate) fn shallow_named(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect()
}
