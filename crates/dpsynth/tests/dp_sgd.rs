//! DP-SGD engine tests: per-sample rules against brute-force batch-size-1 backward passes (in
//! float64), noise multiplicity, frozen layers, clipping, noise and Poisson sampling.

use dpsynth::dp::grad_sample::{self, LayerGrads, RuleOptions, Strategy};
use dpsynth::dp::layers::{Conv2d, ConvConfig, Embedding, GroupNorm, Linear};
use dpsynth::dp::tape::LayerKind;
use dpsynth::dp::{tape, DpSgd, DpSgdConfig, Optimizer, OptimizerConfig, PoissonSampler};
use dpsynth::nn::classifier::{
    cross_entropy_per_example, Activation, Classifier, ClassifierConfig,
};
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn f64_store() -> nn::VarStore {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).norm().double_value(&[]);
    diff / b.norm().double_value(&[]).max(1e-30)
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let e = rel_err(a, b);
    assert!(e <= TOL, "{what}: relative error {e:e}");
}

/// Per-row losses of a layer output for rows `start..`: a fixed random projection of tanh(y).
fn row_losses(y: &Tensor, proj: &Tensor, start: i64) -> Tensor {
    let rows = y.size()[0];
    (y.tanh() * proj.narrow(0, start, rows))
        .reshape([rows, -1])
        .sum_dim_intlist(1, false, None)
}

/// Brute-force per-example gradients: example b's loss is the mean of its K rows' losses, one
/// backward pass per example. `losses(start, len)` computes the per-row losses of a row range.
fn brute_force(
    params: &[Tensor],
    b: i64,
    k: i64,
    losses: &dyn Fn(i64, i64) -> Tensor,
) -> Vec<Vec<Tensor>> {
    (0..b)
        .map(|e| {
            let loss = losses(e * k, k).mean(Kind::Double);
            Tensor::run_backward(&[loss], params, false, false)
        })
        .collect()
}

/// Σ_b c_b g_b from brute-force per-example gradients.
fn weighted_sum(per_example: &[Vec<Tensor>], c: &[f64], which: usize) -> Tensor {
    per_example
        .iter()
        .zip(c)
        .map(|(g, c)| &g[which] * *c)
        .reduce(|a, b| a + b)
        .unwrap()
}

/// Records one forward of a single layer, backpropagates Σ losses / K to its output and applies
/// the rule with `options`.
fn rule_output(
    k: i64,
    options: &RuleOptions,
    losses: &dyn Fn(i64, i64) -> Tensor,
    rows: i64,
) -> LayerGrads {
    let (l, entries) = tape::record_forward(|| losses(0, rows));
    assert_eq!(entries.len(), 1, "one layer call recorded");
    let gy = Tensor::run_backward(
        &[l.sum(Kind::Double) / k as f64],
        &[&entries[0].output],
        false,
        false,
    );
    tch::no_grad(|| grad_sample::per_sample_with(&entries[0], &gy[0], k, options)).unwrap()
}

/// Checks norms and clipped sums of the rule against brute force for the given parameters
/// (weight, then bias if present).
fn check_rule(name: &str, params: &[Tensor], b: i64, k: i64, losses: &dyn Fn(i64, i64) -> Tensor) {
    let brute = brute_force(params, b, k, losses);
    let c: Vec<f64> = (0..b)
        .map(|i| 0.3 + 0.7 * ((i * 37 % 11) as f64 / 11.0))
        .collect();
    let c_t = Tensor::from_slice(&c);
    let options = [Strategy::Materialise, Strategy::Ghost, Strategy::Auto]
        .into_iter()
        .flat_map(|strategy| {
            // default chunking (one chunk) and one example per chunk
            [1 << 24, 1].map(|chunk_elements| RuleOptions {
                strategy,
                chunk_elements,
            })
        });
    for opts in options {
        let lg = rule_output(k, &opts, losses, b * k);
        let parts = [lg.weight.as_ref(), lg.bias.as_ref()];
        for (which, part) in parts.iter().take(params.len()).enumerate() {
            let part = part.unwrap_or_else(|| panic!("{name}: missing part {which}"));
            let want: Vec<f64> = brute
                .iter()
                .map(|g| g[which].square().sum(Kind::Double).double_value(&[]))
                .collect();
            let what = format!("{name} {opts:?} part {which}");
            assert_close(
                part.sq_norms(),
                &Tensor::from_slice(&want),
                &format!("{what} norms"),
            );
            let sum = part.clipped_sum(&c_t).unwrap();
            assert_close(
                &sum,
                &weighted_sum(&brute, &c, which),
                &format!("{what} clipped sum"),
            );
        }
    }
}

