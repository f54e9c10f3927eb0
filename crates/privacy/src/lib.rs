//! Privacy accounting for DP-SGD with Poisson subsampling and the Gaussian
//! mechanism, under the add/remove-one neighbouring relation, as in Opacus
//! and Google's dp_accounting.
//!
//! * [`rdp`]: Rényi DP (Mironov, Talwar & Zhang 2019) with the improved
//!   (Balle et al. 2020) conversion to (ε, δ).
//! * [`pld`]: privacy loss distributions (connect-the-dots discretisation,
//!   FFT composition); tight, the default.
//! * [`Ledger`]: the steps taken so far, composable across batch-size changes
//!   and resumed runs.
//! * [`calibrate_noise`]: the smallest noise multiplier meeting a target ε.
//! * [`audit`]: empirical lower bounds on ε from one training run (Steinke,
//!   Nasr & Jagielski 2023).
//!
//! Pure Rust, no torch, so these tests run in seconds.

#![warn(missing_docs)]

mod accountant;
pub mod audit;
mod calibrate;
mod error;
mod ledger;
pub mod pld;
pub mod rdp;
mod special;

pub use accountant::Accountant;
pub use calibrate::{
    calibrate_noise, MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, RELATIVE_TOLERANCE,
};
pub use error::PrivacyError;
pub use ledger::{DpEvent, Ledger};

/// ε at `delta` ∈ (0, 1) for the composition of `events` under `accountant`.
///
/// Events with zero steps or zero sample rate cost nothing; an empty list
/// gives 0. The result may be `f64::INFINITY` when no finite ε achieves
/// `delta`. Every event is validated (q ∈ [0, 1], σ > 0 finite).
pub fn epsilon(
    accountant: Accountant,
    events: &[DpEvent],
    delta: f64,
) -> Result<f64, PrivacyError> {
    match accountant {
        Accountant::Rdp => rdp::epsilon(events, delta),
        Accountant::Pld => pld::epsilon(events, delta),
    }
}
