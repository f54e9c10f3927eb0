//! DP-SGD's per-example gradient norms and clipped sum on the shipped MNIST base, set up as a
//! `loda` fine-tuning run trains it, equal brute force: one backward pass per example over every
//! trainable tensor.
//!
//! Why: clipping bounds each example's contribution by C only if the engine's per-example norm is
//! the true norm of the gradient it sums. An under-estimate would let an example contribute more
//! than C, and the calibrated noise would then not give the promised ε. `adapters.rs` checks this
//! on a tiny 8 × 8 U-Net (channels 8/16) with the class embedding frozen; here the model is the
//! real one: `models/mnist-base` (its `config.json` and weights: 28 × 28 × 1, channels
//! 16/32/64, 11 class rows with the null class last), prepared by the library's own
//! [`prepare`] with `FinetuneConfig::new(Mode::Loda, ..)` (LoDA adapters on every ResNet conv1,
//! conv2 and conv_shortcut, rank 4, base frozen, the class embedding trained), cast to float64.
//! The loss is `eps_loss_with`, the closure fine-tuning gives `DpSgd::accumulate`, with the
//! engine's default rule options as the fine-tuning loop builds them, so every rule a real step
//! uses runs here:
//! - `narrow_conv` for the adapters' 3 × 3 `A` (C_in → 4) at 28 × 28, 14 × 14 and 7 × 7: its
//!   choice (`narrow_conv::preferred`, `cost::Strategy::resolve`) compares costs that are all
//!   linear in the batch size B, and the memory caps cannot bite (the estimate never picks ghost
//!   norms for these layers, and their materialised gradients, B · 4 · C_in · 9 values, stay far
//!   below the cap), so B = 4 picks the rule a physical batch of 250 does, layer by layer (for
//!   K = 1 and K = 2 alike: C_in ≥ 16 and 7 × 7 already favour it);
//! - the per-row rule for `B`, `D1`, `D2` and the 1 × 1 shortcut `A`;
//! - the embedding rule for the class table, with a label used by two examples and the null
//!   label, and (K = 2) an example whose two rows have different labels, as class dropout makes.
//!
//! The engine reports only each example's total norm; the norms per parameter group (each U-Net
//! block, each adapter part, the class embedding) come from the same rules
//! (`grad_sample::per_sample`) applied to the same tape, once with the engine's `Auto` choice and
//! once forcing materialised and once ghost norms, and are checked against brute force too, so
//! a failure names the group. All in float64; the two sides compute the same sums in other
//! orders (batched against batch-size-1 kernels, per-example products against autograd), so
//! they agree to rounding, ~1e-15 relative; 1e-6 is far above that and far below any missing
//! term, wrong scale or mixed-up example.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dpsynth::diffusion::loss::{eps_loss_with, Draws};
use dpsynth::dp::clip::CLIP_EPS;
use dpsynth::dp::engine::{DpSgd, DpSgdConfig};
use dpsynth::dp::grad_sample::{self, Strategy};
use dpsynth::dp::tape::{self, LayerKind};
use dpsynth::nn::unet::UNetConfig;
use dpsynth::train::finetune::{prepare, FinetuneConfig, Mode, Trainee};
use tch::{Device, Kind, Tensor};

/// Examples in the micro-batch.
const B: i64 = 4;

/// The two tests run one after the other: their printed norms stay apart, and on a small
/// machine they do not compete for its cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Relative agreement required between the engine and brute force (see the module doc).
const TOLERANCE: f64 = 1e-6;

/// Scale of the random values put into the adapters' zero-initialised `B` and `D2`: enough for
/// every adapter parameter to get a gradient, small enough that the model stays near the base.
const PERTURBATION: f64 = 0.05;

fn base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-base")
}