fn conv_case(cfg: ConvConfig, h: i64, w: i64, k: i64) {
    tch::manual_seed(1);
    let vs = f64_store();
    let conv = Conv2d::new(vs.root() / "c", 3, 4, cfg, true);
    let b = 3;
    let x = Tensor::randn([b * k, 3, h, w], (Kind::Double, Device::Cpu));
    let y_shape = conv.forward(&x).size();
    let proj = Tensor::randn(y_shape.as_slice(), (Kind::Double, Device::Cpu));
    let losses = |s: i64, n: i64| row_losses(&conv.forward(&x.narrow(0, s, n)), &proj, s);
    let params = [
        conv.weight.shallow_clone(),
        conv.bias.as_ref().unwrap().shallow_clone(),
    ];
    check_rule(
        &format!("conv {cfg:?} {h}x{w} K={k}"),
        &params,
        b,
        k,
        &losses,
    );
}

#[test]
fn conv2d_rule_matches_brute_force() {
    let geom = |kernel, stride, padding, dilation| ConvConfig {
        kernel,
        stride,
        padding,
        dilation,
    };
    conv_case(geom(3, 1, 1, 1), 6, 6, 1);
    conv_case(geom(3, 2, 0, 1), 7, 10, 1);
    conv_case(geom(2, 1, 2, 2), 5, 8, 1);
    conv_case(geom(5, 3, 1, 1), 9, 7, 1);
    conv_case(geom(3, 2, 1, 2), 8, 11, 1);
}

fn linear_case(x_shape: &[i64], k: i64) {
    tch::manual_seed(2);
    let vs = f64_store();
    let lin = Linear::new(vs.root() / "l", 5, 3, true);
    let x = Tensor::randn(x_shape, (Kind::Double, Device::Cpu));
    let proj = Tensor::randn(
        lin.forward(&x).size().as_slice(),
        (Kind::Double, Device::Cpu),
    );
    let losses = |s: i64, n: i64| row_losses(&lin.forward(&x.narrow(0, s, n)), &proj, s);
    let params = [
        lin.weight.shallow_clone(),
        lin.bias.as_ref().unwrap().shallow_clone(),
    ];
    check_rule(
        &format!("linear {x_shape:?} K={k}"),
        &params,
        x_shape[0] / k,
        k,
        &losses,
    );
}

#[test]
fn linear_rule_matches_brute_force() {
    linear_case(&[4, 5], 1);
    linear_case(&[4, 6, 5], 1);
    linear_case(&[3, 2, 3, 5], 1);
}

fn embedding_case(idx_shape: &[i64], k: i64) {
    tch::manual_seed(3);
    let vs = f64_store();
    let emb = Embedding::new(vs.root() / "e", 7, 4);
    // few rows, many lookups: indices repeat within and across examples
    let idx = Tensor::randint(4, idx_shape, (Kind::Int64, Device::Cpu));
    let proj = Tensor::randn(
        emb.forward(&idx).size().as_slice(),
        (Kind::Double, Device::Cpu),
    );
    let losses = |s: i64, n: i64| row_losses(&emb.forward(&idx.narrow(0, s, n)), &proj, s);
    check_rule(
        &format!("embedding {idx_shape:?} K={k}"),
        &[emb.weight.shallow_clone()],
        idx_shape[0] / k,
        k,
        &losses,
    );
}

#[test]
fn embedding_rule_matches_brute_force_with_repeated_indices() {
    embedding_case(&[5], 1);
    embedding_case(&[4, 6], 1);
    embedding_case(&[3, 2, 5], 1);
}

fn group_norm_case(k: i64) {
    tch::manual_seed(4);
    let vs = f64_store();
    let gn = GroupNorm::new(vs.root() / "g", 3, 6, 1e-5);
    // move the affine map off its identity initialisation
    tch::no_grad(|| {
        gn.weight
            .shallow_clone()
            .copy_(&Tensor::randn([6], (Kind::Double, Device::Cpu)));
        gn.bias
            .shallow_clone()
            .copy_(&Tensor::randn([6], (Kind::Double, Device::Cpu)));
    });
    let b = 3;
    let x = Tensor::randn([b * k, 6, 4, 5], (Kind::Double, Device::Cpu));
    let proj = Tensor::randn(x.size().as_slice(), (Kind::Double, Device::Cpu));
    let losses = |s: i64, n: i64| row_losses(&gn.forward(&x.narrow(0, s, n)), &proj, s);
    check_rule(
        &format!("group norm K={k}"),
        &[gn.weight.shallow_clone(), gn.bias.shallow_clone()],
        b,
        k,
        &losses,
    );
}

#[test]
fn group_norm_affine_rule_matches_brute_force() {
    group_norm_case(1);
}

