//! The number format a U-Net runs in while sampling, or while pretraining computes gradients
//! (`crate::train::mixed_precision`).
//!
//! Sampling is post-processing of a (DP) model, so its precision has no bearing on the privacy
//! guarantee. In bfloat16 the U-Net's weights and activations take 8 bits of mantissa; the
//! sampler's own arithmetic (noise, x̂0, the update rule) stays float32, and each ε is cast back
//! to float32 before it is used ([`Cast`]). CPUs with native bfloat16 dot products (x86-64 with
//! AVX512-BF16, which every CPU with AMX also has) run the shipped U-Nets about 2.3× as fast in
//! it (ARCHITECTURE.md, "Sampling and pretraining precision"); elsewhere libtorch emulates it,
//! slower than float32, which is why `auto` picks it only where it is native. DP training never
//! runs in bfloat16: the per-example norms DP-SGD clips must be those of what it sums.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::EpsModel;

/// A U-Net's number format (recorded in sampling reports and progress files, and in pretraining
/// configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// IEEE single precision (the training format; what every report without this key used).
    #[default]
    Float32,
    /// bfloat16 weights and activations.
    Bfloat16,
}

impl Precision {
    /// The libtorch kind of the denoiser's weights and inputs.
    pub fn kind(self) -> Kind {
        match self {
            Self::Float32 => Kind::Float,
            Self::Bfloat16 => Kind::BFloat16,
        }
    }

    /// Converts every floating-point variable of `store` to this format, in place (converting
    /// back to float32 does not restore the bits bfloat16 dropped).
    pub fn convert(self, store: &mut nn::VarStore) {
        match self {
            Self::Float32 => store.float(),
            Self::Bfloat16 => store.bfloat16(),
        }
    }

    /// "float32" or "bfloat16", as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Bfloat16 => "bfloat16",
        }
    }
}

/// Precision as users choose it (`precision` in a run config's `[sample]`, `dpsynth sample
/// --precision`): a format, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionChoice {
    /// bfloat16 where the device computes it natively ([`native_bf16`]), else float32.
    #[default]
    Auto,
    /// Always float32.
    Float32,
    /// Always bfloat16 (emulated, and slow, where it is not native).
    Bfloat16,
}

impl PrecisionChoice {
    /// The precision this choice gives on `device`.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            Self::Auto if native_bf16(device) => Precision::Bfloat16,
            Self::Auto | Self::Float32 => Precision::Float32,
            Self::Bfloat16 => Precision::Bfloat16,
        }
    }
}

/// Whether `device` computes bfloat16 natively: a CPU with AVX512-BF16. CUDA devices answer
/// false (`auto` keeps float32 there; ask for bfloat16 explicitly).
pub fn native_bf16(device: Device) -> bool {
    device == Device::Cpu && cpu_has_bf16()
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_bf16() -> bool {
    false
}

/// A model whose weights may be in another kind than its callers' tensors: each input is cast
/// to the weights' kind and each ε back to the input's (identity casts where they agree). The
/// samplers and bfloat16 pretraining call a model through it, so their own arithmetic stays in
/// float32.
pub struct Cast<'a, M>(pub &'a M);

impl<M: EpsModel> EpsModel for Cast<'_, M> {
    fn predict_eps(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Tensor {
        let inner = x.to_kind(self.0.weight_kind());
        self.0.predict_eps(&inner, t, labels).to_kind(x.kind())
    }

    fn null_class(&self) -> Option<i64> {
        self.0.null_class()
    }

    fn check_input(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<()> {
        self.0.check_input(x, t, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choices_ignore_the_cpu() {
        assert_eq!(
            PrecisionChoice::Float32.resolve(Device::Cpu),
            Precision::Float32
        );
        assert_eq!(
            PrecisionChoice::Bfloat16.resolve(Device::Cpu),
            Precision::Bfloat16
        );
        let auto = PrecisionChoice::Auto.resolve(Device::Cpu);
        assert_eq!(auto == Precision::Bfloat16, native_bf16(Device::Cpu));
    }

    #[test]
    fn names_round_trip_through_serde() {
        for p in [Precision::Float32, Precision::Bfloat16] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        }
    }
}
