//! The DP-SGD engine: record, backpropagate to layer outputs, clip per example, accumulate over
//! physical micro-batches, add Gaussian noise once per logical batch.
//!
//! ```text
//! for step:
//!     batch = sampler.sample()                      // Poisson, expected size q·N
//!     for micro in batch.micro_batches(max_physical):
//!         engine.accumulate(k, || per_row_losses(model, micro))?
//!     grads = engine.finish_step()?                  // (Σ clipped + N(0, σ²C²)) / (q·N)
//!     optimizer.step(&grads)?
//! ```

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use tch::{Kind, Tensor};

use super::clip::clip_factors;
use super::grad_sample::{self, LayerGrads, RuleOptions, Scratch};
use super::rng::{DpRng, Purpose};
use super::tape::{self, Entry};

/// Privacy-relevant hyper-parameters of DP-SGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgdConfig {
    /// Clipping bound C on each example's total gradient norm.
    pub clip: f64,
    /// Noise multiplier σ: the noise std is σ·C.
    pub noise_multiplier: f64,
    /// Expected logical batch size q·N; the noisy sum is divided by it.
    pub expected_batch_size: f64,
    /// How per-example gradients are computed (default: per-layer cost estimate).
    pub rules: RuleOptions,
}

impl DpSgdConfig {
    /// A configuration with the default per-sample rule options.
    pub fn new(clip: f64, noise_multiplier: f64, expected_batch_size: f64) -> Self {
        Self {
            clip,
            noise_multiplier,
            expected_batch_size,
            rules: RuleOptions::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.clip.is_finite() && self.clip > 0.0,
            "the clipping bound must be positive, got {}",
            self.clip
        );
        ensure!(
            self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0,
            "noise_multiplier must be non-negative, got {}",
            self.noise_multiplier
        );
        ensure!(
            self.expected_batch_size.is_finite() && self.expected_batch_size > 0.0,
            "expected_batch_size must be positive, got {}",
            self.expected_batch_size
        );
        Ok(())
    }
}

/// What one [`DpSgd::accumulate`] call saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccumulateStats {
    /// Examples B in the micro-batch.
    pub examples: i64,
    /// Rows B·K in the micro-batch.
    pub rows: i64,
    /// Each example's total gradient norm before clipping.
    pub norms: Vec<f64>,
    /// How many examples had their gradient scaled down.
    pub clipped: usize,
}

/// Parameter indices of a recorded layer's trainable weight and bias.
type Targets = (Option<usize>, Option<usize>);

/// Identity of a parameter tensor: its storage address and shape.
type ParamKey = (usize, Vec<i64>);

fn key_of(t: &Tensor) -> ParamKey {
    (t.data_ptr() as usize, t.size())
}

/// Per-example clipping, accumulation and noising for a fixed list of trainable tensors.
#[derive(Debug)]
pub struct DpSgd {
    params: Vec<Tensor>,
    index: HashMap<ParamKey, usize>,
    cfg: DpSgdConfig,
    rng: DpRng,
    acc: Vec<Option<Tensor>>,
    pending_examples: i64,
    /// Buffers the per-sample rules reuse from step to step, one per tape position.
    scratch: Vec<Scratch>,
}