#[test]
fn noise_multiplicity_k_matches_per_example_mean_over_rows() {
    let geom = ConvConfig {
        kernel: 3,
        stride: 2,
        padding: 1,
        dilation: 1,
    };
    conv_case(geom, 7, 9, 3);
    linear_case(&[6, 5], 2);
    linear_case(&[6, 4, 5], 3);
    embedding_case(&[6, 3], 2);
    group_norm_case(2);
}

// ---------------------------------------------------------------- per-row weights

/// Checks a layer run with per-row weights while recording: the forward equals the plain layer's
/// (float64; a batched or grouped product sums in another order, so to rounding), the tape holds
/// one [`LayerKind::PerRowWeight`] entry per parameter, and each entry's norms and clipped sum
/// equal brute force (plain forwards outside recording, one backward per example).
fn check_per_row(
    name: &str,
    params: &[Tensor],
    b: i64,
    k: i64,
    plain: &dyn Fn(i64, i64) -> Tensor,
    per_row: &dyn Fn(i64, i64) -> Tensor,
) {
    let (y_rec, _) = tape::record_forward(|| per_row(0, b * k));
    assert_close(&y_rec, &plain(0, b * k), &format!("{name} forward"));
    let brute = brute_force(params, b, k, plain);
    let c: Vec<f64> = (0..b).map(|i| 0.4 + 0.5 * ((i * 5 % 3) as f64)).collect();
    let (l, entries) = tape::record_forward(|| per_row(0, b * k));
    assert_eq!(
        entries.len(),
        params.len(),
        "{name}: one entry per parameter"
    );
    let outputs: Vec<&Tensor> = entries.iter().map(|e| &e.output).collect();
    let gys = Tensor::run_backward(&[l.sum(Kind::Double) / k as f64], &outputs, false, false);
    let _no_grad = tch::no_grad_guard();
    for (entry, gy) in entries.iter().zip(&gys) {
        assert_eq!(entry.kind, LayerKind::PerRowWeight, "{name}");
        let which = params
            .iter()
            .position(|p| p.data_ptr() == entry.weight.data_ptr())
            .unwrap_or_else(|| panic!("{name}: an entry of an unknown parameter"));
        let lg = grad_sample::per_sample_with(entry, gy, k, &RuleOptions::default()).unwrap();
        assert!(lg.bias.is_none(), "{name}: a per-row entry has one part");
        let part = lg.weight.unwrap();
        let want: Vec<f64> = brute
            .iter()
            .map(|g| g[which].square().sum(Kind::Double).double_value(&[]))
            .collect();
        let what = format!("{name} part {which}");
        assert_close(
            part.sq_norms(),
            &Tensor::from_slice(&want),
            &format!("{what} norms"),
        );
        assert_close(
            &part.clipped_sum(&Tensor::from_slice(&c)).unwrap(),
            &weighted_sum(&brute, &c, which),
            &format!("{what} clipped sum"),
        );
    }
}

fn per_row_conv_case((c_in, c_out): (i64, i64), (h, w): (i64, i64), k: i64) {
    tch::manual_seed(8);
    let vs = f64_store();
    let conv = Conv2d::new(vs.root() / "c", c_in, c_out, ConvConfig::same(1), true);
    let b = 3;
    let x = Tensor::randn([b * k, c_in, h, w], (Kind::Double, Device::Cpu));
    let proj = Tensor::randn(
        conv.forward(&x).size().as_slice(),
        (Kind::Double, Device::Cpu),
    );
    let plain = |s: i64, n: i64| row_losses(&conv.forward(&x.narrow(0, s, n)), &proj, s);
    let per_row = |s: i64, n: i64| row_losses(&conv.forward_per_row(&x.narrow(0, s, n)), &proj, s);
    let params = [
        conv.weight.shallow_clone(),
        conv.bias.as_ref().unwrap().shallow_clone(),
    ];
    let name = format!("per-row 1x1 conv {c_in}->{c_out} {h}x{w} K={k}");
    check_per_row(&name, &params, b, k, &plain, &per_row);
}

fn per_row_linear_case(x_shape: &[i64], k: i64) {
    tch::manual_seed(9);
    let vs = f64_store();
    let lin = Linear::new(vs.root() / "l", 3, 4, true);
    let x = Tensor::randn(x_shape, (Kind::Double, Device::Cpu));
    let proj = Tensor::randn(
        lin.forward(&x).size().as_slice(),
        (Kind::Double, Device::Cpu),
    );
    let plain = |s: i64, n: i64| row_losses(&lin.forward(&x.narrow(0, s, n)), &proj, s);
    let per_row = |s: i64, n: i64| row_losses(&lin.forward_per_row(&x.narrow(0, s, n)), &proj, s);
    let params = [
        lin.weight.shallow_clone(),
        lin.bias.as_ref().unwrap().shallow_clone(),
    ];
    let name = format!("per-row linear {x_shape:?} K={k}");
    check_per_row(&name, &params, x_shape[0] / k, k, &plain, &per_row);
}

