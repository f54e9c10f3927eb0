//! Training loops and their checkpoints.

pub mod checkpoint;
pub mod classifier;
pub mod downstream;
pub mod finetune;
pub mod plot;
pub mod pretrain;

use tch::Tensor;

/// Shallow copies (shared storage) of a list of tensors.
pub(crate) fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}
