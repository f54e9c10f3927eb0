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
    eprintln!("{}", report["seconds"]);
}