/// The shipped base prepared as a `loda` run prepares it, in float64, with `B` and `D2` perturbed.
fn trainee() -> Trainee {
    let dir = base_dir();
    let config = UNetConfig::load(&dir.join("config.json")).unwrap();
    assert_eq!(
        config.block_out_channels,
        [16, 32, 64],
        "not the MNIST base"
    );
    assert_eq!(config.num_class_embeds, Some(11));
    let cfg = FinetuneConfig::new(Mode::Loda, 1.0, 1e-5);
    assert!(cfg.train_class_embedding && cfg.adapter.resnet_convs);
    tch::manual_seed(0); // the adapters' A and D1 start random
    let mut t = prepare(&dir, &cfg, None, Device::Cpu).unwrap();
    assert_eq!(t.model.unet.config(), &config);
    t.model.unet.vs.double();
    let store = t.adapters.as_mut().expect("loda attaches adapters");
    store.double();
    // by name: `variables()` is a HashMap, whose order changes from run to run
    let mut vars: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, v) in vars {
            if name.contains(".B.") || name.contains(".D2.") {
                let _ = v
                    .shallow_clone()
                    .f_add_(&(v.randn_like() * PERTURBATION))
                    .unwrap();
            }
        }
    });
    for (name, v) in &t.trainable {
        assert!(v.requires_grad() && v.kind() == Kind::Double, "{name}");
    }
    let names: Vec<&str> = t.trainable.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"class_embedding.weight"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("conv_shortcut.A.weight")));
    t
}

/// `B` real-shaped images in [-1, 1] with K (timestep, noise) draws each, rows example-major.
/// Labels: example 0 and 2 share class 3, example 1 is the null class; with K = 2 example 2's
/// second row is dropped to the null class, as class dropout does row by row.
fn draws(k: i64, null: i64, seed: i64) -> (Tensor, Draws) {
    tch::manual_seed(seed);
    let opts = (Kind::Double, Device::Cpu);
    let x0 = Tensor::rand([B, 1, 28, 28], opts) * 2.0 - 1.0;
    let per_example = [[3, 3], [null, null], [3, null], [7, 7]];
    let labels: Vec<i64> = per_example
        .iter()
        .flat_map(|l| l[..k as usize].to_vec())
        .collect();
    let d = Draws {
        t: Tensor::randint(1000, [B * k], (Kind::Int64, Device::Cpu)),
        noise: Tensor::randn([B * k, 1, 28, 28], opts),
        labels: Tensor::from_slice(&labels),
    };
    (x0, d)
}

/// Example `i`'s gradient of the mean loss over its K rows, for every trainable tensor.
fn brute_force(t: &Trainee, x0: &Tensor, d: &Draws, k: i64) -> Vec<Vec<Tensor>> {
    let params = t.tensors();
    (0..B)
        .map(|i| {
            let di = Draws {
                t: d.t.narrow(0, i * k, k),
                noise: d.noise.narrow(0, i * k, k),
                labels: d.labels.narrow(0, i * k, k),
            };
            let loss = eps_loss_with(&t.model.unet, &t.model.schedule, &x0.narrow(0, i, 1), &di)
                .mean(Kind::Double);
            let grads = Tensor::run_backward(&[loss], &params, false, false);
            for ((name, _), g) in t.trainable.iter().zip(&grads) {
                assert!(g.defined(), "example {i}: no gradient for {name}");
            }
            grads
        })
        .collect()
}

fn sq(g: &Tensor) -> f64 {
    g.square().sum(Kind::Double).double_value(&[])
}

/// What [`rule_sq_norms`] found: squared per-example norms `[param][example]`, the tape's
/// entries by kind, and the input height of each parameter's layer where it is a convolution.
struct RuleNorms {
    sq_norms: Vec<Vec<f64>>,
    kinds: BTreeMap<&'static str, usize>,
    conv_height: Vec<Option<i64>>,
}

