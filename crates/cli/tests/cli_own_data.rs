//! Bring your own data: a folder of 64×64 colour images in 12 named classes runs through the
//! whole chain on the shipped 32×32 colour base with one `run --config`, and the synthetic set
//! comes out in 12 folders named for the classes.

mod common;

use common::dpsynth;

#[test]
fn twelve_class_64px_colour_folder_runs_on_the_colour_base() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mine");
    let names: Vec<String> = (0..12).map(|c| format!("kind-{c:02}")).collect();
    for (c, name) in names.iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..2u8 {
            image::RgbImage::from_pixel(64, 64, image::Rgb([20 * c as u8, 90 + 40 * i, 200]))
                .save(root.join(name).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let spec = format!("imagefolder:{}", root.display());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/cifar-base");
    let out = dir.path().join("run");
    // a few DP steps and one sampling step per image: the chain, not the quality, is tested;
    // delta below 1/n (n = 24 images)
    let config = format!(
        "out = \"{}\"\n[private]\ntrain = \"{spec}\"\ntest = \"{spec}\"\n\
         [finetune]\nbase = \"{base}\"\nmode = \"loda\"\nepsilon = 10.0\ndelta = 1e-3\n\
         epochs = 2.0\nbatch = 8\nphysical_batch = 8\n\
         [sample]\nper_class = 2\nsteps = 2\nguidance = 1.0\nseed = 0\n\
         [evaluate]\nepochs = 1\nval_fraction = 0.25\n",
        out.display()
    );
    let path = dir.path().join("run.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, stderr) = dpsynth(&["--threads", "1", "run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("converted 3x64x64 images to 3x32x32"),
        "{stderr}"
    );
    let mut written: Vec<String> = std::fs::read_dir(out.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written, names,
        "one sample folder per private class, by name"
    );
    for name in &names {
        let n = std::fs::read_dir(out.join("samples").join(name))
            .unwrap()
            .count();
        assert_eq!(n, 2, "{name}: per_class images");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["class_rows"].as_array().unwrap().len(), 12);
    for set in ["private_train", "test"] {
        let what = report["conversion"][set].as_str().unwrap_or_default();
        assert!(
            what.contains("64x64"),
            "the report records the {set} conversion: {what}"
        );
    }
    // the report names the base it started from by its weights' sha256, hashed here whole
    use sha2::{Digest, Sha256};
    let weights = std::fs::read(format!("{base}/diffusion_pytorch_model.safetensors")).unwrap();
    let want: String = Sha256::digest(&weights)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(report["base_weights_sha256"], want.as_str());
    eprintln!("{}", report["seconds"]);
}

/// A folder whose classes the base does not name: mode "base" refuses it and points to
/// class_init; with a class-init table it samples the base alone, each class's row started from
/// its public classes' rows, and the report says where each row started.
#[test]
fn the_base_alone_samples_new_class_names_from_a_class_init_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("digits");
    for (c, name) in ["one", "seven"].iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..2u8 {
            image::GrayImage::from_pixel(28, 28, image::Luma([60 * c as u8 + 10 * i]))
                .save(root.join(name).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let spec = format!("imagefolder:{}", root.display());
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist-base");
    let table = dir.path().join("class-init.toml");
    std::fs::write(&table, "one = [\"1\"]\nseven = [\"7\", \"1\"]\n").unwrap();
    let run = |class_init: &str, out: &str| {
        let config = format!(
            "out = \"{}\"\n[private]\ntrain = \"{spec}\"\ntest = \"{spec}\"\n\
             [finetune]\nbase = \"{base}\"\nmode = \"base\"\nepsilon = 1.0\ndelta = 1e-5\n\
             {class_init}\n\
             [sample]\nper_class = 2\nsteps = 2\nguidance = 1.0\nseed = 0\n\
             [evaluate]\nepochs = 1\nval_fraction = 0.25\n",
            dir.path().join(out).display()
        );
        let path = dir.path().join(format!("{out}.toml"));
        std::fs::write(&path, config).unwrap();
        dpsynth(&["--threads", "1", "run", "--config", path.to_str().unwrap()])
    };

    let (code, _, stderr) = run("", "plain");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("class_init"), "{stderr}");

    let (code, _, stderr) = run(&format!("class_init = \"{}\"", table.display()), "init");
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("init/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["class_rows"],
        serde_json::json!([{"mean": ["1"]}, {"mean": ["7", "1"]}])
    );
    assert_eq!(report["epsilon_spent"], 0.0);
    assert!(root.join("one").exists());
    let md = std::fs::read_to_string(dir.path().join("init/report.md")).unwrap();
    assert!(
        md.contains("class rows started from public class names"),
        "{md}"
    );

    // each public class its own row: seven's two images come from rows 7 and 1 in turn
    let (code, _, stderr) = run(
        &format!(
            "class_init = \"{}\"\nclass_init_rows = \"each\"",
            table.display()
        ),
        "each",
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("each/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["class_rows"],
        serde_json::json!([{"each": ["1"]}, {"each": ["7", "1"]}])
    );
    for class in ["one", "seven"] {
        let n = std::fs::read_dir(dir.path().join("each/samples").join(class))
            .unwrap()
            .count();
        assert_eq!(n, 2, "{class}");
    }
}