/// Per-row weights (the adapters' `B`, `D1`, `D2` and 1 × 1 or linear `A`) against brute force,
/// with K = 1 and K = 2 noise draws per example: 1 × 1 convs and linear layers over several
/// positions per row.
#[test]
fn per_row_weight_rule_matches_brute_force() {
    for k in [1, 2] {
        per_row_conv_case((2, 5), (4, 3), k);
        per_row_conv_case((6, 2), (3, 3), k);
        per_row_linear_case(&[3 * k, 7, 3], k);
        per_row_linear_case(&[3 * k, 2, 5, 3], k);
    }
}

/// Where per-row weights do not pay (one position per row: the per-row gradient would be larger
/// than the output), for convolutions other than 1 × 1, and when nothing is recorded,
/// `forward_per_row` is the plain layer.
#[test]
fn per_row_weights_only_where_they_pay() {
    tch::manual_seed(10);
    let vs = f64_store();
    let lin = Linear::new(vs.root() / "l", 3, 4, true);
    let conv3 = Conv2d::new(vs.root() / "c3", 3, 2, ConvConfig::same(3), false);
    let conv = Conv2d::new(vs.root() / "c", 3, 4, ConvConfig::same(1), false);
    let x = Tensor::randn([6, 3], (Kind::Double, Device::Cpu));
    let (_, entries) = tape::record_forward(|| lin.forward_per_row(&x));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, LayerKind::Linear);
    let img = Tensor::randn([2, 3, 4, 4], (Kind::Double, Device::Cpu));
    let (_, entries) = tape::record_forward(|| conv3.forward_per_row(&img));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, LayerKind::Conv2d(ConvConfig::same(3)));
    // exact: outside recording `forward_per_row` returns `forward` itself, the same code path
    assert!(conv.forward_per_row(&img).equal(&conv.forward(&img)));
    let _ = conv.weight.shallow_clone().set_requires_grad(false);
    let (_, entries) = tape::record_forward(|| conv.forward_per_row(&img));
    assert!(entries.is_empty(), "a frozen layer records nothing");
}

// ---------------------------------------------------------------- engine

fn classifier(vs: &nn::VarStore) -> Classifier {
    Classifier::new(&vs.root(), ClassifierConfig::mnist()).unwrap()
}

fn engine(params: Vec<Tensor>, c: f64, sigma: f64, ebs: f64, seed: Option<u64>) -> DpSgd {
    DpSgd::new(params, DpSgdConfig::new(c, sigma, ebs), seed).unwrap()
}

/// Random images (rows `[B·K, 1, 28, 28]`, some scaled by `scale[b]`) and labels.
fn mnist_batch(b: i64, k: i64, scale: &[f64]) -> (Tensor, Tensor) {
    let x = Tensor::randn([b * k, 1, 28, 28], (Kind::Double, Device::Cpu));
    let s: Vec<f64> = (0..b * k).map(|r| scale[(r / k) as usize]).collect();
    let x = x * Tensor::from_slice(&s).view([-1, 1, 1, 1]);
    let y = Tensor::randint(10, [b * k], (Kind::Int64, Device::Cpu));
    (x, y)
}

fn shallow(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::shallow_clone).collect()
}

fn total_norm(g: &[Tensor]) -> f64 {
    g.iter()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt()
}

/// Brute-force per-example gradients of the classifier (mean CE over the example's K rows).
fn classifier_brute(
    model: &Classifier,
    params: &[Tensor],
    x: &Tensor,
    y: &Tensor,
    b: i64,
    k: i64,
) -> Vec<Vec<Tensor>> {
    let losses = |s: i64, n: i64| {
        cross_entropy_per_example(&model.forward(&x.narrow(0, s, n)), &y.narrow(0, s, n)).unwrap()
    };
    brute_force(params, b, k, &losses)
}

