//! `dpsynth privacy ...`: ε for a DP-SGD schedule, and σ for a target ε.

use anyhow::Result;
use clap::Subcommand;
use privacy::{calibrate_noise, epsilon, Accountant, DpEvent};

#[derive(Subcommand)]
pub enum PrivacyCommand {
    /// ε spent by T steps of DP-SGD with Poisson sampling rate q and noise multiplier σ.
    Epsilon {
        /// Poisson sampling rate q (expected batch size / dataset size), in [0, 1].
        #[arg(long)]
        sample_rate: f64,
        /// Noise multiplier σ (noise std / clipping norm).
        #[arg(long)]
        noise_multiplier: f64,
        /// Number of steps T.
        #[arg(long)]
        steps: u64,
        /// Target δ.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Accountant: pld (privacy loss distributions, default) or rdp (Rényi DP).
        #[arg(long, default_value = "pld")]
        accountant: Accountant,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Smallest noise multiplier σ that keeps T steps at sampling rate q within (ε, δ).
    Sigma {
        /// Target ε.
        #[arg(long)]
        epsilon: f64,
        /// Target δ.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Poisson sampling rate q, in [0, 1].
        #[arg(long)]
        sample_rate: f64,
        /// Number of steps T.
        #[arg(long)]
        steps: u64,
        /// Accountant: pld (default) or rdp.
        #[arg(long, default_value = "pld")]
        accountant: Accountant,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `privacy` subcommand.
pub fn run(cmd: PrivacyCommand) -> Result<()> {
    match cmd {
        PrivacyCommand::Epsilon {
            sample_rate,
            noise_multiplier,
            steps,
            delta,
            accountant,
            json,
        } => {
            let event = DpEvent {
                sample_rate,
                noise_multiplier,
                steps,
            };
            let eps = epsilon(accountant, &[event], delta)?;
            if json {
                let v = serde_json::json!({
                    "epsilon": eps, "delta": delta, "sample_rate": sample_rate,
                    "noise_multiplier": noise_multiplier, "steps": steps,
                    "accountant": accountant.to_string(),
                });
                println!("{v}");
            } else {
                println!(
                    "epsilon = {eps:.4} at delta = {delta:e} ({accountant}: q = {sample_rate}, \
                     sigma = {noise_multiplier}, {steps} steps)"
                );
            }
        }
        PrivacyCommand::Sigma {
            epsilon: target,
            delta,
            sample_rate,
            steps,
            accountant,
            json,
        } => {
            let sigma = calibrate_noise(accountant, target, delta, sample_rate, steps)?;
            let spent = epsilon(
                accountant,
                &[DpEvent {
                    sample_rate,
                    noise_multiplier: sigma,
                    steps,
                }],
                delta,
            )?;
            if json {
                let v = serde_json::json!({
                    "noise_multiplier": sigma, "epsilon": spent, "target_epsilon": target,
                    "delta": delta, "sample_rate": sample_rate, "steps": steps,
                    "accountant": accountant.to_string(),
                });
                println!("{v}");
            } else {
                println!(
                    "sigma = {sigma:.4} gives epsilon = {spent:.4} <= {target} at delta = {delta:e} \
                     ({accountant}: q = {sample_rate}, {steps} steps)"
                );
            }
        }
    }
    Ok(())
}
