//! Resuming DP training from a checkpoint (classifier and diffusion fine-tuning): a run stopped
//! half-way and resumed accounts for every step (the ledger continues); a seeded run continues
//! its sampling and noise streams, so it ends with exactly the weights of the uninterrupted run
//! (restarting them would release the same noise twice); and other settings are refused by name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use dpsynth::data::Dataset;
use dpsynth::nn::classifier::ClassifierConfig;
use dpsynth::train::checkpoint;
use dpsynth::train::classifier::{
    train_classifier, PrivacyTarget, TrainConfig, TrainState, Trained,
};
use dpsynth::train::finetune::{finetune, FinetuneConfig, Finetuned, Mode};
use privacy::Accountant;
use tch::{Device, Tensor};

mod common;
use common::{private_data, tiny_base};

/// libtorch's generator is global: tests comparing seeded runs bit for bit take turns.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn torch_rng() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that two sets of named tensors hold exactly the same values.
fn assert_same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    let b: HashMap<_, _> = b.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, t) in a {
        assert!(t.equal(b[name.as_str()]), "{name} differs");
    }
}

fn tiny_data() -> Dataset {
    let n = 64;
    let images = (0..n * 28 * 28).map(|i| (i * 37 % 251) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(
        std::path::Path::new("tiny"),
        images,
        labels,
        [1, 28, 28],
        (0..10).map(|d| d.to_string()).collect(),
    )
    .unwrap()
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        physical_batch: 8,
        lr: 0.1,
        momentum: 0.9,
        clip: 1.0,
        privacy: PrivacyTarget {
            epsilon: 5.0,
            delta: 1e-5,
            accountant: Accountant::Pld,
            allow_large_delta: false,
        },
        seed: Some(1),
        checkpoint_every: 4,
        checkpoint_seconds: 0.0,
    }
}

/// Trains the tiny classifier with `c`, checkpointing into `ckpt` when given.
fn train(c: &TrainConfig, ckpt: Option<&Path>) -> anyhow::Result<Trained> {
    train_classifier(
        &tiny_data(),
        ClassifierConfig::mnist(),
        c,
        ckpt,
        Device::Cpu,
        &mut |_| {},
    )
}

/// Runs the 8-step schedule `cfg(2)` into `ckpt` and crashes after step 5, leaving the
/// checkpoint of step 4 (checkpoints every 4 steps).
fn crash_after_step_5(ckpt: &Path) {
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_classifier(
            &tiny_data(),
            ClassifierConfig::mnist(),
            &cfg(2),
            Some(ckpt),
            Device::Cpu,
            &mut |s| assert!(s.step < 5, "simulated crash after step 5"),
        )
    }));
    assert!(crashed.is_err());
}

#[test]
fn resumed_run_continues_the_ledger_and_the_random_streams() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    // the uninterrupted schedule: 2 epochs of 64 examples at batch 16 = 8 steps
    let full = train(&cfg(2), None).unwrap();
    assert_eq!(full.state.ledger.total_steps(), 8);

    crash_after_step_5(&ckpt);
    let (state, _): (TrainState, _) = checkpoint::load(&ckpt).unwrap();
    assert_eq!(state.step, 4);
    assert_eq!(state.ledger.total_steps(), 4);

    let resumed = train(&cfg(2), Some(&ckpt)).unwrap();
    assert_eq!(resumed.state.step, 8);
    assert_eq!(resumed.state.ledger.total_steps(), 8);
    let eps_full = full.state.ledger.epsilon(Accountant::Pld, 1e-5).unwrap();
    let eps_resumed = resumed.state.ledger.epsilon(Accountant::Pld, 1e-5).unwrap();
    assert!((eps_full - eps_resumed).abs() < 1e-12);
    assert!(eps_resumed <= 5.0);
    // the same batches and the same noise as the uninterrupted run, not a replay of steps 1-4
    let named = |v: &tch::nn::VarStore| v.variables().into_iter().collect::<Vec<_>>();
    assert_same_tensors(&named(&full.vs), &named(&resumed.vs));
}

#[test]
fn seeded_checkpoint_without_stream_positions_is_refused() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    // strip the stream positions from the checkpoint of step 4, as a checkpoint written before
    // they were saved looks
    crash_after_step_5(&ckpt);
    let json = ckpt.join(checkpoint::STATE_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["state"]["streams"]["noise"].is_string(), "{v}");
    v["state"].as_object_mut().unwrap().remove("streams");
    std::fs::write(&json, v.to_string()).unwrap();
    let err = format!("{:#}", train(&cfg(2), Some(&ckpt)).err().unwrap());
    assert!(err.contains("would repeat the noise"), "{err}");
}