#[test]
fn engine_clipped_sum_matches_brute_force_with_k() {
    tch::manual_seed(5);
    let vs = f64_store();
    let model = classifier(&vs);
    let params = vs.trainable_variables();
    let (b, k, c) = (5, 2, 0.5);
    let (x, y) = mnist_batch(b, k, &[1.0, 3.0, 0.01, 1.0, 2.0]);
    let brute = classifier_brute(&model, &params, &x, &y, b, k);
    let norms: Vec<f64> = brute.iter().map(|g| total_norm(g)).collect();
    let factors: Vec<f64> = norms.iter().map(|n| (c / (n + 1e-6)).min(1.0)).collect();

    let mut dp = engine(shallow(&params), c, 0.0, 1.0, Some(0));
    let stats = dp
        .accumulate(k, || {
            cross_entropy_per_example(&model.forward(&x), &y).unwrap()
        })
        .unwrap();
    assert_eq!((stats.examples, stats.rows), (b, b * k));
    for (got, want) in stats.norms.iter().zip(&norms) {
        assert!((got - want).abs() <= TOL * want, "norm {got} vs {want}");
    }
    assert_eq!(stats.clipped, norms.iter().filter(|n| **n > c).count());
    let grads = dp.finish_step().unwrap();
    for (i, g) in grads.iter().enumerate() {
        assert_close(g, &weighted_sum(&brute, &factors, i), &format!("param {i}"));
    }
    // no parameter ever got a .grad
    assert!(params.iter().all(|p| !p.grad().defined()));
}

/// The engine keeps the gathered convolution patches of one step for the next; steps of
/// growing, then shrinking batches (a larger buffer than needed) must still be exact.
#[test]
fn engine_reuses_patch_buffers_across_steps_of_any_batch_size() {
    tch::manual_seed(6);
    let vs = f64_store();
    let model = classifier(&vs);
    let params = vs.trainable_variables();
    let c = 0.5;
    let mut dp = engine(shallow(&params), c, 0.0, 1.0, Some(0));
    for (b, k) in [(3, 1), (5, 2), (2, 1), (4, 1)] {
        let (x, y) = mnist_batch(b, k, &[1.0, 3.0, 0.01, 1.0, 2.0]);
        let brute = classifier_brute(&model, &params, &x, &y, b, k);
        let factors: Vec<f64> = brute
            .iter()
            .map(|g| (c / (total_norm(g) + 1e-6)).min(1.0))
            .collect();
        dp.accumulate(k, || {
            cross_entropy_per_example(&model.forward(&x), &y).unwrap()
        })
        .unwrap();
        let grads = dp.finish_step().unwrap();
        for (i, g) in grads.iter().enumerate() {
            let what = format!("B={b} K={k} param {i}");
            assert_close(g, &weighted_sum(&brute, &factors, i), &what);
        }
    }
}

#[test]
fn clipping_bounds_huge_gradients_and_leaves_small_ones_untouched() {
    tch::manual_seed(6);
    let vs = f64_store();
    // ReLU without GroupNorm is positively homogeneous: inputs ×1e6 give gradients of order 1e6
    let cfg = ClassifierConfig {
        group_norm_groups: None,
        activation: Activation::Relu,
        ..ClassifierConfig::mnist()
    };
    let model = Classifier::new(&vs.root(), cfg).unwrap();
    let params = vs.trainable_variables();
    let c = 5.0;
    let mut clipped = 0;
    let scales = [1e6, 1e-4, 1e6, 1e-4];
    let (x, _) = mnist_batch(4, 1, &scales);
    // Label each example with its least likely class. A huge input saturates the softmax: had an
    // example's label been its most likely class, its gradient would be about exp(-1e6) and not
    // huge at all, so random labels made the test depend on the draw.
    let y = tch::no_grad(|| model.forward(&x).argmin(1, false));
    let brute = classifier_brute(&model, &params, &x, &y, 4, 1);
    let mut dp = engine(shallow(&params), c, 0.0, 1.0, Some(0));
    for i in 0..4 {
        // one example per micro-batch: the accumulated sum is that example's contribution
        let (xi, yi) = (x.narrow(0, i, 1), y.narrow(0, i, 1));
        let stats = dp
            .accumulate(1, || {
                cross_entropy_per_example(&model.forward(&xi), &yi).unwrap()
            })
            .unwrap();
        let contribution = dp.finish_step().unwrap();
        let n = total_norm(&contribution);
        assert!(n <= c * (1.0 + 1e-9), "example {i}: clipped norm {n} > C");
        let raw = total_norm(&brute[i as usize]);
        if raw < c {
            assert_eq!(stats.clipped, 0);
            for (g, want) in contribution.iter().zip(&brute[i as usize]) {
                assert_close(g, want, &format!("example {i} untouched"));
            }
        } else {
            assert_eq!(stats.clipped, 1);
            assert!(
                n > c * 0.999,
                "example {i}: huge gradient clipped to exactly C, got {n}"
            );
            clipped += 1;
        }
    }
    assert_eq!(
        clipped, 2,
        "the two scaled-up examples exceed C, the others do not"
    );
}

