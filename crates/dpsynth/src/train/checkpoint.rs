//! Atomic training checkpoints: a JSON state (step, privacy ledger, settings) plus named tensors.
//!
//! A checkpoint folder holds `checkpoint.json` and the tensor file it names,
//! `tensors-STEP.safetensors`. The tensors are written first (temp file + rename), then the JSON
//! (temp file + rename) that points at them, then older tensor files are removed. A crash at any
//! point leaves the previous checkpoint intact and loadable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tch::Tensor;

use crate::fsutil::{self, write_atomic};

/// Name of the JSON file in a checkpoint folder.
pub const STATE_FILE: &str = "checkpoint.json";

#[derive(Serialize, Deserialize)]
struct Envelope<S> {
    tensors_file: String,
    state: S,
}

/// Writes a checkpoint of `state` and `tensors` into `dir` atomically.
pub fn save<S: Serialize>(
    dir: &Path,
    step: u64,
    state: &S,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors_file = format!("tensors-{step:09}.safetensors");
    let final_path = dir.join(&tensors_file);
    let tmp = fsutil::temp_beside(&final_path, ".safetensors.partial")
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.as_str(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&named, tmp.path())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    fsutil::persist(tmp, &final_path)
        .with_context(|| format!("writing {}", final_path.display()))?;
    let env = Envelope {
        tensors_file: tensors_file.clone(),
        state,
    };
    let json = serde_json::to_vec_pretty(&env)?;
    let state_path = dir.join(STATE_FILE);
    write_atomic(&state_path, &json)
        .with_context(|| format!("writing {}", state_path.display()))?;
    // the new checkpoint is complete: older tensor files are no longer referenced
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("tensors-") && name.ends_with(".safetensors") && name != tensors_file {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// True when `dir` holds a checkpoint.
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Reads a checkpoint: its state and its tensors by name.
pub fn load<S: DeserializeOwned>(dir: &Path) -> Result<(S, HashMap<String, Tensor>)> {
    let state_path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&state_path)
        .with_context(|| format!("{}: cannot read checkpoint", state_path.display()))?;
    let env: Envelope<S> = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a valid checkpoint", state_path.display()))?;
    let tensors_path: PathBuf = dir.join(&env.tensors_file);
    if env.tensors_file.contains('/') || !tensors_path.is_file() {
        bail!(
            "{}: names tensor file {} which is missing",
            state_path.display(),
            env.tensors_file
        );
    }
    let tensors = Tensor::read_safetensors(&tensors_path)
        .with_context(|| format!("{}: cannot read tensors", tensors_path.display()))?
        .into_iter()
        .collect();
    Ok((env.state, tensors))
}

/// Copies checkpointed values into `params` (matched by name), checking names and shapes.
pub fn restore(
    params: &[(String, Tensor)],
    saved: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (name, p) in params {
        let src = saved
            .get(name)
            .with_context(|| format!("{}: checkpoint has no tensor '{name}'", dir.display()))?;
        if src.size() != p.size() {
            bail!(
                "{}: tensor '{name}' has shape {:?}, the model expects {:?}",
                dir.display(),
                src.size(),
                p.size()
            );
        }
        p.shallow_clone().copy_(src);
    }
    Ok(())
}

/// Settings that may change when a run is resumed: they change neither the privacy nor the
/// expected update (the micro-batch size only splits the same logical batch; a seeded run then
/// draws its random augmentation or diffusion noise in another order).
pub const FREE_ON_RESUME: &[&str] = &["physical_batch", "checkpoint_every", "checkpoint_seconds"];

/// Default longest stretch of training between checkpoints, in seconds: a run killed at any
/// point loses at most this much work (plus one step).
pub const DEFAULT_CHECKPOINT_SECONDS: f64 = 120.0;

/// serde's default for `checkpoint_seconds` fields.
pub fn default_checkpoint_seconds() -> f64 {
    DEFAULT_CHECKPOINT_SECONDS
}

/// When a training loop writes a checkpoint: every `every` steps (0: never by count), after
/// `seconds` of training since the last one, and at the last step.
pub struct CheckpointSchedule {
    every: u64,
    interval: std::time::Duration,
    last: std::time::Instant,
}

impl CheckpointSchedule {
    /// A schedule starting now. A non-positive or non-finite `seconds` disables the timer.
    pub fn new(every: u64, seconds: f64) -> Self {
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            f64::MAX / 4.0
        };
        Self {
            every,
            interval: std::time::Duration::from_secs_f64(seconds.min(1e9)),
            last: std::time::Instant::now(),
        }
    }

    /// Whether to checkpoint after `step` (`last`: the run's final step); restarts the timer
    /// when it says yes.
    pub fn due(&mut self, step: u64, last: bool) -> bool {
        let by_count = self.every > 0 && step.is_multiple_of(self.every);
        let due = last || by_count || self.last.elapsed() >= self.interval;
        if due {
            self.last = std::time::Instant::now();
        }
        due
    }
}