/// Squared per-example norms from the engine's rules applied to a recorded forward, as
/// `DpSgd::accumulate` applies them, with `strategy` for matmul-shaped weights. Also checks that
/// every trainable tensor is recorded once.
fn rule_sq_norms(t: &Trainee, x0: &Tensor, d: &Draws, k: i64, strategy: Strategy) -> RuleNorms {
    let params = t.tensors();
    let index: HashMap<usize, usize> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (p.data_ptr() as usize, i))
        .collect();
    let (losses, entries) =
        tape::record_forward(|| eps_loss_with(&t.model.unet, &t.model.schedule, x0, d));
    let loss = losses.sum(Kind::Double) / k as f64;
    let outputs: Vec<&Tensor> = entries.iter().map(|e| &e.output).collect();
    let grads = Tensor::run_backward(&[loss], &outputs, false, false);
    let _no_grad = tch::no_grad_guard();
    let mut sq_norms = vec![vec![0.0; B as usize]; params.len()];
    let mut recorded = vec![0; params.len()];
    let mut kinds = BTreeMap::new();
    let mut conv_height = vec![None; params.len()];
    for (e, gy) in entries.iter().zip(&grads) {
        let kind = match e.kind {
            LayerKind::Conv2d(_) => "conv2d",
            LayerKind::PerRowWeight => "per-row",
            LayerKind::Embedding => "embedding",
            LayerKind::Linear => "linear",
            LayerKind::GroupNorm { .. } => "group-norm",
        };
        *kinds.entry(kind).or_insert(0) += 1;
        assert!(gy.defined(), "a recorded {kind} output got no gradient");
        let lg = grad_sample::per_sample(e, gy, k, strategy).unwrap();
        for (part, tensor) in [(&lg.weight, Some(&e.weight)), (&lg.bias, e.bias.as_ref())] {
            let (Some(part), Some(tensor)) = (part, tensor) else {
                continue;
            };
            let i = index[&(tensor.data_ptr() as usize)];
            recorded[i] += 1;
            if matches!(e.kind, LayerKind::Conv2d(_)) {
                conv_height[i] = Some(e.input.size()[2]);
            }
            let v = Vec::<f64>::try_from(part.sq_norms().to_kind(Kind::Double)).unwrap();
            for (acc, x) in sq_norms[i].iter_mut().zip(v) {
                *acc += x;
            }
        }
    }
    for ((name, _), n) in t.trainable.iter().zip(&recorded) {
        assert_eq!(*n, 1, "{name} recorded {n} times");
    }
    RuleNorms {
        sq_norms,
        kinds,
        conv_height,
    }
}

