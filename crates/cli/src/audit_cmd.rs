//! `dpsynth audit`: an empirical lower bound on ε for a fine-tuning configuration, from one
//! training run (Steinke, Nasr and Jagielski 2023; the statistics are `privacy::audit`).
//!
//! Two canary sets in one run, each giving its own bound:
//! - M input canaries, a seeded (public) choice of private training images with their pixels
//!   inverted (far from the rest of the data), each added to the training set with probability
//!   1/2 (OS randomness; the chosen originals are left out). A canary's score is how much the
//!   fine-tuning lowered its ε-prediction loss (base loss − fine-tuned loss, on seeded draws
//!   every model shares; the base is scored with the null class when its classes are not the
//!   data's). This measures what the model leaks; one run sees little, so the bound is loose.
//! - G gradient canaries (`dpsynth::train::gradient_canaries`), planted in the same run's DP
//!   loop: a white-box audit of its sampling, noise, calibration and accounting.
//!
//! The auditor guesses "in" for the highest scores and "out" for the lowest, and each bound is
//! the largest ε those guesses reject at 95% confidence, next to the accountant's ε.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use dpsynth::data::Dataset;
use dpsynth::diffusion::heldout::{seeded_subset, Conditioning, HeldoutConfig};
use dpsynth::fsutil::write_atomic;
use dpsynth::synth::{load_model_dir, model_heldout_loss};
use rand::Rng;
use tch::Device;

use crate::progress::Reporter;
use crate::run_cmd::{self, Job};
use dpsynth::pipeline::finetune_job::run_finetune;
use dpsynth::pipeline::report::Provenance;

/// Seed of the canaries' choice among the training images (public: it depends on nothing
/// private, only the set's size).
const CANARY_SEED: u64 = 0xa0d1;
/// Seed of the scoring draws, shared by the base and the fine-tuned model.
const SCORE_SEED: u64 = 0;
/// Confidence of the bound: 1 − SIGNIFICANCE.
const SIGNIFICANCE: f64 = 0.05;

#[derive(Args)]
pub struct AuditArgs {
    /// A run config (see configs/run-default.toml); its [private] train set and [finetune]
    /// settings are audited.
    #[arg(long)]
    config: PathBuf,
    /// Canaries M: inverted training images, each added with probability 1/2.
    #[arg(long, default_value_t = 1000)]
    canaries: usize,
    /// Gradient canaries planted in the same run (0: none): a white-box audit of its sampling,
    /// noise, calibration and accounting.
    #[arg(long, default_value_t = 1000)]
    gradient_canaries: usize,
    /// Timestep and noise draws per canary when scoring.
    #[arg(long, default_value_t = 8)]
    draws: i64,
    /// A fixed noise multiplier instead of the one the config's ε calls for: 0 audits a run
    /// without noise (no privacy), which the audit must catch.
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Output folder: finetune/ (the audited run) and audit.json.
    #[arg(long, default_value = "out/audit")]
    out: PathBuf,
}

/// Per-canary ε-prediction loss of the model in `dir` on `canaries`, in canary order: with
/// their own labels when the model's classes are the data's, else with the null class.
fn losses(dir: &Path, canaries: &Dataset, draws: i64, device: Device) -> Result<Vec<f64>> {
    let model = load_model_dir(dir, device)?;
    let conditioning = if model.classes == canaries.class_names {
        Conditioning::Labels
    } else {
        Conditioning::Null
    };
    let cfg = HeldoutConfig {
        limit: canaries.len(),
        draws,
        seed: SCORE_SEED,
        conditioning,
        ..HeldoutConfig::default()
    };
    let r = model_heldout_loss(&model, canaries, &cfg, device, &mut |_| {})?;
    let order = seeded_subset(canaries.len(), canaries.len(), SCORE_SEED);
    let mut out = vec![0.0; canaries.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = r.per_image[k];
    }
    Ok(out)
}

