//! The choice of privacy accountant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PrivacyError;

/// Which accountant turns a sequence of DP-SGD steps into (ε, δ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accountant {
    /// Rényi DP (Mironov et al.), converted with the Balle et al. 2020 bound.
    /// Fast but looser.
    Rdp,
    /// Privacy loss distributions (connect-the-dots, FFT composition).
    /// Tight; the default.
    #[default]
    Pld,
}

impl fmt::Display for Accountant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accountant::Rdp => "rdp",
            Accountant::Pld => "pld",
        })
    }
}

impl FromStr for Accountant {
    type Err = PrivacyError;

    /// Parses "rdp" or "pld" (ASCII case and surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rdp" => Ok(Accountant::Rdp),
            "pld" => Ok(Accountant::Pld),
            _ => Err(PrivacyError::UnknownAccountant(s.to_string())),
        }
    }
}