#[test]
fn frozen_layers_record_nothing_and_get_no_grad() {
    tch::manual_seed(7);
    let vs = f64_store();
    let frozen = Linear::new(vs.root() / "frozen", 5, 4, true);
    let bias_only = Linear::new(vs.root() / "bias_only", 4, 3, true);
    let _ = frozen.weight.shallow_clone().set_requires_grad(false);
    let _ = frozen
        .bias
        .as_ref()
        .unwrap()
        .shallow_clone()
        .set_requires_grad(false);
    let _ = bias_only.weight.shallow_clone().set_requires_grad(false);
    let x = Tensor::randn([6, 5], (Kind::Double, Device::Cpu));
    let fwd = || {
        bias_only
            .forward(&frozen.forward(&x))
            .square()
            .sum_dim_intlist(1, false, None)
    };
    let (_, entries) = tape::record_forward(fwd);
    assert_eq!(
        entries.len(),
        1,
        "only the layer with a trainable bias records"
    );

    let trainable = vec![bias_only.bias.as_ref().unwrap().shallow_clone()];
    let mut dp = engine(shallow(&trainable), 10.0, 0.0, 1.0, Some(0));
    dp.accumulate(1, fwd).unwrap();
    let g = dp.finish_step().unwrap();
    let brute = brute_force(&trainable, 6, 1, &|s, n| {
        bias_only
            .forward(&frozen.forward(&x.narrow(0, s, n)))
            .square()
            .sum_dim_intlist(1, false, None)
    });
    assert_close(
        &g[0],
        &weighted_sum(&brute, &[1.0; 6], 0),
        "bias-only gradient",
    );
    for t in [
        &frozen.weight,
        frozen.bias.as_ref().unwrap(),
        &bias_only.weight,
        bias_only.bias.as_ref().unwrap(),
    ] {
        assert!(!t.grad().defined(), "a parameter got a .grad");
    }
}

/// Examples given as gradients (gradient canaries) are clipped per example like recorded ones,
/// and only their parameter gets their sum.
#[test]
fn direct_gradients_are_clipped_per_example_and_summed() {
    let vs = f64_store();
    let a = vs.root().var("a", &[3], tch::nn::Init::Const(0.0));
    let b = vs.root().var("b", &[2, 2], tch::nn::Init::Const(0.0));
    let mut dp = engine(vec![a, b], 1.0, 0.0, 1.0, Some(0));
    // norms 5 (clipped to 1) and 0.5 (untouched)
    let rows = Tensor::from_slice(&[3.0, 4.0, 0.0, 0.0, 0.3, 0.4]).view([2, 3]);
    dp.accumulate_direct(0, &rows).unwrap();
    assert_eq!(dp.pending_examples(), 2);
    let g = dp.finish_step().unwrap();
    let want = Tensor::from_slice(&[0.6, 0.8 + 0.3, 0.4]);
    // the clip factor C / (norm + CLIP_EPS) moves the result by about 1e-6 relative
    assert!(g[0].allclose(&want, 1e-5, 1e-8, false), "{g:?}");
    assert_eq!(
        g[1].abs().max().double_value(&[]),
        0.0,
        "the other parameter got nothing"
    );
    let wrong = Tensor::zeros([2, 4], (Kind::Double, Device::Cpu));
    let err = dp.accumulate_direct(0, &wrong).unwrap_err().to_string();
    assert!(err.contains("do not match parameter 0"), "{err}");
    assert!(dp.accumulate_direct(2, &rows).is_err(), "no parameter 2");
}

#[test]
fn engine_rejects_bad_input() {
    let vs = f64_store();
    let a = Linear::new(vs.root() / "a", 3, 3, true);
    let b = Linear::new(vs.root() / "b", 3, 3, false);
    let x = Tensor::randn([4, 3], (Kind::Double, Device::Cpu));
    let row_sum = |t: Tensor| t.sum_dim_intlist(1, false, None);
    let only_a = || {
        vec![
            a.weight.shallow_clone(),
            a.bias.as_ref().unwrap().shallow_clone(),
        ]
    };
    // b's weight is recorded but not in the list
    let mut dp = engine(only_a(), 1.0, 1.0, 4.0, None);
    assert!(dp
        .accumulate(1, || row_sum(b.forward(&a.forward(&x))))
        .is_err());
    // a layer called twice shares its weight between two records
    assert!(dp
        .accumulate(1, || row_sum(a.forward(&a.forward(&x))))
        .is_err());
    // losses not per row, rows not a multiple of K, K = 0
    assert!(dp.accumulate(1, || a.forward(&x)).is_err());
    assert!(dp.accumulate(3, || row_sum(a.forward(&x))).is_err());
    assert!(dp.accumulate(0, || row_sum(a.forward(&x))).is_err());
    // nothing recorded
    assert!(dp.accumulate(1, || row_sum(x.shallow_clone())).is_err());
    // failed calls left nothing behind
    assert_eq!(dp.pending_examples(), 0);
    // bad configurations and parameter lists
    let cfg = DpSgdConfig::new;
    assert!(DpSgd::new(only_a(), cfg(0.0, 1.0, 1.0), None).is_err());
    assert!(DpSgd::new(only_a(), cfg(1.0, -1.0, 1.0), None).is_err());
    assert!(DpSgd::new(only_a(), cfg(1.0, 1.0, 0.0), None).is_err());
    let mut twice = only_a();
    twice.push(a.weight.shallow_clone());
    assert!(DpSgd::new(twice, cfg(1.0, 1.0, 1.0), None).is_err());
    assert!(DpSgd::new(vec![x.shallow_clone()], cfg(1.0, 1.0, 1.0), None).is_err());
}

