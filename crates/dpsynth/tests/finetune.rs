//! DP fine-tuning from a base model whose classes are not the private data's (as a CIFAR-10 base
//! pretrained on unlabelled public images is): the classes start from the base's null embedding
//! or from related public classes (a class-init table) and are learned under DP, the table grows
//! to the private classes, the model folder carries their names, and freezing the embedding is
//! refused with a message naming the base. Also: the
//! committed pretraining configs parse, and the shipped CIFAR-10 base is its config's model and
//! denoises, and the clip scan measures per-example gradient norms as brute force does.

use std::path::Path;

use dpsynth::data::Dataset;
use dpsynth::diffusion::heldout::{image_draws, seeded_subset};
use dpsynth::diffusion::loss::{eps_loss_with, Draws};
use dpsynth::nn::unet::UNet;
use dpsynth::synth::load_model_dir;
use dpsynth::train::class_table::InitRows;
use dpsynth::train::clip_scan::{clip_pass, ClipScanConfig};
use dpsynth::train::finetune::{finetune, prepare, FinetuneConfig, Finetuned, Mode};
use dpsynth::train::pretrain::PretrainConfig;
use tch::{Device, Kind, Tensor};

mod common;
use common::{car_cat_config, class_table, finetune_config, private_data, same_row, tiny_base};

/// A fine-tuning run of `mode` with the test config, which must succeed.
fn finetune_ok(base: &Path, data: &Dataset, mode: Mode, out: &Path) -> Finetuned {
    finetune(
        base,
        data,
        &finetune_config(mode),
        out,
        false,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap()
}

/// The error of a fine-tuning run that must fail (output under `tmp/o`).
fn finetune_error(base: &Path, data: &Dataset, cfg: &FinetuneConfig, tmp: &Path) -> String {
    finetune(
        base,
        data,
        cfg,
        &tmp.join("o"),
        false,
        Device::Cpu,
        &mut |_| {},
    )
    .err()
    .expect("fine-tuning should have failed")
    .to_string()
}

/// The class-embedding table of the model folder `dir`.
fn model_class_table(dir: &Path) -> Tensor {
    class_table(
        &load_model_dir(dir, Device::Cpu)
            .unwrap()
            .unet
            .vs
            .variables(),
    )
}

#[test]
fn new_classes_are_learned_under_dp_and_named_in_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let data = private_data(4);
    for mode in [Mode::Loda, Mode::Lora] {
        let out = tmp.path().join(mode.to_string());
        let done = finetune_ok(&base, &data, mode, &out);
        let model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
        assert_eq!(model.classes, data.class_names, "{mode}");
        assert!(model.adapter.is_some());
        // the embedding rows of the private classes moved; the null row (never a label here
        // unless dropped out) is part of the same trained table
        let moved = (model_class_table(&done.model_dir) - model_class_table(&base))
            .narrow(0, 0, 4)
            .abs()
            .sum_dim_intlist(1, false, Kind::Double);
        for c in 0..4 {
            assert!(
                moved.double_value(&[c]) > 0.0,
                "{mode}: class {c} did not move"
            );
        }
        assert!(
            done.trainable_parameters > 5 * 32,
            "{mode}: embedding not counted"
        );
        sampling_merges_lora_only(model, mode);
    }
}

/// Readied for sampling, a LoRA model has its adapters merged into the base weights and computes
/// what it did (float32; the merged convolution sums the same products in another order, so
/// agreement is to rounding, 1e-5 of outputs of order 1); LoDA, not linear, stays attached.
fn sampling_merges_lora_only(mut model: dpsynth::synth::ModelDir, mode: Mode) {
    let [c, h, w] = model.unet.sample_shape().unwrap();
    tch::manual_seed(0);
    let x = Tensor::randn([2, c, h, w], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10i64, 500]);
    let labels = Tensor::from_slice(&[0i64, 1]);
    let before = tch::no_grad(|| model.unet.forward(&x, &t, &labels));
    model
        .prepare_sampling(dpsynth::diffusion::precision::Precision::Float32)
        .unwrap();
    assert_eq!(model.adapter.is_some(), mode == Mode::Loda, "{mode}");
    let after = tch::no_grad(|| model.unet.forward(&x, &t, &labels));
    let diff = f64::try_from((&before - &after).abs().max()).unwrap();
    let scale = f64::try_from(before.abs().max()).unwrap();
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "{mode}: the model readied for sampling differs by {diff}"
    );
}

