//! `dpsynth audit` end to end on a small private set: it reports the bounds of both canary sets
//! beside the accountant's ε, and its gradient canaries catch a run without noise.

mod common;

use common::dpsynth;
use rand::{Rng, SeedableRng};

/// An ImageFolder of 80 random 28×28 grey images in two classes; its spec.
fn noise_tree(dir: &std::path::Path) -> String {
    let root = dir.join("private");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for i in 0..80 {
        let class = root.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).unwrap();
        image::GrayImage::from_fn(28, 28, |_, _| image::Luma([rng.gen::<u8>()]))
            .save(class.join(format!("{i}.png")))
            .unwrap();
    }
    format!("imagefolder:{}", root.display())
}

#[test]
fn audit_without_noise_reports_both_bounds_and_catches_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = noise_tree(dir.path());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let config = dir.path().join("audit.toml");
    // 60 images after 20 canaries are set aside (about 10 added back): q = 8/70, about 30 steps
    let text = format!(
        "out = \"unused\"\n[private]\ntrain = \"{spec}\"\ntest = \"{spec}\"\n\
         [finetune]\nbase = \"{base}\"\nmode = \"loda\"\nepsilon = 1.0\ndelta = 1e-5\n\
         epochs = 3.0\nbatch = 8\nphysical_batch = 8\n\
         [sample]\nper_class = 1\nsteps = 1\nguidance = 1.0\nseed = 0\n\
         [evaluate]\nepochs = 1\nval_fraction = 0.1\n"
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("audit");
    let (code, stdout, stderr) = dpsynth(&[
        "audit",
        "--config",
        config.to_str().unwrap(),
        "--canaries",
        "20",
        "--gradient-canaries",
        "200",
        "--draws",
        "1",
        "--noise-multiplier",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("audit (input canaries): epsilon >="),
        "{stdout}"
    );
    assert!(stdout.contains("infinite (no noise)"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("audit.json")).unwrap()).unwrap();
    assert_eq!(report["input_canaries"]["result"]["canaries"], 20);
    let planted = &report["gradient_canaries"]["result"];
    assert_eq!(planted["canaries"], 200);
    // without noise a member's score is C × (steps it was sampled) > 0 for 97% of them and a
    // non-member's is 0: the 50 highest are members, which rejects any ε below about 2
    let bound = planted["epsilon_lower_bound"].as_f64().unwrap();
    assert!(
        bound > 1.5,
        "gradient canaries missed a run without noise: {planted}"
    );
    assert!(
        report["accountant_epsilon"].is_null(),
        "ε = ∞ is written as null"
    );
}