impl DpSgd {
    /// Creates the engine for `params` (all must require grad, each listed once).
    ///
    /// Noise comes from an OS-seeded ChaCha20 when `seed` is `None`; a seed makes it repeatable
    /// and [`DpSgd::is_secure`] false.
    pub fn new(params: Vec<Tensor>, cfg: DpSgdConfig, seed: Option<u64>) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            !params.is_empty(),
            "DP-SGD needs at least one trainable tensor"
        );
        let mut index = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            ensure!(
                p.requires_grad(),
                "parameter {i} (shape {:?}) does not require grad",
                p.size()
            );
            if index.insert(key_of(p), i).is_some() {
                bail!("parameter {i} (shape {:?}) is listed twice", p.size());
            }
        }
        let acc = params.iter().map(|_| None).collect();
        Ok(Self {
            params,
            index,
            cfg,
            rng: DpRng::new(seed, Purpose::Noise),
            acc,
            pending_examples: 0,
            scratch: Vec::new(),
        })
    }

    /// The trainable tensors, in the order [`DpSgd::finish_step`] returns their gradients.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The configuration.
    pub fn config(&self) -> &DpSgdConfig {
        &self.cfg
    }

    /// False when the noise generator was seeded by the caller: the run is then not private.
    pub fn is_secure(&self) -> bool {
        self.rng.is_secure()
    }

    /// The noise generator (for checkpoints: see [`super::rng::StreamPositions`]).
    pub fn rng(&self) -> &DpRng {
        &self.rng
    }

    /// The noise generator, to move a resumed run's stream to where it stopped.
    pub fn rng_mut(&mut self) -> &mut DpRng {
        &mut self.rng
    }

    /// Examples accumulated since the last [`DpSgd::finish_step`].
    pub fn pending_examples(&self) -> i64 {
        self.pending_examples
    }

    /// Runs `forward` with recording on; it must return per-row losses `[B·K]`, rows ordered
    /// example-major (row `i` belongs to example `i / k`). An example's loss is the mean of its K
    /// rows. Computes each example's gradient norm over all recorded layers, clips it to C and
    /// adds the clipped sum to the accumulator. No parameter `.grad` is touched.
    pub fn accumulate(
        &mut self,
        k: i64,
        forward: impl FnOnce() -> Tensor,
    ) -> Result<AccumulateStats> {
        ensure!(k >= 1, "noise multiplicity K must be at least 1, got {k}");
        let (losses, entries) = tape::record_forward(forward);
        ensure!(
            losses.dim() == 1,
            "forward must return per-row losses [B*K], got shape {:?}",
            losses.size()
        );
        let rows = losses.size()[0];
        ensure!(
            rows % k == 0,
            "{rows} loss rows is not a multiple of K = {k}"
        );
        let examples = rows / k;
        if rows == 0 {
            return Ok(AccumulateStats::default());
        }
        let targets = self.match_entries(&entries, rows)?;
        ensure!(
            losses.requires_grad(),
            "the losses do not require grad (was the forward run under no_grad?)"
        );
        let loss_sum = losses.f_sum(Kind::Double)? / k as f64;
        let outputs: Vec<&Tensor> = entries.iter().map(|e| &e.output).collect();
        let grads_out = Tensor::f_run_backward(&[loss_sum], &outputs, false, false)?;

        let _no_grad = tch::no_grad_guard();
        let mut layers: Vec<(LayerGrads, Targets)> = Vec::new();
        let mut total = Tensor::f_zeros([examples], (Kind::Double, losses.device()))?;
        if self.scratch.len() < entries.len() {
            self.scratch.resize_with(entries.len(), Scratch::default);
        }
        // each layer's input and output gradient are dropped once its rule has run, except where
        // the rule is in matmul form (`SumRule::Matmul`): its `LayerGrads` keep `x` and `gy` until
        // `clipped_sum`
        let calls = entries.into_iter().zip(grads_out).zip(targets);
        for (((entry, gy), target), scratch) in calls.zip(&mut self.scratch) {
            if !gy.defined() {
                continue; // output unused by the loss: zero gradient, nothing to add
            }
            let lg = grad_sample::per_sample_in(&entry, &gy, k, &self.cfg.rules, scratch)?;
            if let Some(sq) = lg.sq_norms() {
                total += sq.f_to_kind(Kind::Double)?;
            }
            layers.push((lg, target));
        }
        let c = clip_factors(&total, self.cfg.clip);

        let mut updates: Vec<(usize, Tensor)> = Vec::new();
        for (lg, (w_idx, b_idx)) in &layers {
            for (part, idx) in [(&lg.weight, w_idx), (&lg.bias, b_idx)] {
                if let (Some(part), Some(idx)) = (part, idx) {
                    updates.push((*idx, part.clipped_sum(&c)?));
                }
            }
        }
        for (idx, g) in updates {
            let g = g.f_to_kind(self.params[idx].kind())?;
            self.acc[idx] = Some(match self.acc[idx].take() {
                Some(a) => a + g,
                None => g,
            });
        }
        self.pending_examples += examples;

        let norms = Vec::<f64>::try_from(total.sqrt())?;
        let clipped = norms
            .iter()
            .filter(|n| **n + super::clip::CLIP_EPS > self.cfg.clip)
            .count();
        Ok(AccumulateStats {
            examples,
            rows,
            norms,
            clipped,
        })
    }

    /// Adds examples whose gradients are given directly instead of through a recorded forward:
    /// row `i` of `per_example` (`[B, ...]`, the shape of parameter `idx` after the first
    /// dimension) is example `i`'s gradient with respect to parameter `idx`, and zero for every
    /// other parameter. Each row is clipped to C and the clipped sum accumulated, as
    /// [`DpSgd::accumulate`] does for recorded layers. Audits plant gradient canaries with it.
    pub fn accumulate_direct(&mut self, idx: usize, per_example: &Tensor) -> Result<()> {
        let param = self.params.get(idx).with_context(|| {
            format!("no parameter {idx} (the engine has {})", self.params.len())
        })?;
        let size = per_example.size();
        ensure!(
            size.len() == param.dim() + 1 && size[1..] == param.size()[..],
            "direct gradients of shape {size:?} do not match parameter {idx} of shape {:?}",
            param.size()
        );
        let examples = size[0];
        if examples == 0 {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let rows = per_example
            .f_to_kind(Kind::Double)?
            .f_reshape([examples, -1])?;
        let c = clip_factors(
            &rows.square().f_sum_dim_intlist(1, false, Kind::Double)?,
            self.cfg.clip,
        );
        let sum = (rows * c.unsqueeze(1))
            .f_sum_dim_intlist(0, false, Kind::Double)?
            .f_reshape(param.size())?
            .f_to_kind(param.kind())?;
        self.acc[idx] = Some(match self.acc[idx].take() {
            Some(a) => a + sum,
            None => sum,
        });
        self.pending_examples += examples;
        Ok(())
    }

    /// Maps each entry's trainable weight/bias to its parameter index, checking that every
    /// recorded output has `rows` rows, no parameter is recorded twice and none is unknown.
    fn match_entries(&self, entries: &[Entry], rows: i64) -> Result<Vec<Targets>> {
        ensure!(
            !entries.is_empty(),
            "the forward recorded no trainable layer (are the layers from dp::layers and trainable?)"
        );
        let mut seen = vec![false; self.params.len()];
        let mut lookup = |t: Option<&Tensor>, what: &str| -> Result<Option<usize>> {
            let Some(t) = t.filter(|t| t.requires_grad()) else {
                return Ok(None);
            };
            let i = *self.index.get(&key_of(t)).with_context(|| {
                format!(
                    "a recorded {what} of shape {:?} is not in the engine's parameter list",
                    t.size()
                )
            })?;
            ensure!(
                !seen[i],
                "parameter {i} (shape {:?}) was recorded twice in one forward; shared weights are \
                 not supported",
                t.size()
            );
            seen[i] = true;
            Ok(Some(i))
        };
        entries
            .iter()
            .map(|e| {
                ensure!(
                    e.output.size().first() == Some(&rows),
                    "a {:?} layer's output {:?} does not have the batch's {rows} rows",
                    e.kind,
                    e.output.size()
                );
                ensure!(
                    e.output.requires_grad(),
                    "a {:?} layer's output does not require grad (forward under no_grad?)",
                    e.kind
                );
                Ok((
                    lookup(Some(&e.weight), "weight")?,
                    lookup(e.bias.as_ref(), "bias")?,
                ))
            })
            .collect()
    }

    /// Ends the logical batch: for every parameter, `(Σ clipped + N(0, σ²C²)) / (q·N)`, in the
    /// order of [`DpSgd::params`]. A step with nothing accumulated (empty Poisson batch) still
    /// returns pure noise. Resets the accumulator.
    pub fn finish_step(&mut self) -> Result<Vec<Tensor>> {
        let std = self.cfg.noise_multiplier * self.cfg.clip;
        let _no_grad = tch::no_grad_guard();
        let noise = self
            .params
            .iter()
            .map(|p| self.rng.gaussian_like(p, std))
            .collect::<Result<Vec<_>>>()?;
        let grads = noise
            .into_iter()
            .zip(self.acc.iter_mut())
            .map(|(n, acc)| {
                let sum = acc.take().map_or(n.shallow_clone(), |a| a + &n);
                sum / self.cfg.expected_batch_size
            })
            .collect();
        self.pending_examples = 0;
        Ok(grads)
    }
}
