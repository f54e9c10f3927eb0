//! Errors returned by the accountants and the noise calibration.

/// Everything that can go wrong when accounting or calibrating.
///
/// Bad inputs are always reported through this type; no public function
/// panics on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A numeric parameter is outside its valid range.
    #[error("{name} must be {expected}, got {value}")]
    InvalidParameter {
        /// Human-readable name of the parameter, e.g. "sample rate".
        name: &'static str,
        /// The valid range, e.g. "in [0, 1]".
        expected: &'static str,
        /// The value that was passed.
        value: f64,
    },
    /// An accountant name that is neither "rdp" nor "pld".
    #[error("unknown accountant {0:?}: expected \"rdp\" or \"pld\"")]
    UnknownAccountant(String),
    /// Noise calibration cannot meet the target epsilon with any allowed noise.
    #[error(
        "target epsilon {target_epsilon} at delta {delta} cannot be reached: even noise \
         multiplier {max_noise_multiplier} gives epsilon {epsilon_at_max}"
    )]
    Unreachable {
        /// The requested epsilon.
        target_epsilon: f64,
        /// The requested delta.
        delta: f64,
        /// The largest noise multiplier tried.
        max_noise_multiplier: f64,
        /// The epsilon obtained with that noise multiplier.
        epsilon_at_max: f64,
    },
    /// Audit inputs that do not fit together (counts, scores, guesses).
    #[error("{0}")]
    Audit(String),
    /// An internal numerical step failed (not expected for valid inputs).
    #[error("numerical failure: {0}")]
    Numerical(String),
}

impl PrivacyError {
    pub(crate) fn invalid(name: &'static str, expected: &'static str, value: f64) -> Self {
        PrivacyError::InvalidParameter {
            name,
            expected,
            value,
        }
    }
}

/// Checks that `q` is a probability in [0, 1].
pub(crate) fn check_sample_rate(q: f64) -> Result<(), PrivacyError> {
    if (0.0..=1.0).contains(&q) {
        Ok(())
    } else {
        Err(PrivacyError::invalid("sample rate", "in [0, 1]", q))
    }
}

/// Checks that the noise multiplier is positive and finite.
pub(crate) fn check_noise_multiplier(sigma: f64) -> Result<(), PrivacyError> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::invalid(
            "noise multiplier",
            "positive and finite",
            sigma,
        ))
    }
}

/// Checks that delta is in the open interval (0, 1).
pub(crate) fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::invalid("delta", "in (0, 1)", delta))
    }
}

/// Checks that a target epsilon is positive and finite.
pub(crate) fn check_epsilon(epsilon: f64) -> Result<(), PrivacyError> {
    if epsilon.is_finite() && epsilon > 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::invalid(
            "target epsilon",
            "positive and finite",
            epsilon,
        ))
    }
}