/// Placeholder classes start from the base's null row (then move a little under DP), instead of
/// the random rows the base never trained; scratch re-initialises everything.
#[test]
fn placeholder_classes_start_from_the_null_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let before = model_class_table(&base);
    let null_row = before.narrow(0, 4, 1);
    // mean |row − null| per coordinate, for each of the four classes
    let gap = |table: &Tensor| -> Vec<f64> {
        let g = (table.narrow(0, 0, 4) - &null_row)
            .abs()
            .mean_dim(1, false, Kind::Double);
        Vec::<f64>::try_from(g).unwrap()
    };
    assert!(gap(&before).iter().all(|&g| g > 0.5), "{:?}", gap(&before));
    let data = private_data(4);
    for mode in [Mode::Loda, Mode::Full, Mode::Scratch] {
        let out = tmp.path().join(format!("init-{mode}"));
        let done = finetune_ok(&base, &data, mode, &out);
        let after = gap(&model_class_table(&done.model_dir));
        if mode == Mode::Scratch {
            assert!(after.iter().all(|&g| g > 0.5), "{mode}: {after:?}");
        } else {
            // 4 steps at lr 1e-2 move a coordinate by a few hundredths at most
            assert!(after.iter().all(|&g| g < 0.1), "{mode}: {after:?}");
        }
    }
}

#[test]
fn frozen_embedding_with_foreign_classes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let mut cfg = finetune_config(Mode::Loda);
    cfg.train_class_embedding = false;
    let err = finetune_error(&base, &private_data(4), &cfg, tmp.path());
    assert!(
        err.contains("cannot be frozen") && err.contains("classes.json"),
        "{err}"
    );
}

/// A private set with more classes than the base gets a table of its own size (every class
/// plus null), trains, and the model folder samples its classes by name.
#[test]
fn more_private_classes_than_the_base_grow_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let data = private_data(5);
    let done = finetune_ok(&base, &data, Mode::Loda, &tmp.path().join("o"));
    assert_eq!(done.class_rows.as_ref().unwrap().len(), 5);
    let model = load_model_dir(&done.model_dir, Device::Cpu).unwrap();
    assert_eq!(model.classes, data.class_names);
    assert_eq!(model.unet.num_class_embeds(), Some(6));
    assert_eq!(model_class_table(&done.model_dir).size(), [6, 32]);
}

/// A class-init table starts a private class from the mean of the named base rows; a class
/// without an entry starts from the null row, the new null row is the base's, and every other
/// weight is the base's.
#[test]
fn class_init_starts_rows_from_public_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let base_table = model_class_table(&base);
    let row = |i: i64| base_table.get(i);
    let data = private_data(5);
    let cfg = car_cat_config(Mode::Loda);
    let t = prepare(&base, &cfg, Some(&data.class_names), Device::Cpu).unwrap();
    let table = class_table(&t.model.unet.vs.variables());
    assert_eq!(table.size(), [6, 32]);
    assert!(same_row(&table.get(1), &((row(1) + row(3)) / 2.0)), "car");
    assert!(same_row(&table.get(3), &row(2)), "cat");
    for (c, name) in [(0, "plane"), (2, "bird"), (4, "deer"), (5, "null")] {
        assert!(
            same_row(&table.get(c), &row(4)),
            "{name} should start from null"
        );
    }
    let vars = t.model.unet.vs.variables();
    let base_vars = UNet::load(&base, Device::Cpu).unwrap().vs.variables();
    for (name, v) in &base_vars {
        if !name.starts_with("class_embedding.") {
            assert!(v.equal(&vars[name]), "{name} is not the base's");
        }
    }
    let rows = t.class_rows.unwrap();
    assert_eq!(
        serde_json::to_string(&rows[1]).unwrap(),
        r#"{"mean":["1","3"]}"#
    );
}

