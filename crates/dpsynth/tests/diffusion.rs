//! Schedules, samplers and loss against diffusers' numbers (fixture written by
//! `scripts/fixtures/unet_parity.py`) and against a perfect ε oracle.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use dpsynth::diffusion::ddim::ddim_step;
use dpsynth::diffusion::loss::{eps_loss, per_example, LossConfig};
use dpsynth::diffusion::precision::Precision;
use dpsynth::diffusion::sampler::{sample, timesteps, SamplerConfig, SamplerKind, Spacing};
use dpsynth::diffusion::{EpsModel, NoiseSchedule};
use dpsynth::nn::unet::UNet;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/unet_parity")
}

fn schedules_json() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("schedules.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn schedules_match_diffusers_ddpm_scheduler() {
    let j = schedules_json();
    for (name, s) in [
        ("linear", NoiseSchedule::linear(1000).unwrap()),
        ("cosine", NoiseSchedule::cosine(1000).unwrap()),
    ] {
        let ts: Vec<usize> = floats(&j[name]["t"]).iter().map(|&t| t as usize).collect();
        for (key, ours) in [("betas", s.betas()), ("alphas_cumprod", s.alphas_cumprod())] {
            for (&t, want) in ts.iter().zip(floats(&j[name][key])) {
                // diffusers works in float32
                let tol = 1e-6 * want.abs().max(1e-3);
                assert!(
                    (ours[t] - want).abs() <= tol,
                    "{name} {key}[{t}]: {} vs diffusers {want}",
                    ours[t]
                );
            }
        }
    }
}

#[test]
fn ddim_timesteps_match_diffusers() {
    let j = schedules_json();
    for (key, want) in j["ddim_timesteps"].as_object().unwrap() {
        let (spacing, steps) = key.split_once('_').unwrap();
        let spacing = match spacing {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            other => panic!("{other}"),
        };
        let want: Vec<i64> = floats(want).iter().map(|&t| t as i64).collect();
        let ours = timesteps(1000, steps.parse().unwrap(), spacing).unwrap();
        assert_eq!(ours, want, "{key}");
    }
}

#[test]
fn ddim_step_matches_diffusers() {
    let j = schedules_json();
    let d = &j["ddim_step"];
    let shape: Vec<i64> = floats(&d["shape"]).iter().map(|&v| v as i64).collect();
    let x = Tensor::from_slice(&floats(&d["sample"])).view(shape.as_slice());
    let eps = Tensor::from_slice(&floats(&d["model_output"])).view(shape.as_slice());
    let s = NoiseSchedule::linear(1000).unwrap();
    for step in d["steps"].as_array().unwrap() {
        let t = step["t"].as_i64().unwrap();
        let t_prev = step["prev_t"].as_i64().unwrap();
        let (prev, x0) = ddim_step(&s, &x, &eps, (t, t_prev), 0.0, true, None);
        let want_prev = Tensor::from_slice(&floats(&step["prev_sample"])).view(shape.as_slice());
        let want_x0 =
            Tensor::from_slice(&floats(&step["pred_original_sample"])).view(shape.as_slice());
        let d1 = (prev - want_prev).abs().max().double_value(&[]);
        let d2 = (x0 - want_x0).abs().max().double_value(&[]);
        assert!(d1 < 1e-4 && d2 < 1e-4, "t={t}: {d1} {d2}");
    }
}

/// Knows the clean images: ε = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t). Counts forward rows.
struct Oracle {
    x0: Tensor,
    schedule: NoiseSchedule,
    calls: RefCell<Vec<i64>>,
}

impl EpsModel for Oracle {
    fn predict_eps(&self, x: &Tensor, t: &Tensor, _labels: &Tensor) -> Tensor {
        let rows = x.size()[0];
        self.calls.borrow_mut().push(rows);
        let reps = rows / self.x0.size()[0];
        let x0 = self.x0.repeat([reps, 1, 1, 1]);
        let ab = self
            .schedule
            .alphas_cumprod_tensor(x.device())
            .to_kind(Kind::Double)
            .index_select(0, t)
            .view([-1, 1, 1, 1]);
        let x = x.to_kind(Kind::Double);
        ((x - x0.to_kind(Kind::Double) * ab.sqrt()) / (-&ab + 1.0).sqrt()).to_kind(Kind::Float)
    }

    fn null_class(&self) -> Option<i64> {
        Some(10)
    }
}

fn oracle() -> Oracle {
    tch::manual_seed(3);
    Oracle {
        x0: Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu)) * 1.8 - 0.9,
        schedule: NoiseSchedule::linear(1000).unwrap(),
        calls: RefCell::new(Vec::new()),
    }
}

#[test]
fn ddim_eta0_with_an_oracle_recovers_x0() {
    for spacing in [Spacing::Leading, Spacing::Trailing] {
        let o = oracle();
        let cfg = SamplerConfig {
            spacing,
            ..SamplerConfig::ddim(20, 3.0)
        };
        let out = sample(&o, &o.schedule, &[1, 2, 3], [1, 8, 8], &cfg, 9, Device::Cpu).unwrap();
        let diff = (&out - &o.x0).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{spacing:?}: {diff}");
        // guided: each step is one forward of 2B rows
        assert_eq!(*o.calls.borrow(), vec![6; 20]);
    }
}

