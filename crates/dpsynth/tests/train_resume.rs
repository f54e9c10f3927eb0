//! DP classifier training checkpoints: a run stopped half-way and resumed accounts for every
//! step (the ledger continues), and ends where the uninterrupted schedule ends.

use dpsynth::data::Dataset;
use dpsynth::nn::classifier::ClassifierConfig;
use dpsynth::train::checkpoint;
use dpsynth::train::classifier::{train_classifier, PrivacyTarget, TrainConfig, TrainState};
use privacy::Accountant;
use tch::Device;

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
        max_grad_norm: 1.0,
        privacy: Some(PrivacyTarget {
            epsilon: 5.0,
            delta: 1e-5,
            accountant: Accountant::Pld,
        }),
        seed: Some(1),
        checkpoint_every: 4,
    }
}

#[test]
fn resumed_run_continues_the_ledger() {
    let data = tiny_data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    // the uninterrupted schedule: 2 epochs of 64 examples at batch 16 = 8 steps
    let full = train_classifier(
        &data,
        ClassifierConfig::mnist(),
        &cfg(2),
        None,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(full.state.ledger.total_steps(), 8);

    // the same schedule, crashing after step 5 (checkpoints every 4 steps)
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_classifier(
            &data,
            ClassifierConfig::mnist(),
            &cfg(2),
            Some(&ckpt),
            Device::Cpu,
            &mut |s| {
                if s.step == 5 {
                    panic!("simulated crash after step 5");
                }
            },
        )
    }));
    assert!(interrupted.is_err());
    // the last checkpoint is the one of step 4
    let (state, _): (TrainState, _) = checkpoint::load(&ckpt).unwrap();
    assert_eq!(state.step, 4);
    assert_eq!(state.ledger.total_steps(), 4);

    let resumed = train_classifier(
        &data,
        ClassifierConfig::mnist(),
        &cfg(2),
        Some(&ckpt),
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(resumed.state.step, 8);
    assert_eq!(resumed.state.ledger.total_steps(), 8);
    let eps_full = full.state.ledger.epsilon(Accountant::Pld, 1e-5).unwrap();
    let eps_resumed = resumed.state.ledger.epsilon(Accountant::Pld, 1e-5).unwrap();
    assert!((eps_full - eps_resumed).abs() < 1e-12);
    assert!(eps_resumed <= 5.0);
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let data = tiny_data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train_classifier(
        &data,
        ClassifierConfig::mnist(),
        &cfg(1),
        Some(&ckpt),
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let mut other = cfg(2);
    other.batch_size = 32;
    let err = train_classifier(
        &data,
        ClassifierConfig::mnist(),
        &other,
        Some(&ckpt),
        Device::Cpu,
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("resume with the same settings"), "{err}");
}