/// The audit of one canary set: its bound and a JSON summary (canaries, members, mean scores).
fn summarize(
    scores: &[f64],
    included: &[bool],
    delta: f64,
) -> Result<(privacy::audit::AuditResult, serde_json::Value)> {
    let guesses = privacy::audit::standard_guesses(scores.len());
    let result = privacy::audit::audit(scores, included, &guesses, delta, SIGNIFICANCE)?;
    let mean = |member: bool| {
        let v: Vec<f64> = (scores.iter().zip(included))
            .filter(|(_, &b)| b == member)
            .map(|(s, _)| *s)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let json = serde_json::json!({
        "canaries": scores.len(),
        "members": included.iter().filter(|&&b| b).count(),
        "mean_score_members": mean(true),
        "mean_score_non_members": mean(false),
        "guess_sizes": guesses,
        "epsilon_lower_bound": result.epsilon,
        "best_guess": result,
    });
    Ok((result, json))
}

/// Runs `dpsynth audit`.
pub fn run(a: AuditArgs, data_dir: &Path, device: Device) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("{}: cannot read", a.config.display()))?;
    let source = a.config.display().to_string();
    let Job::Pipeline(cfg) = run_cmd::parse_job(&text, &source)? else {
        anyhow::bail!("{source}: a [classifier] config: audit audits DP fine-tuning");
    };
    let f = &cfg.finetune;
    let config = f.finetune_config().with_context(|| {
        format!("{source}: mode \"base\" trains nothing, so there is nothing to audit")
    })?;
    let mode = config.mode;
    ensure!(
        !a.out.join("audit.json").exists(),
        "{}: holds a finished audit; choose another --out",
        a.out.display()
    );
    let start = Instant::now();
    let train = run_cmd::load_or_fetch(&cfg.private.train, data_dir)?;
    let m = a.canaries;
    ensure!(
        m >= 20 && m <= train.len() / 2,
        "--canaries {m}: need at least 20 and at most half the {} training images",
        train.len()
    );
    let canary_idx = seeded_subset(train.len(), m, CANARY_SEED);
    let mut rng = rand::rngs::OsRng;
    let included: Vec<bool> = (0..m).map(|_| rng.gen_bool(0.5)).collect();
    // canaries are the chosen images inverted (255 - x): far from the rest of the data, so one
    // canary's own gradient is what moves its loss (the worst case a guarantee must cover);
    // the chosen originals are left out of the run
    let mut canaries = train.subset(&canary_idx);
    canaries.images.iter_mut().for_each(|p| *p = 255 - *p);
    let mut is_canary = vec![false; train.len()];
    canary_idx.iter().for_each(|&i| is_canary[i] = true);
    let rest: Vec<usize> = (0..train.len()).filter(|&i| !is_canary[i]).collect();
    let mut audited = train.subset(&rest);
    for (k, _) in included.iter().enumerate().filter(|(_, &kept)| kept) {
        audited.images.extend_from_slice(canaries.image(k));
        audited.labels.push(canaries.labels[k]);
    }
    eprintln!(
        "== audit: {m} canaries, {} kept; DP fine-tuning on {} images",
        included.iter().filter(|&&b| b).count(),
        audited.len()
    );

    let base = run_cmd::resolve(&f.base);
    let mut job = run_cmd::finetune_job(
        f,
        config,
        base.clone(),
        &cfg.private.train,
        a.out.join("finetune"),
    )?;
    job.config.noise_multiplier = a.noise_multiplier;
    job.config.gradient_canaries = a.gradient_canaries;
    let mut reporter = Reporter::new(f.private_log.into());
    // the loaded model is dropped: the canaries are scored on the saved folder
    let done = run_finetune(&job, &audited, device, &mut |e| reporter.on(e))?.done;

    eprintln!("== scoring the canaries");
    let tuned = losses(&done.model_dir, &canaries, a.draws, device)?;
    let before = losses(&base, &canaries, a.draws, device)?;
    let scores: Vec<f64> = before.iter().zip(&tuned).map(|(b, t)| b - t).collect();
    let (input, input_json) = summarize(&scores, &included, f.delta)?;
    let planted = done
        .canaries
        .as_ref()
        .map(|c| summarize(&c.scores, &c.included, f.delta))
        .transpose()?;
    let accountant = if done.epsilon.is_finite() {
        format!("{:.3}", done.epsilon)
    } else {
        "infinite (no noise)".to_string()
    };
    let mut report = serde_json::to_value(Provenance {
        command: "audit",
        ..run_cmd::provenance(&source, &text)
    })?;
    if let Some(fields) = report.as_object_mut() {
        fields.extend(
            serde_json::json!({
                "mode": mode.to_string(),
                "private_train": cfg.private.train,
                "input_canaries": {
                    "what": "inverted training images, black box: how much the fine-tuned model's loss tells membership",
                    "score": "base loss - fine-tuned loss (the base with the null class when its classes are not the data's)",
                    "score_draws": a.draws,
                    "result": input_json,
                },
                "gradient_canaries": planted.as_ref().map(|(_, j)| serde_json::json!({
                    "what": "gradients of norm C on coordinates no loss touches, white box: the run's sampling, noise, calibration and accounting",
                    "score": "sum over steps of the released noisy gradient sum on the canary's coordinate",
                    "result": j,
                })),
                "confidence": 1.0 - SIGNIFICANCE,
                "accountant_epsilon": done.epsilon,
                "delta": f.delta,
                "noise_multiplier": done.state.noise_multiplier,
                "sample_rate": done.state.sample_rate,
                "steps": done.state.step,
                "seconds": start.elapsed().as_secs_f64(),
                "note": "the input canaries are private training images: this report is for the data holder",
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }
    let path = a.out.join("audit.json");
    write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let line = |what: &str, r: &privacy::audit::AuditResult| {
        println!(
            "audit ({what}): epsilon >= {:.3} at {:.0}% confidence ({} of {} guesses right, {} canaries)",
            r.epsilon,
            100.0 * (1.0 - SIGNIFICANCE),
            r.correct,
            r.guesses,
            r.canaries
        );
    };
    line("input canaries", &input);
    if let Some((r, _)) = &planted {
        line("gradient canaries", r);
    }
    println!(
        "the accountant's epsilon: {accountant} at delta {:e}; report: {}",
        f.delta,
        path.display()
    );
    Ok(())
}
