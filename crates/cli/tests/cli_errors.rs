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

/// `--device` is global: every torch command takes it (before or after the command name), and
/// asking for CUDA where libtorch has none is one clear line, not a fall-back to the CPU.
#[test]
fn device_flag_is_global_and_cuda_without_a_gpu_fails_cleanly() {
    if tch::Cuda::is_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let out = dir.path().join("o");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let cases: [&[&str]; 7] = [
        &["--device", "cuda", "evaluate", "--train", "mnist:train"],
        &["baseline", "--epsilon", "1", "--device", "cuda:0"],
        &[
            "pretrain",
            "--config",
            "configs/mnist-base.toml",
            "--device",
            "cuda",
        ],
        &["finetune", "--epsilon", "1", "--device", "cuda"],
        &["sample", "--model", m, "--out", o, "--device", "cuda"],
        &["run", "--device", "cuda:1"],
        &[
            "--device",
            "cuda",
            "evaluate",
            "--train",
            "mnist:train",
            "--arch",
            "resnet",
        ],
    ];
    for args in cases {
        let (code, _, err) = dpsynth(dir.path(), args);
        assert_clean_failure(code, &err, "CUDA is not available");
    }
    let (code, _, err) = dpsynth(dir.path(), &["--device", "tpu", "run"]);
    assert_clean_failure(code, &err, "--device tpu: expected cpu, cuda or cuda:N");
}

