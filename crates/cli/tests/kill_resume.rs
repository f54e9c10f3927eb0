//! Faults: DP fine-tuning, the DP-SGD classifier and pretraining are killed (SIGKILL) at random moments, including
//! inside checkpoint writes, and resumed with `--resume` until they finish. Every run must end
//! with the ledger and ε of an uninterrupted run, never less, and lose at most one checkpoint
//! interval of work per kill. The number of kills per command is `DPSYNTH_KILLS` (default 20; a
//! longer soak is the same test with a larger number).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn kills() -> usize {
    std::env::var("DPSYNTH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Runs `dpsynth ARGS` to the end; panics with its stderr if it fails.
fn run_to_end(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpsynth"))
        .args(args)
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `dpsynth ARGS`, killing it after a random delay up to `max_delay`, `kills` times
/// (resuming with `--resume` once a checkpoint exists in `ckpt`), then lets it finish. Returns
/// the number of kills that hit a running process.
fn run_with_kills(
    args: &[String],
    ckpt: &Path,
    kills: usize,
    max_delay: Duration,
    seed: u64,
) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let with_resume = |args: &[String]| {
        let mut a = args.to_vec();
        if ckpt.join("checkpoint.json").is_file() {
            a.push("--resume".into());
        }
        a
    };
    let mut hits = 0;
    for _ in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dpsynth"))
            .args(with_resume(args))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary runs");
        let delay = max_delay.mul_f64(rng.gen_range(0.05..1.0));
        let start = Instant::now();
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "a run between kills failed: {err}");
                return hits; // it finished before this kill
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                hits += 1;
            }
        }
    }
    run_to_end(&with_resume(args));
    hits
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Runs the command `args(out)` once uninterrupted into `dir/whole` and once with kills into
/// `dir/killed` (whose checkpoint is in `killed/checkpoint_sub`); returns both reports and the
/// number of kills that hit a running process.
fn whole_and_killed(
    dir: &Path,
    args: impl Fn(&Path) -> Vec<String>,
    checkpoint_sub: &str,
    max_delay: Duration,
    seed: u64,
) -> (serde_json::Value, serde_json::Value, usize) {
    let whole = dir.join("whole");
    run_to_end(&args(&whole));
    let killed = dir.join("killed");
    let hits = run_with_kills(
        &args(&killed),
        &killed.join(checkpoint_sub),
        kills(),
        max_delay,
        seed,
    );
    (report(&whole), report(&killed), hits)
}

/// Two classes of eight 28×28 grey images.
fn digits(dir: &Path) -> String {
    let root = dir.join("digits");
    for (class, v) in [("x", 30u8), ("y", 220)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..8u8 {
            image::GrayImage::from_pixel(28, 28, image::Luma([v.wrapping_add(3 * i)]))
                .save(root.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    format!("imagefolder:{}", root.display())
}

#[test]
fn killed_fine_tuning_resumes_to_the_uninterrupted_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let data = digits(dir.path());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "1",
            "finetune",
            "--base",
            base,
            "--data",
            &data,
            "--epsilon",
            "10",
            "--epochs",
            "6",
            "--batch",
            "4",
            "--physical-batch",
            "4",
            "--checkpoint-every",
            "1",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let (a, b, hits) = whole_and_killed(dir.path(), args, "checkpoint", Duration::from_secs(4), 1);
    assert_eq!(a["steps"], b["steps"]);
    assert_eq!(a["ledger"], b["ledger"], "{hits} kills");
    let (ea, eb) = (
        a["epsilon_spent"].as_f64().unwrap(),
        b["epsilon_spent"].as_f64().unwrap(),
    );
    // the same ledger through the same accountant: the same ε, never less
    assert_eq!(ea, eb, "ε after kills, and without");
    assert!(hits >= 1, "no kill hit a running fine-tuning");
}

#[test]
fn killed_dp_sgd_classifier_resumes_to_the_uninterrupted_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let data = digits(dir.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "1",
            "baseline",
            "--train",
            &data,
            "--test",
            &data,
            "--epsilon",
            "10",
            "--epochs",
            "400",
            "--batch",
            "4",
            "--physical-batch",
            "4",
            "--val",
            "0",
            "--checkpoint-every",
            "20",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let (a, b, hits) = whole_and_killed(dir.path(), args, "", Duration::from_secs(3), 3);
    assert_eq!(a["steps"], b["steps"]);
    assert_eq!(a["ledger"], b["ledger"], "{hits} kills");
    // the same ledger through the same accountant: the same ε, never less
    assert_eq!(
        a["epsilon_spent"], b["epsilon_spent"],
        "ε after kills, and without"
    );
    assert!(hits >= 1, "no kill hit a running DP-SGD classifier");
}

#[test]
fn killed_pretraining_resumes_to_the_same_step_and_loss_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = digits(dir.path());
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[model]
sample_size = 8
in_channels = 1
out_channels = 1
block_out_channels = [8, 8]
layers_per_block = 1
down_block_types = ["DownBlock2D", "DownBlock2D"]
up_block_types = ["UpBlock2D", "UpBlock2D"]
norm_num_groups = 4
num_class_embeds = 3

[schedule]
beta_schedule = "linear"
num_train_timesteps = 100

[[data]]
spec = "{data}"
labels = "keep"
convert = true

[train]
steps = 60
batch_size = 4
lr = 1e-3
ema_decay = 0.9
class_dropout = 0.1
seed = 0
checkpoint_every = 1
sample_every = 0
"#
        ),
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        let config = config.display().to_string();
        ["--threads", "1", "pretrain", "--config", &config, "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.display().to_string()])
            .collect()
    };
    let (a, b, hits) = whole_and_killed(dir.path(), args, "checkpoint", Duration::from_secs(3), 2);
    assert_eq!(a["steps"], b["steps"], "{hits} kills");
    assert_eq!(a["steps"], 60);
}
