//! LoRA/LoDA adapters on the U-Net: they start as the identity update, train only their own
//! parameters, and DP-SGD's per-example gradient norms for them equal a brute-force loop of
//! batch-size-1 backward passes (float64, relative error ≤ 1e-5).

mod common;

use dpsynth::diffusion::loss::{eps_loss_with, Draws};
use dpsynth::diffusion::NoiseSchedule;
use dpsynth::dp::engine::{DpSgd, DpSgdConfig};
use dpsynth::dp::tape::{self, LayerKind};
use dpsynth::nn::adapter::{attach, merge_lora, AdapterConfig, AdapterKind};
use dpsynth::nn::unet::{UNet, UNetConfig};
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> UNetConfig {
    UNetConfig::from_json(
        r#"{"sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [8, 16], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 4, "attention_head_dim": 8, "num_class_embeds": 4}"#,
    )
    .unwrap()
}

fn adapted(kind: AdapterKind) -> (UNet, nn::VarStore, usize) {
    tch::manual_seed(3);
    let mut unet = UNet::new(tiny(), Device::Cpu).unwrap();
    unet.vs.double();
    unet.vs.freeze();
    let store = nn::VarStore::new(Device::Cpu);
    let cfg = AdapterConfig {
        attention: true,
        time_embedding: true,
        ..AdapterConfig::new(kind, 2)
    };
    let n = attach(&mut unet, &store, &cfg).unwrap();
    let mut store = store;
    store.double();
    (unet, store, n)
}

fn draws(b: i64, seed: i64) -> (Tensor, Tensor, Draws) {
    tch::manual_seed(seed);
    let x0 = Tensor::rand([b, 1, 8, 8], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 1][..b as usize]);
    let d = Draws {
        t: Tensor::randint(1000, [b], (Kind::Int64, Device::Cpu)),
        noise: Tensor::randn([b, 1, 8, 8], (Kind::Double, Device::Cpu)),
        labels: labels.shallow_clone(),
    };
    (x0, labels, d)
}

/// Makes every adapter's zero-initialised maps non-zero, so all parameters get gradients.
fn perturb(store: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, v) in store.variables() {
            let _ = v.shallow_clone().f_add_(&(v.randn_like() * 0.1)).unwrap();
        }
    });
}

#[test]
fn adapters_start_as_the_base_model() {
    let (unet, store, n) = adapted(AdapterKind::Loda);
    // per ResNet block: conv1, conv2 (+ shortcut), time_emb_proj; attention: 4; time MLP: 2
    assert!(n > 10, "only {n} adapters attached");
    let base = UNet::new(tiny(), Device::Cpu).unwrap();
    let mut base = base;
    base.vs.double();
    base.vs.copy(&unet.vs).unwrap();
    let (x, labels, d) = draws(3, 1);
    let t = d.t;
    let with = unet.forward(&x, &t, &labels);
    let without = base.forward(&x, &t, &labels);
    // B starts at zero, so the adapted output is W*x + 0; the two forwards take different code
    // paths (adapter convolutions, an extra add), which may round differently in the last bits
    // of f64 on some CPUs (9.7e-16 seen on an AMD EPYC). 1e-12 is a thousand times that and far
    // below any adapter that had not started at zero (outputs here are of order 1).
    let diff = f64::try_from((with - without).abs().max()).unwrap();
    assert!(
        diff <= 1e-12,
        "adapted model differs from the base by {diff}"
    );
    // base weights are frozen, adapter weights train
    assert!(unet.vs.variables().values().all(|v| !v.requires_grad()));
    assert!(!store.trainable_variables().is_empty());
    assert!(store.variables().keys().all(|k| k.starts_with("adapter.")));
}

fn check_norms(kind: AdapterKind) {
    let (unet, store, _) = adapted(kind);
    perturb(&store);
    let schedule = NoiseSchedule::linear(1000).unwrap();
    let params: Vec<Tensor> = store.trainable_variables();
    let b = 5;
    let (x0, _, d) = draws(b, 7);
    let mut dp = DpSgd::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        DpSgdConfig::new(1e9, 0.0, b as f64),
        Some(0),
    )
    .unwrap();
    let stats = dp
        .accumulate(1, || eps_loss_with(&unet, &schedule, &x0, &d))
        .unwrap();
    for i in 0..b {
        let di = Draws {
            t: d.t.narrow(0, i, 1),
            noise: d.noise.narrow(0, i, 1),
            labels: d.labels.narrow(0, i, 1),
        };
        let loss = eps_loss_with(&unet, &schedule, &x0.narrow(0, i, 1), &di).sum(Kind::Double);
        let grads = Tensor::run_backward(&[loss], &params, false, false);
        let norm: f64 = grads
            .iter()
            .map(|g| f64::try_from(g.square().sum(Kind::Double)).unwrap())
            .sum::<f64>()
            .sqrt();
        let got = stats.norms[i as usize];
        assert!(norm > 0.0);
        assert!(
            (got - norm).abs() <= 1e-5 * norm,
            "{kind:?} example {i}: engine {got}, brute force {norm}"
        );
    }
}