/// The groups a parameter belongs to: its U-Net block (`down_blocks.0`, `mid_block`, ...) and
/// its adapter part (`A`, `D1`, `D2`, `B`), or `class_embedding`.
fn groups(name: &str) -> Vec<String> {
    let Some(rest) = name.strip_prefix("adapter.") else {
        return vec![name.split('.').next().unwrap().to_owned()];
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let block = if parts[0] == "mid_block" {
        "mid_block".to_owned()
    } else {
        format!("{}.{}", parts[0], parts[1])
    };
    vec![block, format!("adapter {}", parts[parts.len() - 2])]
}

/// Squared per-example norms summed per group, `group -> [example]`.
fn by_group(t: &Trainee, sq_norms: &[Vec<f64>]) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for ((name, _), v) in t.trainable.iter().zip(sq_norms) {
        for g in groups(name) {
            let acc = out.entry(g).or_insert_with(|| vec![0.0; B as usize]);
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
    }
    out
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want
}

/// Norms (total, per group, per strategy) and the clipped sum against brute force for K draws.
fn check(k: i64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = std::time::Instant::now();
    let t = trainee();
    let null = t.model.unet.null_class().unwrap();
    assert_eq!(null, 10);
    let (x0, d) = draws(k, null, 11 + k);
    let brute = brute_force(&t, &x0, &d, k);
    // [param][example], as the rules give them
    let brute_sq: Vec<Vec<f64>> = (0..t.trainable.len())
        .map(|j| brute.iter().map(|g| sq(&g[j])).collect())
        .collect();
    let brute_norms: Vec<f64> = (0..B as usize)
        .map(|i| brute_sq.iter().map(|v| v[i]).sum::<f64>().sqrt())
        .collect();

    // the engine, as a fine-tuning step calls it; C between the smallest and largest norm
    let mut sorted = brute_norms.clone();
    sorted.sort_by(f64::total_cmp);
    let clip = (sorted[1] + sorted[2]) / 2.0;
    let mut dp = DpSgd::new(t.tensors(), DpSgdConfig::new(clip, 0.0, 1.0), Some(0)).unwrap();
    let stats = dp
        .accumulate(k, || {
            eps_loss_with(&t.model.unet, &t.model.schedule, &x0, &d)
        })
        .unwrap();
    eprintln!(
        "K = {k}: {} trainable tensors ({} values), C = {clip:.6e}",
        t.trainable.len(),
        t.trainable.iter().map(|(_, v)| v.numel()).sum::<usize>()
    );
    for (i, (got, want)) in stats.norms.iter().zip(&brute_norms).enumerate() {
        eprintln!(
            "  example {i} (labels {:?}): engine {got:.12e}, brute force {want:.12e}, rel. error {:.1e}",
            Vec::<i64>::try_from(d.labels.narrow(0, i as i64 * k, k)).unwrap(),
            rel(*got, *want)
        );
    }
    for (i, (got, want)) in stats.norms.iter().zip(&brute_norms).enumerate() {
        assert!(*want > 0.0);
        assert!(
            rel(*got, *want) <= TOLERANCE,
            "K={k} example {i}: engine {got:e}, brute force {want:e}"
        );
    }
    assert!(
        stats.clipped >= 1 && stats.clipped < B as usize,
        "{stats:?}"
    );

    // per group, with the engine's choice of rule and with each matmul strategy forced
    let brute_groups = by_group(&t, &brute_sq);
    for strategy in [Strategy::Auto, Strategy::Materialise, Strategy::Ghost] {
        let rules = rule_sq_norms(&t, &x0, &d, k, strategy);
        let kinds = &rules.kinds;
        assert!(
            kinds.contains_key("conv2d") && kinds.contains_key("per-row"),
            "{kinds:?}"
        );
        assert_eq!(kinds.get("embedding"), Some(&1), "{kinds:?}");
        let totals: Vec<f64> = (0..B as usize)
            .map(|i| rules.sq_norms.iter().map(|v| v[i]).sum::<f64>().sqrt())
            .collect();
        // the input sizes of each group's convolutions (the adapters' 3 × 3 `A`)
        let mut heights: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for ((name, _), h) in t.trainable.iter().zip(&rules.conv_height) {
            for g in groups(name) {
                heights.entry(g).or_default().extend(*h);
            }
        }
        if strategy == Strategy::Auto {
            eprintln!("  tape entries: {kinds:?}");
            // the replica of the engine's loop agrees with the engine itself
            for (a, b) in totals.iter().zip(&stats.norms) {
                assert!(rel(*a, *b) <= 1e-12, "replica {a:e}, engine {b:e}");
            }
        }
        for (g, rule) in by_group(&t, &rules.sq_norms) {
            let want = &brute_groups[&g];
            let errs: Vec<f64> = rule
                .iter()
                .zip(want)
                .map(|(a, b)| rel(a.sqrt(), b.sqrt()))
                .collect();
            if strategy == Strategy::Auto {
                let norms: Vec<String> = want.iter().map(|v| format!("{:.4e}", v.sqrt())).collect();
                let worst = errs.iter().copied().fold(0.0, f64::max);
                let sizes: Vec<String> = heights[&g].iter().map(|h| format!("{h}x{h}")).collect();
                let label = if sizes.is_empty() {
                    g.clone()
                } else {
                    format!("{g} (convs at {})", sizes.join(", "))
                };
                eprintln!("  {label:<44} brute force {norms:?}, worst rel. error {worst:.1e}");
            }
            for (i, (e, w)) in errs.iter().zip(want).enumerate() {
                assert!(*w > 0.0, "{g}: example {i} has no gradient");
                assert!(
                    *e <= TOLERANCE,
                    "K={k} {strategy:?} {g} example {i}: rules {:e}, brute force {:e}",
                    rule[i].sqrt(),
                    w.sqrt()
                );
            }
        }
    }

    // the clipped, noise-free sum: Σ_i min(1, C / (‖g_i‖ + 1e-6)) g_i with the TRUE norms
    let factors: Vec<f64> = brute_norms
        .iter()
        .map(|n| (clip / (n + CLIP_EPS)).min(1.0))
        .collect();
    let wants = common::scaled_sum(&brute, &factors);
    let total = wants.iter().map(sq).sum::<f64>().sqrt();
    let got = dp.finish_step().unwrap();
    let err = got
        .iter()
        .zip(&wants)
        .map(|(g, w)| sq(&(g - w)))
        .sum::<f64>()
        .sqrt();
    eprintln!("  clipped sum: norm {total:.6e}, error {err:.1e}");
    assert!(err <= TOLERANCE * total, "K={k} clipped sum: error {err:e}");
    for ((name, _), (g, w)) in t.trainable.iter().zip(got.iter().zip(&wants)) {
        let e = (g - w).norm().double_value(&[]);
        let scale = w.norm().double_value(&[]);
        assert!(
            e <= TOLERANCE * scale + 1e-12 * total,
            "K={k} {name}: error {e:e} against {scale:e}"
        );
    }
    eprintln!("  K = {k} took {:.1} s", start.elapsed().as_secs_f64());
}

#[test]
fn loda_norms_on_the_real_base_match_brute_force() {
    check(1);
}

#[test]
fn loda_clipped_sum_on_the_real_base_matches_brute_force_with_two_draws() {
    check(2);
}