// ---------------------------------------------------------------- noise

fn noise_param(vs: &nn::VarStore) -> Tensor {
    vs.root().var("w", &[400, 500], nn::Init::Const(0.0))
}

#[test]
fn seeded_noise_repeats_and_secure_noise_differs() {
    let vs = f64_store();
    let p = noise_param(&vs);
    let draw = |seed| {
        engine(vec![p.shallow_clone()], 1.0, 1.0, 1.0, seed)
            .finish_step()
            .unwrap()
    };
    let (a, b) = (draw(Some(42)), draw(Some(42)));
    assert!(a[0].equal(&b[0]), "same seed, same noise");
    assert!(
        !draw(Some(43))[0].equal(&a[0]),
        "different seed, different noise"
    );
    let (s1, s2) = (draw(None), draw(None));
    assert!(!s1[0].equal(&s2[0]), "OS-seeded draws differ");
    assert!(engine(vec![p.shallow_clone()], 1.0, 1.0, 1.0, None).is_secure());
    assert!(!engine(vec![p.shallow_clone()], 1.0, 1.0, 1.0, Some(1)).is_secure());
    // consecutive steps of one engine draw fresh noise
    let mut dp = engine(vec![p.shallow_clone()], 1.0, 1.0, 1.0, Some(42));
    let first = dp.finish_step().unwrap();
    assert!(!dp.finish_step().unwrap()[0].equal(&first[0]));
}

#[test]
fn noise_std_is_sigma_c_over_expected_batch_size() {
    let vs = f64_store();
    let p = noise_param(&vs);
    let n = p.numel() as f64;
    for (sigma, c, ebs) in [(1.3, 0.7, 1.0), (0.8, 2.0, 4.0)] {
        // nothing accumulated: an empty Poisson batch, the step is pure noise
        let g = engine(vec![p.shallow_clone()], c, sigma, ebs, Some(7))
            .finish_step()
            .unwrap();
        let want = sigma * c / ebs;
        let std = g[0].std(true).double_value(&[]);
        let mean = g[0].mean(Kind::Double).double_value(&[]);
        // standard errors: std/sqrt(2n) for the std, std/sqrt(n) for the mean; allow 5
        assert!(
            (std - want).abs() < 5.0 * want / (2.0 * n).sqrt(),
            "std {std} vs {want}"
        );
        assert!(mean.abs() < 5.0 * want / n.sqrt(), "mean {mean}");
    }
}

// ---------------------------------------------------------------- sampling

#[test]
fn poisson_sampling_statistics() {
    let (n, q, steps) = (1000usize, 0.05, 2000usize);
    let mut sampler = PoissonSampler::new(n, q, Some(11)).unwrap();
    assert!(!sampler.is_secure());
    assert!((sampler.expected_batch_size() - 50.0).abs() < 1e-12);
    let mut sizes = Vec::with_capacity(steps);
    let mut hits = vec![0usize; n];
    for _ in 0..steps {
        let batch = sampler.sample();
        let micro: Vec<&[usize]> = batch.micro_batches(16).unwrap().collect();
        assert!(micro.iter().all(|m| !m.is_empty() && m.len() <= 16));
        assert_eq!(micro.concat(), batch.indices);
        for &i in &batch.indices {
            hits[i] += 1;
        }
        sizes.push(batch.len() as f64);
    }
    let s = steps as f64;
    let mean = sizes.iter().sum::<f64>() / s;
    let var = sizes.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (s - 1.0);
    let (want_mean, want_var) = (n as f64 * q, n as f64 * q * (1.0 - q));
    assert!(
        (mean - want_mean).abs() < 5.0 * (want_var / s).sqrt(),
        "mean {mean}"
    );
    assert!(
        (var - want_var).abs() < 5.0 * want_var * (2.0 / (s - 1.0)).sqrt(),
        "var {var}"
    );
    let se = (q * (1.0 - q) / s).sqrt();
    for (i, h) in hits.iter().enumerate() {
        let f = *h as f64 / s;
        assert!(
            (f - q).abs() < 5.0 * se,
            "example {i} included with frequency {f}"
        );
    }
}

