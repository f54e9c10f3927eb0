//! Training loops and their checkpoints.

pub mod checkpoint;
pub mod class_table;
pub mod classifier;
pub mod clip_scan;
pub mod downstream;
pub mod dp_loop;
pub mod finetune;
pub mod gradient_canaries;
pub mod mixed_precision;
pub mod plot;
pub mod pretrain;

use tch::Tensor;

/// Refuses a δ at or above 1/n for `n` private examples, unless `allow`: a mechanism that
/// publishes one random example in the clear is (0, 1/n)-DP, so such a δ promises nothing.
pub fn ensure_meaningful_delta(delta: f64, n: usize, allow: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        delta > 0.0 && delta < 1.0,
        "delta = {delta}: it must lie in (0, 1)"
    );
    let bound = 1.0 / n.max(1) as f64;
    anyhow::ensure!(
        allow || delta < bound,
        "delta = {delta} is not below 1/n = {bound:.3e} for the n = {n} private examples: \
         releasing one example in the clear satisfies (0, 1/n)-DP, so this delta guarantees \
         nothing. Use a delta well below 1/n (commonly 1e-5 for tens of thousands of examples), \
         or allow it for experiments (--allow-large-delta, allow_large_delta = true)"
    );
    Ok(())
}

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