/// With `scaled_mean` a class of several public classes starts from their mean rescaled to
/// their rows' mean norm: the mean's direction, the rows' length. A class of one public class
/// starts from its row, as with the plain mean.
#[test]
fn scaled_mean_keeps_the_mean_direction_at_the_rows_norm() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let base_table = model_class_table(&base);
    let (r1, r3) = (base_table.get(1), base_table.get(3));
    let mut cfg = car_cat_config(Mode::Loda);
    cfg.class_init_rows = InitRows::ScaledMean;
    let data = private_data(5);
    let t = prepare(&base, &cfg, Some(&data.class_names), Device::Cpu).unwrap();
    let table = class_table(&t.model.unet.vs.variables());
    let norm = |r: &Tensor| r.norm().double_value(&[]);
    let mean = (&r1 + &r3) / 2.0;
    let want = &mean * ((norm(&r1) + norm(&r3)) / 2.0 / norm(&mean));
    // The rows are f32 of order 1 and the rescaling is a few f32 operations: 1e-5 is far
    // above their rounding and far below any difference between rows.
    let gap = (table.get(1) - &want).abs().max().double_value(&[]);
    assert!(gap < 1e-5, "car is {gap} from the rescaled mean");
    assert!(
        norm(&want) > norm(&mean),
        "the rows of the tiny base should not be parallel"
    );
    assert!(same_row(&table.get(3), &base_table.get(2)), "cat");
    let rows = t.class_rows.unwrap();
    assert_eq!(
        serde_json::to_string(&rows[1]).unwrap(),
        r#"{"scaled_mean":["1","3"]}"#
    );
}

#[test]
fn class_init_naming_unknown_classes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny_base(&base);
    let mut cfg = finetune_config(Mode::Loda);
    for (private, public, named) in [("horse", "1", "'horse'"), ("cat", "tabby", "'tabby'")] {
        cfg.class_init = Some([(private.to_string(), vec![public.to_string()])].into());
        let err = finetune_error(&base, &private_data(4), &cfg, tmp.path());
        assert!(err.contains("class_init") && err.contains(named), "{err}");
    }
}

/// The shipped `models/cifar-base` is the model of `configs/tiny-imagenet-base.toml`, names the
/// 200 Tiny ImageNet classes, and is trained: on flat colour fields noised to t = 500 its
/// null-class prediction of the noise is far better than the all-zero guess, whose mean squared
/// error is 1 (the pretrained model's is about 0.003).
#[test]
fn shipped_cifar_base_matches_its_config_and_denoises() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let md = load_model_dir(&root.join("models/cifar-base"), Device::Cpu).unwrap();
    let cfg = PretrainConfig::load(&root.join("configs/tiny-imagenet-base.toml")).unwrap();
    assert_eq!(md.unet.config(), &cfg.model);
    assert_eq!(md.classes.len(), 200);
    assert_eq!(md.classes[0], "goldfish");
    tch::manual_seed(0);
    let n = 8;
    let colour = Tensor::rand([n, 3, 1, 1], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let x0 = colour.expand([n, 3, 32, 32], false).contiguous();
    let draws = Draws {
        t: Tensor::full([n], 500, (Kind::Int64, Device::Cpu)),
        noise: Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu)),
        labels: Tensor::full(
            [n],
            md.unet.null_class().unwrap(),
            (Kind::Int64, Device::Cpu),
        ),
    };
    let mse = tch::no_grad(|| eps_loss_with(&md.unet, &md.schedule, &x0, &draws))
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(mse < 0.2, "epsilon-prediction error {mse} at t = 500");
}

/// Every pretraining config in configs/ (`*-base*.toml`) loads, and its sources are public
/// sets, never a private one; the Tiny ImageNet base has its 200 classes plus null.
#[test]
fn every_pretraining_config_loads_and_reads_public_data_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.contains("-base") && name.ends_with(".toml")) {
            continue;
        }
        let cfg = PretrainConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for d in &cfg.data {
            let dataset = d.spec.split(':').next().unwrap();
            assert!(
                !["mnist", "cifar10", "fashion-mnist", "imagefolder"].contains(&dataset),
                "{name}: {} is not public pretraining data",
                d.spec
            );
        }
        if name == "tiny-imagenet-base.toml" {
            assert_eq!(cfg.model.num_class_embeds, Some(201));
        }
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} pretraining configs");
}