#[test]
fn poisson_sampling_edge_cases() {
    let mut never = PoissonSampler::new(100, 0.0, None).unwrap();
    assert!(never.is_secure());
    let empty = never.sample();
    assert!(empty.is_empty());
    assert_eq!(empty.micro_batches(8).unwrap().count(), 0);
    assert_eq!(
        PoissonSampler::new(10, 1.0, None).unwrap().sample().len(),
        10
    );
    assert!(PoissonSampler::new(10, 1.5, None).is_err());
    assert!(empty.micro_batches(0).is_err());
    let draw = |seed| PoissonSampler::new(1000, 0.3, seed).unwrap().sample();
    assert_eq!(draw(Some(3)), draw(Some(3)));
    assert_ne!(draw(None), draw(None));
}

// ---------------------------------------------------------------- optimizer and classifier

#[test]
fn optimizers_follow_torch_formulas() {
    let vs = f64_store();
    let p = vs.root().var("p", &[3], nn::Init::Const(1.0));
    let g = Tensor::from_slice(&[1.0, -2.0, 0.0]);
    let mut sgd = Optimizer::new(
        vec![p.shallow_clone()],
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    sgd.step(&[g.shallow_clone()]).unwrap();
    sgd.step(&[g.shallow_clone()]).unwrap();
    // buf1 = g, buf2 = 0.9 g + g: p = 1 - 0.1 (1 + 1.9) g
    assert_close(&p, &(1.0 - &g * 0.29), "sgd momentum");
    let q = vs.root().var("q", &[3], nn::Init::Const(1.0));
    let mut adam = Optimizer::new(
        vec![q.shallow_clone()],
        OptimizerConfig::AdamW {
            lr: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.1,
        },
    )
    .unwrap();
    adam.step(&[g.shallow_clone()]).unwrap();
    // first step: decay then lr·sign(g) (bias-corrected m/√v = ±1, 0 for g = 0)
    let want = Tensor::from_slice(&[1.0 - 0.001 - 0.01, 1.0 - 0.001 + 0.01, 1.0 - 0.001]);
    assert!(rel_err(&q, &want) < 1e-6);
    assert!(adam.step(&[]).is_err());
}

#[test]
fn learning_rate_scales_apply_to_their_parameter_only() {
    let vs = f64_store();
    let a = vs.root().var("a", &[2], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[2], nn::Init::Const(1.0));
    let g = Tensor::from_slice(&[1.0, -2.0]);
    let adam = OptimizerConfig::Adam {
        lr: 0.01,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(vec![a.shallow_clone(), b.shallow_clone()], adam).unwrap();
    opt.set_lr_scale(1, 25.0).unwrap();
    opt.step(&[g.shallow_clone(), g.shallow_clone()]).unwrap();
    // first Adam step moves each coordinate by lr·sign(g)
    assert!(rel_err(&a, &Tensor::from_slice(&[0.99, 1.01])) < 1e-6);
    assert!(rel_err(&b, &Tensor::from_slice(&[0.75, 1.25])) < 1e-6);
    assert!(opt.set_lr_scale(2, 1.0).is_err());
    assert!(opt.set_lr_scale(0, -1.0).is_err());
}

#[test]
fn classifier_shapes_and_per_example_loss() {
    tch::manual_seed(8);
    for cfg in [ClassifierConfig::mnist(), ClassifierConfig::cifar10()] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), cfg).unwrap();
        let x = Tensor::randn(
            [3, cfg.in_channels, cfg.image_size, cfg.image_size],
            (Kind::Float, Device::Cpu),
        );
        let logits = model.forward(&x);
        assert_eq!(logits.size(), [3, 10]);
        let y = Tensor::from_slice(&[0i64, 5, 9]);
        let per = cross_entropy_per_example(&logits, &y).unwrap();
        let mean = logits.cross_entropy_for_logits(&y);
        assert!((per.mean(Kind::Float) - mean).abs().double_value(&[]) < 1e-6);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"conv1.weight".to_string()) && names.contains(&"gn2.bias".to_string())
        );
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let bad = ClassifierConfig {
        group_norm_groups: Some(5),
        ..ClassifierConfig::mnist()
    };
    assert!(Classifier::new(&vs.root(), bad).is_err());
}
