//! The binary on bad input: a message naming the file or flag, exit status 1, never a panic.

mod common;

use std::path::Path;

/// `dpsynth --data-dir DATA ARGS`.
fn dpsynth(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let dir = data_dir.to_str().expect("UTF-8 temp path");
    let all: Vec<&str> = ["--data-dir", dir]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    common::dpsynth(&all)
}

fn assert_clean_failure(code: i32, stderr: &str, expect: &str) {
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expect), "expected '{expect}' in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_spec_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = dpsynth(dir.path(), &["data", "info", "svhn:train"]);
    assert_clean_failure(
        code,
        &err,
        "dataset spec 'svhn:train': unknown dataset 'svhn'",
    );
}

#[test]
fn missing_data_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = dpsynth(dir.path(), &["data", "info", "mnist:test"]);
    assert_clean_failure(code, &err, "t10k-images-idx3-ubyte: not found");
}

#[test]
fn truncated_idx_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mnist");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("t10k-images-idx3-ubyte"), [0, 0, 8, 3, 0, 0, 0, 9]).unwrap();
    std::fs::write(m.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    let (code, _, err) = dpsynth(dir.path(), &["data", "info", "mnist:test"]);
    assert_clean_failure(code, &err, "t10k-images-idx3-ubyte: truncated IDX file");
}

#[test]
fn grid_of_imagefolder_and_bad_flag() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    for (class, v) in [("x", 10u8), ("y", 200)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        image::GrayImage::from_pixel(5, 5, image::Luma([v]))
            .save(root.join(class).join("0.png"))
            .unwrap();
    }
    let spec = format!("imagefolder:{}", root.display());
    let out = dir.path().join("grid.png");
    let (code, stdout, err) = dpsynth(
        dir.path(),
        &["data", "grid", &spec, "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote"));
    assert!(image::open(&out).is_ok());
    let (code, _, err) = dpsynth(dir.path(), &["data", "grid", &spec, "--scale", "0"]);
    assert_clean_failure(code, &err, "--scale");

    let (code, stdout, err) = dpsynth(dir.path(), &["data", "info", &spec, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["count"], 2);
    assert_eq!(v["per_class"][1][0], "y");
}

#[test]
fn dead_leaves_generate_info_grid_and_bad_generator() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "data",
        "generate",
        "dead-leaves",
        "--train",
        "12",
        "--test",
        "3",
    ];
    let (code, stdout, err) = dpsynth(dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("wrote 12 train and 3 test images"),
        "{stdout}"
    );
    let (code, _, err) = dpsynth(dir.path(), &args);
    assert_clean_failure(code, &err, "dead-leaves: already exists");

    let (code, stdout, err) = dpsynth(dir.path(), &["data", "info", "dead-leaves:train", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["count"], 12);
    assert_eq!(v["shape"], serde_json::json!([3, 32, 32]));
    let out = dir.path().join("grid.png");
    let (code, _, err) = dpsynth(
        dir.path(),
        &[
            "data",
            "grid",
            "dead-leaves:test",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(image::open(&out).is_ok());

    let (code, _, err) = dpsynth(dir.path(), &["data", "generate", "noise"]);
    assert_clean_failure(code, &err, "unknown generator 'noise'");
}