#[test]
fn eta_without_ddim_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let (code, _, err) = dpsynth(
        dir.path(),
        &[
            "sample",
            "--model",
            "models/mnist-base",
            "--eta",
            "0.5",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_clean_failure(code, &err, "--eta 0.5 applies to --sampler ddim only");
    assert!(!out.exists(), "a refused sample must write nothing");

    let cfg = dir.path().join("run.toml");
    let text = include_str!("../../../configs/run-smoke.toml")
        .replace("[sample]", "[sample]\nsampler = \"ddpm\"\neta = 1.0");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = dpsynth(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    assert_clean_failure(
        code,
        &err,
        "[sample] eta applies to sampler = \"ddim\" only",
    );
}

/// An ImageFolder `dir/name` of two grey `side`×`side` images in classes `x` and `y`; its spec.
fn grey_tree(dir: &Path, name: &str, side: u32) -> String {
    let root = dir.join(name);
    for (class, v) in [("x", 10u8), ("y", 200)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        image::GrayImage::from_pixel(side, side, image::Luma([v]))
            .save(root.join(class).join("0.png"))
            .unwrap();
    }
    format!("imagefolder:{}", root.display())
}

/// Two ImageFolders in `dir`: 5×5 images no model takes, and 28×28 ones the MNIST base takes.
fn small_and_digit_trees(dir: &Path) -> (String, String) {
    (grey_tree(dir, "small", 5), grey_tree(dir, "digits", 28))
}

/// `dpsynth COMMAND FLAG models/mnist-base --data SPEC EXTRA...`, where `command_and_flag` is the
/// subcommand and the flag that names the model folder (`"loss --model"`).
fn on_mnist_base(
    dir: &Path,
    command_and_flag: &str,
    spec: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let mut args: Vec<&str> = command_and_flag.split(' ').collect();
    args.extend_from_slice(&[model, "--data", spec]);
    args.extend_from_slice(extra);
    dpsynth(dir, &args)
}

#[test]
fn loss_scores_images_and_refuses_mismatched_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (small, digits) = small_and_digit_trees(dir.path());
    let loss = |spec: &str, extra: &[&str]| on_mnist_base(dir.path(), "loss --model", spec, extra);
    let (code, _, err) = loss(&small, &[]);
    assert_clean_failure(code, &err, "images are [1, 5, 5] but the model");
    let (code, _, err) = loss(&digits, &["--labels", "own"]);
    assert_clean_failure(code, &err, "--labels own: the classes of --data");
    let (code, _, err) = loss(&digits, &["--buckets", "0"]);
    assert_clean_failure(code, &err, "timestep buckets must be in 1..=1000");

    let out = dir.path().join("loss.json");
    let (code, stdout, err) = loss(&digits, &["--draws", "2", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("on 2 images × 2 draws"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["result"]["draws"], 4);
    assert!(v["result"]["mean"].as_f64().unwrap() > 0.0);

    // paired against itself: the same images and draws, so a difference of zero (up to the
    // JSON round trip of the saved losses)
    let against = out.to_str().unwrap();
    let (code, stdout, err) = loss(&digits, &["--draws", "2", "--against", against]);
    assert_eq!(code, 0, "{err}");
    let diff: f64 = stdout
        .split_once(&format!("minus {against}: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no paired difference in: {stdout}"));
    assert!(diff.abs() < 1e-12, "{stdout}");
    // other draws: refused before any scoring
    let (code, _, err) = loss(&digits, &["--draws", "3", "--against", against]);
    assert_clean_failure(code, &err, "the images or draws differ");
    let (code, _, err) = loss(&digits, &["--against", "/nonexistent.json"]);
    assert_clean_failure(code, &err, "reading /nonexistent.json");
}

#[test]
fn clip_scan_reports_norms_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (small, digits) = small_and_digit_trees(dir.path());
    let scan =
        |spec: &str, extra: &[&str]| on_mnist_base(dir.path(), "clip-scan --base", spec, extra);
    let (code, _, err) = scan(&small, &[]);
    assert_clean_failure(code, &err, "images are [1, 5, 5] but the model at");
    let (code, _, err) = scan(&digits, &["--clip", "0.01,-1"]);
    assert_clean_failure(code, &err, "--clip: every bound must be positive");
    let (code, _, err) = scan(&digits, &["--limit", "1"]);
    assert_clean_failure(code, &err, "--limit: the scan needs at least 2 images");

    let (code, stdout, err) = scan(&digits, &["--clip", "1,0.001"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("mode loda"), "{stdout}");
    assert!(stdout.contains("on 2 images of imagefolder:"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("1 ") || l.trim_start().starts_with("0.001 "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
}

/// A class-init table naming a class the base or the private data does not have, or one that is
/// not a class map at all, is refused naming the table file and the name.
#[test]
fn class_init_errors_name_the_table_and_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let (_, digits) = small_and_digit_trees(dir.path());
    let table = dir.path().join("map.toml");
    let table_arg = table.display().to_string();
    let out = dir.path().join("o").display().to_string();
    for (text, named) in [
        ("x = [\"tabby\"]\n", "'tabby'"),
        ("z = [\"3\"]\n", "'z'"),
        ("x = \"3\"\n", "not a class map"),
    ] {
        std::fs::write(&table, text).unwrap();
        let (code, _, stderr) = on_mnist_base(
            dir.path(),
            "finetune --base",
            &digits,
            &["--epsilon", "1", "--class-init", &table_arg, "--out", &out],
        );
        assert_clean_failure(code, &stderr, named);
        assert!(stderr.contains("map.toml"), "{stderr}");
    }
}

/// `--resume` with nothing to resume is an error in every training command, not a fresh run.
#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, digits) = small_and_digit_trees(dir.path());
    let out = dir.path().join("empty").display().to_string();
    let (code, _, stderr) = on_mnist_base(
        dir.path(),
        "finetune --base",
        &digits,
        &["--epsilon", "1", "--resume", "--out", &out],
    );
    assert_clean_failure(code, &stderr, "no checkpoint to resume");
    let (code, _, stderr) = dpsynth(
        dir.path(),
        &["baseline", "--epsilon", "1", "--resume", "--out", &out],
    );
    assert_clean_failure(code, &stderr, "no checkpoint to resume");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/mnist-base.toml");
    let (code, _, stderr) = dpsynth(
        dir.path(),
        &["pretrain", "--config", config, "--out", &out, "--resume"],
    );
    assert_clean_failure(code, &stderr, "no checkpoint to resume");
}

/// A delta at or above 1/n of the private set guarantees nothing and is refused, saying why.
#[test]
fn delta_at_or_above_one_over_n_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, digits) = small_and_digit_trees(dir.path());
    // two private images: 1/n = 0.5
    let out = dir.path().join("o").display().to_string();
    let (code, _, stderr) = on_mnist_base(
        dir.path(),
        "finetune --base",
        &digits,
        &["--epsilon", "1", "--delta", "0.5", "--out", &out],
    );
    assert_clean_failure(code, &stderr, "delta = 0.5 is not below 1/n");
    assert!(stderr.contains("--allow-large-delta"), "{stderr}");
}

/// Private images of another size and mode, with more classes than the base has, fine-tune: the
/// images are converted to the base's shape (said in one line and in the report) and the class
/// table grows to the private classes, whose names the model folder carries.
#[test]
fn colour_images_of_another_size_and_more_classes_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("colour");
    let names: Vec<String> = (0..12).map(|c| format!("class{c:02}")).collect();
    for (c, name) in names.iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        image::RgbImage::from_pixel(64, 64, image::Rgb([20 * c as u8, 90, 200]))
            .save(root.join(name).join("0.png"))
            .unwrap();
    }
    let spec = format!("imagefolder:{}", root.display());
    let out = dir.path().join("o");
    let out_arg = out.display().to_string();
    let (code, _, stderr) = on_mnist_base(
        dir.path(),
        "finetune --base",
        &spec,
        &[
            "--epsilon",
            "10",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--physical-batch",
            "4",
            "--out",
            &out_arg,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("converted 3x64x64 images to 1x28x28"),
        "{stderr}"
    );
    let classes: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/classes.json")).unwrap())
            .unwrap();
    assert_eq!(classes, names);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["conversion"].as_str().unwrap().contains("luma"));
    assert_eq!(report["class_rows"].as_array().unwrap().len(), 12);
}