#[test]
fn dpm_solver_with_an_oracle_recovers_x0_in_few_steps() {
    let o = oracle();
    let cfg = SamplerConfig::dpm(10, 2.0);
    let out = sample(&o, &o.schedule, &[1, 2, 3], [1, 8, 8], &cfg, 9, Device::Cpu).unwrap();
    let diff = (&out - &o.x0).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "{diff}");
    assert_eq!(*o.calls.borrow(), vec![6; 10]);
}

#[test]
fn ddpm_with_an_oracle_recovers_x0() {
    let o = oracle();
    let cfg = SamplerConfig::ddpm(1000, 1.0);
    let out = sample(&o, &o.schedule, &[1, 2, 3], [1, 8, 8], &cfg, 9, Device::Cpu).unwrap();
    let diff = (&out - &o.x0).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "{diff}");
    // no guidance: B rows per step
    assert_eq!(o.calls.borrow().len(), 1000);
    assert!(o.calls.borrow().iter().all(|&r| r == 3));
}

fn small_unet() -> UNet {
    UNet::load(&fixture_dir().join("main"), Device::Cpu).unwrap()
}

#[test]
fn sampling_is_repeatable_with_a_seed() {
    let unet = small_unet();
    let s = NoiseSchedule::linear(1000).unwrap();
    let labels = [0, 1, 2, 3, 4];
    for kind in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim { eta: 0.5 },
        SamplerKind::DpmSolver,
    ] {
        let cfg = SamplerConfig {
            kind,
            num_steps: 5,
            spacing: Spacing::Trailing,
            guidance_scale: 2.0,
            batch_size: 5,
            clip_sample: true,
            precision: Precision::Float32,
        };
        let run = |seed, batch_size| {
            let cfg = SamplerConfig { batch_size, ..cfg };
            sample(&unet, &s, &labels, [1, 16, 16], &cfg, seed, Device::Cpu).unwrap()
        };
        let a = run(7, 5);
        assert_eq!(a.size(), [5, 1, 16, 16]);
        assert!(a.max().double_value(&[]) <= 1.0 && a.min().double_value(&[]) >= -1.0);
        assert_eq!(a, run(7, 5), "{kind:?}: same seed, same images");
        assert_ne!(a, run(8, 5), "{kind:?}: another seed, other images");
        // (DPM-Solver is deterministic given x_T, which the seed draws)
        // an image's noise does not depend on its batch
        let diff = (&a - run(7, 2)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{kind:?}: batch size changed images by {diff}");
    }
}

#[test]
fn bad_sampler_input_is_an_error() {
    struct Uncond;
    impl EpsModel for Uncond {
        fn predict_eps(&self, x: &Tensor, _: &Tensor, _: &Tensor) -> Tensor {
            x.zeros_like()
        }
        fn null_class(&self) -> Option<i64> {
            None
        }
    }
    let s = NoiseSchedule::linear(100).unwrap();
    let cfg = SamplerConfig::ddim(10, 2.0);
    assert!(sample(&Uncond, &s, &[0], [1, 4, 4], &cfg, 0, Device::Cpu).is_err());
    let unet = small_unet();
    let cfg = SamplerConfig::ddim(2, 1.0);
    let msg = format!(
        "{:#}",
        sample(&unet, &s, &[0, 11], [1, 16, 16], &cfg, 0, Device::Cpu).unwrap_err()
    );
    assert!(msg.contains("0..=10"), "{msg}");
    let msg = format!(
        "{:#}",
        sample(&unet, &s, &[0], [3, 16, 16], &cfg, 0, Device::Cpu).unwrap_err()
    );
    assert!(msg.contains("[B, 1, H, W]"), "{msg}");
    let cfg = SamplerConfig::ddim(101, 1.0);
    assert!(sample(&Uncond, &s, &[0], [1, 4, 4], &cfg, 0, Device::Cpu).is_err());
}

#[test]
fn loss_has_one_row_per_draw_and_backpropagates() {
    tch::manual_seed(0);
    let unet = small_unet();
    let s = NoiseSchedule::cosine(1000).unwrap();
    let x0 = Tensor::rand([3, 1, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let labels = Tensor::from_slice(&[0i64, 5, 9]);
    let cfg = LossConfig {
        repeats: 4,
        class_dropout: 0.1,
    };
    let rows = eps_loss(&unet, &s, &x0, &labels, &cfg).unwrap();
    assert_eq!(rows.size(), [12]);
    assert!(rows.min().double_value(&[]) > 0.0);
    let per = per_example(&rows, 4);
    assert_eq!(per.size(), [3]);
    per.mean(Kind::Float).backward();
    let w = &unet.conv_in.weight;
    assert!(w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
