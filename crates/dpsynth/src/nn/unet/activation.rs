//! The element-wise non-linearities diffusers selects with `act_fn`.

use tch::Tensor;

/// A non-linearity named by diffusers' `get_activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` ("silu" or "swish").
    Silu,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// Exact (erf) GELU.
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses a diffusers `act_fn` name; `None` when unsupported.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Self::Silu),
            "mish" => Some(Self::Mish),
            "gelu" => Some(Self::Gelu),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    /// Applies the non-linearity.
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => x.silu(),
            Self::Mish => x.mish(),
            Self::Gelu => x.gelu("none"),
            Self::Relu => x.relu(),
        }
    }
}