/// Renames the clipping bound in the checkpoint in `dir` to `max_grad_norm`, its name in
/// checkpoints written before it was `clip`.
fn write_old_clip_key(dir: &Path) {
    let json = dir.join(checkpoint::STATE_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let config = v["state"]["config"].as_object_mut().unwrap();
    let clip = config
        .remove("clip")
        .expect("a checkpoint names the bound clip");
    config.insert("max_grad_norm".into(), clip);
    std::fs::write(&json, v.to_string()).unwrap();
}

#[test]
fn a_checkpoint_naming_the_bound_max_grad_norm_resumes() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    crash_after_step_5(&ckpt);
    write_old_clip_key(&ckpt);
    let resumed = train(&cfg(2), Some(&ckpt)).unwrap();
    assert_eq!(resumed.state.ledger.total_steps(), 8);
    assert_eq!(resumed.state.config.clip, cfg(2).clip);
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train(&cfg(1), Some(&ckpt)).unwrap();
    let mut other = cfg(2);
    other.batch_size = 32;
    let err = train(&other, Some(&ckpt)).err().unwrap().to_string();
    assert!(err.contains("resume with the same settings"), "{err}");
}

fn finetune_cfg() -> FinetuneConfig {
    FinetuneConfig {
        epochs: 4.0,
        batch_size: 8,
        physical_batch: 8,
        seed: Some(3),
        checkpoint_every: 2,
        checkpoint_seconds: 0.0,
        lr: 1e-2,
        accountant: Accountant::Rdp,
        ..FinetuneConfig::new(Mode::Loda, 10.0, 1e-5)
    }
}

/// Fine-tunes the tiny base into `out`, calling `on_step` after every step.
fn finetune_tiny(
    base: &Path,
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    on_step: &mut dyn FnMut(u64),
) -> anyhow::Result<Finetuned> {
    finetune(
        base,
        &private_data(4),
        cfg,
        out,
        resume,
        Device::Cpu,
        &mut |s| on_step(s.step),
    )
}

fn checkpoint_tensors(out: &Path) -> Vec<(String, Tensor)> {
    let (_, t): (serde_json::Value, HashMap<String, Tensor>) =
        checkpoint::load(&out.join("checkpoint")).unwrap();
    t.into_iter().collect()
}

#[test]
fn resumed_seeded_finetuning_ends_as_the_uninterrupted_run() {
    let _rng = torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let cfg = finetune_cfg();
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let full = finetune_tiny(&base, &cfg, &whole, false, &mut |_| {}).unwrap();
    assert_eq!(full.state.step, 8);

    let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        finetune_tiny(&base, &cfg, &parts, false, &mut |step| {
            assert!(step < 5, "simulated crash after step 5")
        })
    }));
    assert!(crash.is_err());
    assert_eq!(full.seconds_earlier, 0.0, "a fresh run has no earlier time");
    let (saved, _): (serde_json::Value, HashMap<String, Tensor>) =
        checkpoint::load(&parts.join("checkpoint")).unwrap();
    let saved_seconds = saved["seconds"].as_f64().unwrap();
    assert!(saved_seconds > 0.0, "{saved}");
    // other settings are refused by name; the micro-batch size may change
    let other = FinetuneConfig {
        lr: 2e-2,
        ..cfg.clone()
    };
    let err = format!(
        "{:#}",
        finetune_tiny(&base, &other, &parts, true, &mut |_| {})
            .err()
            .unwrap()
    );
    assert!(err.contains("lr (checkpoint 0.01, now 0.02)"), "{err}");
    // a checkpoint written before the bound was named `clip` resumes as the same run
    write_old_clip_key(&parts.join("checkpoint"));
    let checkpoint_every_step = FinetuneConfig {
        checkpoint_every: 1,
        ..cfg.clone()
    };
    let resumed = finetune_tiny(&base, &checkpoint_every_step, &parts, true, &mut |step| {
        assert!(step > 4, "resumed at step {step}, the checkpoint is step 4")
    })
    .unwrap();
    assert_eq!(resumed.state.ledger.total_steps(), 8);
    // the resumed run reports the first run's training time, as its checkpoint recorded it
    // (a tolerance, as the value crosses a JSON round trip)
    assert!(
        (resumed.seconds_earlier - saved_seconds).abs() < 1e-9,
        "{} against {saved_seconds}",
        resumed.seconds_earlier
    );
    assert!(resumed.state.seconds >= saved_seconds);
    // adapters, class embedding and Adam moments all match the uninterrupted run's
    let whole = checkpoint_tensors(&whole);
    assert!(whole.len() > 4);
    assert_same_tensors(&whole, &checkpoint_tensors(&parts));
}
