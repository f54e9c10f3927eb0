//! The activation tape: what trainable layers saw during one recorded forward pass.
//!
//! Recording is scoped to a thread with [`record_forward`]; layers call [`record`] and the call is a
//! no-op unless recording is on and the layer has a parameter that requires grad. Each entry holds
//! shallow handles (shared storage, no copy) to the layer's parameters, its input (detached) and its
//! output (still in the autograd graph), which is all the per-sample gradient rules need.
//! Inputs are tensors autograd keeps alive for the backward pass anyway, but only until the pass
//! is done with them, and outputs it may free at once: the tape keeps both through the whole
//! backward pass, and the engine drops each entry only once its rule has run after it (a rule in
//! matmul form keeps the input, with the output gradient, until the clipped sum). Layers whose
//! input and output are large next to their weight (the adapters' `B`, 1 × 1 and linear `A`,
//! `D1`, `D2`) therefore record the weight expanded per row instead
//! ([`record_per_row`], [`LayerKind::PerRowWeight`]): the backward pass delivers their per-row
//! weight gradients and frees the rest as it goes.

use std::cell::RefCell;

use tch::Tensor;

use super::layers::ConvConfig;

/// Which per-sample gradient rule applies to a recorded layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerKind {
    /// `y = x W^T + b` over the last dimension.
    Linear,
    /// 2-D convolution with groups = 1.
    Conv2d(ConvConfig),
    /// `y = W[idx]`; the recorded input is the int64 index tensor.
    Embedding,
    /// GroupNorm `y = xhat * w + b` per channel; the recorded input is the GroupNorm input, from
    /// which the rule recomputes `xhat` with these `groups` and `eps`.
    GroupNorm {
        /// Number of groups.
        groups: i64,
        /// Variance epsilon.
        eps: f64,
    },
    /// A parameter (`weight`) used through a per-row view: the recorded output is the parameter
    /// expanded to `[rows, ...shape]` (no copy), as the layer used it, so the gradient at it is
    /// each row's gradient of the parameter. The recorded input is empty and `bias` is `None`
    /// (a layer's bias is an entry of its own). For layers whose input and output are large
    /// next to their weight: the tape then keeps neither, autograd frees them during the
    /// backward pass, and the rule only sums each example's rows.
    PerRowWeight,
}

/// One recorded call of a trainable layer.
#[derive(Debug)]
pub struct Entry {
    /// Rule to apply.
    pub kind: LayerKind,
    /// The layer's weight (shares storage with the model's parameter).
    pub weight: Tensor,
    /// The layer's bias, if it has one.
    pub bias: Option<Tensor>,
    /// The layer's input, detached from the graph.
    pub input: Tensor,
    /// The layer's output, in the autograd graph.
    pub output: Tensor,
}

thread_local! {
    static TAPE: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

/// Records one layer call if recording is on and the layer has a trainable parameter.
pub fn record(
    kind: LayerKind,
    weight: &Tensor,
    bias: Option<&Tensor>,
    input: &Tensor,
    output: &Tensor,
) {
    let trainable = weight.requires_grad() || bias.is_some_and(|b| b.requires_grad());
    if !trainable {
        return;
    }
    TAPE.with(|t| {
        if let Some(entries) = t.borrow_mut().as_mut() {
            entries.push(Entry {
                kind,
                weight: weight.shallow_clone(),
                bias: bias.map(Tensor::shallow_clone),
                input: input.detach(),
                output: output.shallow_clone(),
            });
        }
    });
}

/// Whether a forward pass is being recorded on this thread (layers that compute differently
/// when recorded ask this first).
pub fn is_recording() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// Records `param` used through `rows_view`, its expansion to `[rows, ...param shape]` in the
/// autograd graph, as a [`LayerKind::PerRowWeight`] entry; a no-op unless recording is on and
/// `param` requires grad. The layer must compute with `rows_view` alone, never `param` itself.
pub fn record_per_row(param: &Tensor, rows_view: &Tensor) {
    if !param.requires_grad() {
        return;
    }
    TAPE.with(|t| {
        if let Some(entries) = t.borrow_mut().as_mut() {
            entries.push(Entry {
                kind: LayerKind::PerRowWeight,
                weight: param.shallow_clone(),
                bias: None,
                input: Tensor::empty([0], (param.kind(), param.device())),
                output: rows_view.shallow_clone(),
            });
        }
    });
}

/// Runs `f` (a forward pass) with recording on and returns its result with the tape.
///
/// Nested calls are not allowed: recording is already on inside `f`, so an inner call would steal
/// the outer tape; it panics instead, which is a programming error, not bad input.
pub fn record_forward<T>(f: impl FnOnce() -> T) -> (T, Vec<Entry>) {
    TAPE.with(|t| {
        let mut t = t.borrow_mut();
        assert!(t.is_none(), "tape::record_forward must not be nested");
        *t = Some(Vec::new());
    });
    // take the tape back even if `f` unwinds, so a later call on this thread starts clean
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            TAPE.with(|t| t.borrow_mut().take());
        }
    }
    let guard = Reset;
    let out = f();
    let entries = TAPE.with(|t| t.borrow_mut().take()).unwrap_or_default();
    drop(guard);
    (out, entries)
}