#[test]
fn loda_per_example_norms_match_brute_force() {
    check_norms(AdapterKind::Loda);
}

#[test]
fn lora_per_example_norms_match_brute_force() {
    check_norms(AdapterKind::Lora);
}

/// `b` examples with `k` noise draws each: rows example-major, an example's label on its K rows.
fn draws_k(b: i64, k: i64, seed: i64) -> (Tensor, Draws) {
    let (x0, labels, _) = draws(b, seed);
    let rows = b * k;
    let d = Draws {
        t: Tensor::randint(1000, [rows], (Kind::Int64, Device::Cpu)),
        noise: Tensor::randn([rows, 1, 8, 8], (Kind::Double, Device::Cpu)),
        labels: labels.repeat_interleave_self_int(k, 0, Some(rows)),
    };
    (x0, d)
}

/// The engine's clipped, noise-free sum for the adapters (whose `B`, `D1` and `D2` run with
/// per-row weights while recording) equals brute force: one backward pass per example of the
/// mean loss over its K rows. C is the median norm, so some examples are clipped and some not.
/// Float64; the engine sums the same products in another order (batched and per-row products),
/// so the two agree to rounding, and 1e-5 relative is far above that and far below the error of
/// a wrong row grouping or K scaling.
fn check_clipped_sum(kind: AdapterKind, k: i64) {
    let (unet, store, _) = adapted(kind);
    perturb(&store);
    let schedule = NoiseSchedule::linear(1000).unwrap();
    let params: Vec<Tensor> = store.trainable_variables();
    let b = 4;
    let (x0, d) = draws_k(b, k, 9);
    let brute: Vec<Vec<Tensor>> = (0..b)
        .map(|i| {
            let di = Draws {
                t: d.t.narrow(0, i * k, k),
                noise: d.noise.narrow(0, i * k, k),
                labels: d.labels.narrow(0, i * k, k),
            };
            let loss = eps_loss_with(&unet, &schedule, &x0.narrow(0, i, 1), &di).mean(Kind::Double);
            Tensor::run_backward(&[loss], &params, false, false)
        })
        .collect();
    let norms: Vec<f64> = brute
        .iter()
        .map(|g| {
            g.iter()
                .map(|t| t.square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let c = sorted[b as usize / 2];
    let factors: Vec<f64> = norms.iter().map(|n| (c / (n + 1e-6)).min(1.0)).collect();

    let shallow: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
    let mut dp = DpSgd::new(shallow, DpSgdConfig::new(c, 0.0, 1.0), Some(0)).unwrap();
    let stats = dp
        .accumulate(k, || eps_loss_with(&unet, &schedule, &x0, &d))
        .unwrap();
    for (i, (got, want)) in stats.norms.iter().zip(&norms).enumerate() {
        assert!(
            (got - want).abs() <= 1e-5 * want,
            "{kind:?} K={k} example {i}: engine {got}, brute force {want}"
        );
    }
    assert!(stats.clipped >= 1 && stats.clipped < b as usize);
    let wants = common::scaled_sum(&brute, &factors);
    let total = wants
        .iter()
        .map(|w| w.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    for (j, (got, want)) in dp.finish_step().unwrap().iter().zip(&wants).enumerate() {
        let err = (got - want).norm().double_value(&[]);
        let scale = want.norm().double_value(&[]);
        // relative to the parameter's own gradient, with a rounding floor relative to the whole
        // update: LoDA's `D2` bias on `to_k` shifts all keys alike, which softmax ignores, so its
        // gradient is zero in exact arithmetic and both sides are rounding noise (1e-19) there
        assert!(
            err <= 1e-5 * scale + 1e-12 * total,
            "{kind:?} K={k} parameter {j}: error {err:e} against {scale:e}"
        );
    }
}

#[test]
fn loda_clipped_sum_matches_brute_force_with_two_draws() {
    check_clipped_sum(AdapterKind::Loda, 2);
}

#[test]
fn lora_clipped_sum_matches_brute_force_with_two_draws() {
    check_clipped_sum(AdapterKind::Lora, 2);
}

/// While DP-SGD records, the adapters' `B` (and LoDA's `D1`, `D2`) use per-row weights where
/// they pay: convolutions and the attention projections over many positions; the time-embedding
/// adapters, one position per row, stay plain.
#[test]
fn adapters_record_per_row_weights() {
    let (unet, store, _) = adapted(AdapterKind::Loda);
    let (x, labels, d) = draws(2, 4);
    let (_, entries) = tape::record_forward(|| unet.forward(&x, &d.t, &labels));
    let per_row = entries
        .iter()
        .filter(|e| e.kind == LayerKind::PerRowWeight)
        .count();
    assert!(per_row > 0 && per_row < entries.len());
    // every adapter parameter is recorded exactly once
    let recorded: std::collections::BTreeSet<usize> = entries
        .iter()
        .flat_map(|e| std::iter::once(&e.weight).chain(e.bias.as_ref()))
        .map(|t| t.data_ptr() as usize)
        .collect();
    let count: usize = entries
        .iter()
        .map(|e| 1 + usize::from(e.bias.is_some()))
        .sum();
    assert_eq!(recorded.len(), count);
    assert_eq!(count, store.trainable_variables().len());
}

/// LoRA folded into the base weights computes what the adapted model did (float64; the merged
/// convolution sums the same products in another order, so agreement is to rounding, 1e-10 on
/// outputs of order 1), and the U-Net is left without adapters.
#[test]
fn merged_lora_computes_what_the_adapters_did() {
    let (mut unet, store, n) = adapted(AdapterKind::Lora);
    perturb(&store);
    let (x, labels, d) = draws(3, 2);
    let before = unet.forward(&x, &d.t, &labels);
    assert_eq!(merge_lora(&mut unet).unwrap(), n);
    drop(store); // the adapters' weights are no longer used
    let after = unet.forward(&x, &d.t, &labels);
    let diff = f64::try_from((&before - &after).abs().max()).unwrap();
    let scale = f64::try_from(before.abs().max()).unwrap();
    assert!(
        diff <= 1e-10 * scale.max(1.0),
        "merged model differs by {diff}"
    );
    let mut adapters = 0;
    unet.for_each_adaptable(&mut |_, layer| {
        adapters += usize::from(match layer {
            dpsynth::nn::unet::LayerMut::Conv(c) => c.adapter.is_some(),
            dpsynth::nn::unet::LayerMut::Linear(l) => l.adapter.is_some(),
        })
    });
    assert_eq!(adapters, 0);
}

/// LoDA is not linear in its input: merging is refused and changes nothing.
#[test]
fn loda_is_not_merged() {
    let (mut unet, store, _) = adapted(AdapterKind::Loda);
    perturb(&store);
    let (x, labels, d) = draws(3, 2);
    let before = unet.forward(&x, &d.t, &labels);
    let err = merge_lora(&mut unet).unwrap_err().to_string();
    assert!(err.contains("LoDA"), "{err}");
    let after = unet.forward(&x, &d.t, &labels);
    assert!(before.equal(&after), "a refused merge changed the model");
}

/// Outside autograd (sampling) the adapters add `B`'s product into the layer's output in one
/// fused kernel; the U-Net computes what it does while autograd tracks the adapters (float64;
/// the fused matmul sums the same products in another order, so agreement is to rounding, 1e-10
/// on outputs of order 1). With non-zero `B`, so the adapters contribute.
#[test]
fn sampling_path_computes_what_the_training_path_does() {
    for kind in [AdapterKind::Loda, AdapterKind::Lora] {
        let (unet, store, _) = adapted(kind);
        perturb(&store);
        let (x, labels, d) = draws(3, 2);
        let tracked = unet.forward(&x, &d.t, &labels);
        assert!(
            tracked.requires_grad(),
            "{kind:?}: the adapters were not tracked"
        );
        let fused = tch::no_grad(|| unet.forward(&x, &d.t, &labels));
        let diff = f64::try_from((&tracked - &fused).abs().max()).unwrap();
        let scale = f64::try_from(tracked.abs().max()).unwrap();
        assert!(
            diff <= 1e-10 * scale.max(1.0),
            "{kind:?}: the sampling path differs by {diff}"
        );
    }
}