/// The clip scan's per-example norms are those of plain autograd gradients taken one image at a
/// time (brute force), over what loda and full mode train, with K = 2 draws per image; its
/// signal estimate is the cross-term formula over those gradients clipped by definition.
#[test]
fn clip_scan_matches_per_example_autograd() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_base(tmp.path());
    let data = private_data(4);
    let (k, seed, limit) = (2, 3, 6);
    let scan = ClipScanConfig {
        limit,
        batch: 4,
        seed,
    };
    for mode in [Mode::Loda, Mode::Full] {
        let t = prepare(tmp.path(), &finetune_config(mode), None, Device::Cpu).unwrap();
        let null = t.model.unet.null_class().unwrap();
        let grads: Vec<Tensor> = seeded_subset(data.len(), limit, seed)
            .iter()
            .map(|&i| {
                let (x0, y) = data.batch(&[i], Device::Cpu);
                let draws =
                    image_draws(&[i], &y.full_like(null), k, seed, 1000, &data, Device::Cpu);
                let rows = eps_loss_with(&t.model.unet, &t.model.schedule, &x0, &draws);
                let g = Tensor::run_backward(&[rows.mean(Kind::Float)], &t.tensors(), false, false);
                Tensor::cat(&g.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(), 0)
                    .to_kind(Kind::Double)
            })
            .collect();
        let mut brute: Vec<f64> = grads.iter().map(|g| g.norm().double_value(&[])).collect();
        brute.sort_by(f64::total_cmp);
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-4 * want;

        let c = brute[limit / 2];
        let pass = clip_pass(&t, &data, k, &scan, c, Device::Cpu, &mut |_| {}).unwrap();
        let norms = &pass.norms;
        assert_eq!(norms.sorted().len(), limit, "{mode}");
        for (got, want) in norms.sorted().iter().zip(&brute) {
            assert!(*want > 0.0, "{mode}: a zero gradient tests nothing");
            assert!(
                close(*got, *want),
                "{mode}: scan {:?}, brute {brute:?}",
                norms.sorted()
            );
        }

        let clipped: Vec<Tensor> = grads
            .iter()
            .map(|g| g * (c / g.norm().double_value(&[])).min(1.0))
            .collect();
        let sum = clipped
            .iter()
            .fold(Tensor::zeros_like(&grads[0]), |a, g| a + g);
        let own: f64 = clipped
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum();
        let n = limit as f64;
        let cross = sum.square().sum(Kind::Double).double_value(&[]) - own;
        let want = (cross / (n * (n - 1.0))).max(0.0).sqrt();
        let got = pass.signal;
        assert!(
            want > 0.0 && close(got, want),
            "{mode}: signal {got}, brute force {want}"
        );
    }
}

/// `class_lr` sets the class embedding's step and leaves the adapters at `lr`.
#[test]
fn class_lr_moves_only_the_class_embedding_faster() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_base(tmp.path());
    let cfg = FinetuneConfig {
        lr: 1e-3,
        class_lr: Some(2e-2),
        ..finetune_config(Mode::Loda)
    };
    let t = prepare(tmp.path(), &cfg, None, Device::Cpu).unwrap();
    let before: Vec<Tensor> = t.tensors().iter().map(Tensor::copy).collect();
    let mut opt = t.optimizer(&cfg).unwrap();
    let ones: Vec<Tensor> = before.iter().map(Tensor::ones_like).collect();
    opt.step(&ones).unwrap();
    let mut saw_class = false;
    for ((name, p), b) in t.trainable.iter().zip(&before) {
        // the first Adam step moves every coordinate by its learning rate
        let step = (b - p).abs().max().double_value(&[]);
        let want = if name.starts_with("class_embedding.") {
            saw_class = true;
            2e-2
        } else {
            1e-3
        };
        assert!((step - want).abs() < 1e-6 * want.max(1.0), "{name}: {step}");
    }
    assert!(saw_class, "the class embedding is not trained");
}