/// Refuses to resume when the run's settings differ from the checkpoint's in any top-level field
/// other than [`FREE_ON_RESUME`]. The error names every differing field with both values, so a
/// resumed run is the run that was started, not a silent mix of two.
pub fn ensure_same_settings<C: Serialize>(saved: &C, now: &C, dir: &Path) -> Result<()> {
    let (saved, now) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        bail!("settings must serialize to a JSON object");
    };
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| !FREE_ON_RESUME.contains(&k.as_str()) && saved.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("unset".into(), |v| v.to_string());
            format!(
                "{k} (checkpoint {}, now {})",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect();
    if !differ.is_empty() {
        bail!(
            "{}: the checkpoint was made with other settings: {}; resume with the same settings \
             or use another --out",
            dir.display(),
            differ.join(", ")
        );
    }
    Ok(())
}

/// Relative difference within which two calibrations of σ are the same calibration. σ is stored
/// as JSON text; a parser that does not round exactly (serde_json without its `float_roundtrip`
/// feature, which the workspace now enables) reads it back one ulp off, and a resume must not
/// fail on that. The resumed run continues with the checkpoint's σ either way.
pub const SIGMA_TOLERANCE: f64 = 1e-9;

/// Refuses to resume when this run's noise multiplier or sampling rate (which also depend on the
/// data's size) differ from the checkpoint's: the ledger would then mix two calibrations.
/// Returns the σ the resumed run continues with: the checkpoint's, so that the ledger records
/// one σ.
pub fn ensure_same_noise(saved: (f64, f64), now: (f64, f64), dir: &Path) -> Result<f64> {
    let same_sigma = (saved.0 - now.0).abs() <= SIGMA_TOLERANCE * saved.0.abs().max(now.0.abs());
    if !same_sigma || saved.1 != now.1 {
        bail!(
            "{}: the checkpoint used sigma {} and q {}, this data and these settings give {} and \
             {}; resume with the same data and settings or use another --out",
            dir.display(),
            saved.0,
            saved.1,
            now.0,
            now.1
        );
    }
    Ok(saved.0)
}

#[cfg(test)]
mod tests {
    use super::CheckpointSchedule;

    #[test]
    fn checkpoints_by_count_by_time_and_at_the_end() {
        let mut by_count = CheckpointSchedule::new(3, 0.0);
        let due: Vec<u64> = (1..=7).filter(|&s| by_count.due(s, s == 7)).collect();
        assert_eq!(due, [3, 6, 7]);
        // a zero-length interval: every step is due
        let mut by_time = CheckpointSchedule::new(0, 1e-9);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(by_time.due(1, false));
        let mut never = CheckpointSchedule::new(0, 3600.0);
        assert!(!never.due(1, false));
        assert!(never.due(2, true));
    }
}
