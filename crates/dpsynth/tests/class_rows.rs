//! Classes with several class-embedding rows (`class_init_rows = "each"`): a private class that a
//! class-init table relates to several public classes gets one row per public class, each that
//! class's own base row; fine-tuning trains its images across those rows, sampling draws them in
//! turn, and the model folder records the rows (`class_rows.json`), refusing a table that does
//! not fit the model.

use std::path::Path;

use dpsynth::data::Dataset;
use dpsynth::diffusion::sampler::{sample_from, SamplerConfig};
use dpsynth::synth::resume::model_fingerprint;
use dpsynth::synth::{generate, load_model_dir, rows_in_turn, CLASS_ROWS_FILE};
use dpsynth::train::class_table::InitRows;
use dpsynth::train::finetune::{finetune, prepare, FinetuneConfig, Mode};
use tch::Device;

mod common;
use common::{car_cat_config, class_table, private_data, same_row, tiny_base};

/// The class-init test config ([`car_cat_config`]) with one row per public class.
fn each_config() -> FinetuneConfig {
    FinetuneConfig {
        class_init_rows: InitRows::Each,
        ..car_cat_config(Mode::Loda)
    }
}

#[test]
fn each_public_class_gives_the_private_class_its_own_row() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let base_table = class_table(
        &load_model_dir(&base, Device::Cpu)
            .unwrap()
            .unet
            .vs
            .variables(),
    );
    let data = private_data(5); // plane, car, bird, cat, deer
    let t = prepare(&base, &each_config(), Some(&data.class_names), Device::Cpu).unwrap();
    // plane, car (2 rows), bird, cat, deer, null
    assert_eq!(t.model.row_classes, [0, 1, 1, 2, 3, 4]);
    let rows = class_table(&t.model.unet.vs.variables());
    assert_eq!(rows.size(), [7, 32]);
    assert!(
        same_row(&rows.get(1), &base_table.get(1)),
        "car's first row"
    );
    assert!(
        same_row(&rows.get(2), &base_table.get(3)),
        "car's second row"
    );
    assert!(same_row(&rows.get(4), &base_table.get(2)), "cat");
    for (r, name) in [(0, "plane"), (3, "bird"), (5, "deer"), (6, "null")] {
        assert!(
            same_row(&rows.get(r), &base_table.get(4)),
            "{name} starts from null"
        );
    }
    assert_eq!(
        serde_json::to_string(&t.class_rows.unwrap()[1]).unwrap(),
        r#"{"each":["1","3"]}"#
    );
}

/// With no noise (σ = 0) a row moves only when some image is trained as it: private images of
/// `car` alone move both of car's rows and no other class's.
#[test]
fn a_class_is_trained_across_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let five = private_data(5);
    let cars = Dataset::new(
        Path::new("cars"),
        five.images.clone(),
        vec![1; five.len()],
        [3, 8, 8],
        five.class_names.clone(),
    )
    .unwrap();
    let mut cfg = each_config();
    cfg.noise_multiplier = Some(0.0);
    cfg.class_dropout = 0.0;
    let start = class_table(
        &prepare(&base, &cfg, Some(&cars.class_names), Device::Cpu)
            .unwrap()
            .model
            .unet
            .vs
            .variables(),
    );
    let out = tmp.path().join("o");
    let done = finetune(&base, &cars, &cfg, &out, false, Device::Cpu, &mut |_| {}).unwrap();
    let end = class_table(
        &load_model_dir(&done.model_dir, Device::Cpu)
            .unwrap()
            .unet
            .vs
            .variables(),
    );
    let moved = |r: i64| (end.get(r) - start.get(r)).abs().max().double_value(&[]);
    assert!(
        moved(1) > 1e-4 && moved(2) > 1e-4,
        "{} {}",
        moved(1),
        moved(2)
    );
    // Adam leaves a coordinate whose gradient was always 0 exactly where it was
    for r in [0, 3, 4, 5, 6] {
        assert!(moved(r) < 1e-12, "row {r} moved by {}", moved(r));
    }
}

/// The fine-tuned folder records the rows, sampling takes a class's rows in turn, and a
/// `class_rows.json` that does not fit the model is refused, naming the file.
#[test]
fn the_folder_records_the_rows_and_sampling_takes_them_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let data = private_data(5);
    let out = tmp.path().join("o");
    let done = finetune(
        &base,
        &data,
        &each_config(),
        &out,
        false,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let dir = &done.model_dir;
    let mut model = load_model_dir(dir, Device::Cpu).unwrap();
    assert_eq!(model.row_classes, [0, 1, 1, 2, 3, 4]);
    assert_eq!(model.classes, data.class_names);

    assert_eq!(
        rows_in_turn(&model.row_classes, &[0, 1, 1, 1, 2, 1]),
        [0, 1, 2, 1, 3, 2]
    );
    // images 2 and 3 are car's: rows 1 and 2, with the noise of images 2 and 3
    let cfg = SamplerConfig::ddim(5, 2.0);
    let all = generate(&model, 2, &cfg, 7, &mut |_| {}).unwrap();
    let sample = |rows: &[i64]| {
        let x = sample_from(
            &model.unet,
            &model.schedule,
            rows,
            2,
            [3, 8, 8],
            &cfg,
            7,
            Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        Dataset::from_unit_tensor(&x, vec![0; rows.len()], vec!["x".into()]).unwrap()
    };
    let pixels = |ds: &Dataset, i: usize| {
        let n = 3 * 64;
        ds.images[i * n..(i + 1) * n].to_vec()
    };
    // the same images from batches of other sizes: equal up to one grey level of rounding
    let close = |a: Vec<u8>, b: Vec<u8>| a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 1);
    let in_turn = sample(&[1, 2]);
    assert!(close(pixels(&all, 2), pixels(&in_turn, 0)));
    assert!(close(pixels(&all, 3), pixels(&in_turn, 1)));
    let first_row_only = sample(&[1, 1]);
    assert!(
        !close(pixels(&all, 3), pixels(&first_row_only, 1)),
        "row 2 draws another image"
    );

    // the rows are part of what a resumed sampling must match
    let fingerprint = model_fingerprint(&model).unwrap();
    model.row_classes = vec![0, 1, 2, 2, 3, 4];
    assert_ne!(model_fingerprint(&model).unwrap(), fingerprint);

    let file = dir.join(CLASS_ROWS_FILE);
    for (text, says) in [
        (
            "[0, 1, 1, 2, 3]",
            "5 rows listed for a model with 6 class rows",
        ),
        ("[0, 1, 1, 2, 3, 9]", "class index 9"),
        ("[0, 1, 1, 2, 2, 2]", "class 3 has no row"),
        ("{\"car\": 1}", "expected a JSON array"),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = format!("{:#}", load_model_dir(dir, Device::Cpu).err().unwrap());
        assert!(
            err.contains(CLASS_ROWS_FILE) && err.contains(says),
            "{text}: {err}"
        );
    }
}