/// A one-class dataset cannot train a downstream classifier, and says so.
#[test]
fn one_class_data_is_refused_by_the_downstream_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("one");
    std::fs::create_dir_all(root.join("only")).unwrap();
    for i in 0..4 {
        image::GrayImage::from_pixel(28, 28, image::Luma([40 * i as u8]))
            .save(root.join("only").join(format!("{i}.png")))
            .unwrap();
    }
    let spec = format!("imagefolder:{}", root.display());
    let (code, _, stderr) = dpsynth(
        dir.path(),
        &[
            "evaluate", "--train", &spec, "--test", &spec, "--epochs", "1",
        ],
    );
    assert_clean_failure(code, &stderr, "needs at least two");
}

/// A run whose sampled classes are not the test set's, by name and in order, is refused before
/// any work: the downstream accuracy would score other labels. Fine-tuning is refused naming
/// both specs and the differing names; mode "base" also suggests fine-tuning.
#[test]
fn runs_refuse_a_test_set_of_other_classes() {
    let dir = tempfile::tempdir().unwrap();
    let train = grey_tree(dir.path(), "xy", 28);
    let root = dir.path().join("xz");
    for (class, v) in [("x", 10u8), ("z", 200)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([v]))
            .save(root.join(class).join("0.png"))
            .unwrap();
    }
    let test = format!("imagefolder:{}", root.display());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let run = |mode: &str, test: &str| {
        let out = dir.path().join(format!("run-{mode}"));
        let config = format!(
            "out = \"{}\"\n[private]\ntrain = \"{train}\"\ntest = \"{test}\"\n\
             [finetune]\nbase = \"{base}\"\nmode = \"{mode}\"\nepsilon = 10.0\ndelta = 1e-3\n\
             [sample]\nper_class = 2\nsteps = 2\nguidance = 1.0\nseed = 0\n\
             [evaluate]\nepochs = 1\nval_fraction = 0.25\n",
            out.display()
        );
        let path = dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, config).unwrap();
        let result = dpsynth(dir.path(), &["run", "--config", path.to_str().unwrap()]);
        assert!(!out.join("finetune").exists(), "refused before fine-tuning");
        result
    };
    let (code, _, stderr) = run("loda", &test);
    assert_clean_failure(
        code,
        &stderr,
        &format!("the private training set `{train}` and the test set `{test}` do not name"),
    );
    assert!(
        stderr.contains("has 'y'") && stderr.contains("has 'z'"),
        "{stderr}"
    );
    assert!(!stderr.contains("fine-tune to learn"), "{stderr}");

    // the base's classes are the digits
    let (code, _, stderr) = run("base", &train);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("error: mode \"base\" samples the classes of the base"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("only the test set `{train}` has 'x', 'y'")),
        "{stderr}"
    );
    assert!(
        stderr.contains("fine-tune to learn other classes"),
        "{stderr}"
    );
}
