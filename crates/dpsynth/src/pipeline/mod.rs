//! The whole chain of a run: DP fine-tuning → sampling → evaluation (the downstream classifier,
//! FID/KID, memorization), returning a typed [`report::RunReport`]. The caller loads each
//! dataset once and hands it in, writes the reports, and shows the run's [`Event`]s. A run's
//! TOML config deserializes into [`config::RunConfig`], whose tables give the settings here.

pub mod config;
pub mod finetune_job;
pub mod report;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use privacy::Accountant;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::{convert, grid, imagefolder, Dataset};
use crate::diffusion::sampler::SamplerConfig;
use crate::fidelity::{self, Fidelity, FidelitySettings};
use crate::fsutil;
use crate::memorization;
use crate::nn::inception::InceptionV3;
use crate::nn::unet::model::WEIGHTS_FILE;
use crate::synth::load_model_dir;
use crate::synth::resume::{self, Sampling, PART_IMAGES};
use crate::train::class_table::{self, ClassInit, InitRows, RowStart};
use crate::train::downstream::{train_and_test, DownstreamConfig};
use crate::train::finetune::{Finetuned, Mode, StepInfo};
use finetune_job::{run_finetune, FinetuneJob, FinetuneOutcome, CLASS_ROWS_NOTE};
use report::{Conversion, RunReport, Seconds};

/// The mode of a run that skips fine-tuning: the base is sampled as it is, no private training
/// image is read, and nothing private is spent (a "base alone" cell).
pub const BASE_MODE: &str = "base";

/// Closest synthetic-training pairs the memorization report lists (memorization.png).
const CLOSEST_PAIRS: usize = 20;

/// Images of each class shown in a row of a sample grid (a run's grid.png and the preview
/// grid.png beside a fine-tuned model).
pub const GRID_PER_ROW: usize = 10;

/// How much a sample grid enlarges each image (nearest neighbour).
pub const GRID_SCALE: u32 = 2;

/// The mode of a run: a fine-tuning mode, or "base" (`None`: the base is sampled as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RunMode(pub Option<Mode>);

impl TryFrom<String> for RunMode {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        if s == BASE_MODE {
            return Ok(Self(None));
        }
        s.parse::<Mode>()
            .map(|m| Self(Some(m)))
            .map_err(|e| format!("{e}, or {BASE_MODE} (no fine-tuning)"))
    }
}

impl std::fmt::Display for RunMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(m) => write!(f, "{m}"),
            None => f.write_str(BASE_MODE),
        }
    }
}

impl Serialize for RunMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a run or a fine-tuning job reports while it works, in order, for the caller to show.
/// Counted work (DP steps, images) comes between [`Event::Begin`] and [`Event::End`].
pub enum Event<'a> {
    /// A stage of a run begins.
    Stage(Stage<'a>),
    /// The images of the set `spec` are converted to the model's shape, as `how` says (the
    /// private set's once fine-tuning, which converts them, has run).
    Converted {
        /// The dataset spec.
        spec: &'a str,
        /// What the conversion does.
        how: &'a str,
    },
    /// Counted work begins: `total` `unit`s (0: known with the first [`Event::Step`]).
    Begin {
        /// What is counted ("steps", "images").
        unit: &'static str,
        /// How many.
        total: u64,
    },
    /// A DP fine-tuning step ended.
    Step(&'a StepInfo),
    /// This many units of the counted work are done.
    Done(u64),
    /// Sampling resumes its progress file `file`: `done` of the `total` images were sampled by
    /// an earlier run (it comes after the sampling's [`Event::Begin`]; the [`Event::Done`]s
    /// that follow count them).
    SamplingResumed {
        /// Images read from the file.
        done: u64,
        /// Images in all.
        total: u64,
        /// The progress file.
        file: &'a Path,
    },
    /// The counted work ended.
    End,
    /// A downstream epoch ended.
    Epoch {
        /// The epoch (1-based).
        epoch: usize,
        /// Accuracy on the held-out synthetic images.
        val_accuracy: f64,
    },
    /// Fine-tuning finished; its report.json and grid.png are in `job.out`.
    Finetuned {
        /// The job.
        job: &'a FinetuneJob,
        /// What it produced.
        done: &'a Finetuned,
    },
    /// FID and KID were measured.
    Fidelity(&'a Fidelity),
}

/// The stages of a run, in order.
pub enum Stage<'a> {
    /// DP fine-tuning in `mode` towards `epsilon`.
    Finetune {
        /// The mode.
        mode: Mode,
        /// The target ε.
        epsilon: f64,
    },
    /// No fine-tuning (mode "base"): the base is sampled as it is.
    BaseAlone,
    /// Sampling `per_class` images of every class.
    Sample {
        /// Images per class.
        per_class: usize,
    },
    /// The downstream classifier, trained on the synthetic images and tested on `test`.
    Downstream {
        /// The test set's spec.
        test: &'a str,
    },
    /// FID/KID from the Inception features of `images` images, at most `per_set` of each set.
    Fidelity {
        /// Images both sets give.
        images: usize,
        /// The most of each set.
        per_set: usize,
    },
    /// No FID/KID: no Inception weights were given.
    NoFidelity,
    /// The memorization report: nearest training and held-out images.
    Memorization,
}

/// What a run samples from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The model `job` fine-tunes on `train`, the private set `job.data` names.
    Finetune {
        /// The fine-tuning job.
        job: &'a FinetuneJob,
        /// The private training set, loaded once by the caller.
        train: &'a Dataset,
    },
    /// Mode "base": the base model folder `dir` as it is; no private training image is read.
    Base {
        /// The base model folder.
        dir: &'a Path,
        /// Spec of the private training set, reported only (it is not read).
        private_train: &'a str,
        /// δ the report states (nothing is spent).
        delta: f64,
        /// A public class-init table: the base's class rows are first rebuilt for the test
        /// set's classes, each from its related public classes' rows (their mean, or each of
        /// them with `class_init_rows` each) or the null row. It reads only the base and public
        /// names.
        class_init: Option<&'a ClassInit>,
        /// Mean, scaled mean or each ([`InitRows`]).
        class_init_rows: InitRows,
    },
}

impl Source<'_> {
    /// The base model folder the run starts from.
    pub fn base_dir(&self) -> &Path {
        match self {
            Source::Finetune { job, .. } => &job.base,
            Source::Base { dir, .. } => dir,
        }
    }

    /// Spec of the private training set: the one the job fine-tunes on, or the one a base-alone
    /// run reports.
    pub fn private_train(&self) -> &str {
        match self {
            Source::Finetune { job, .. } => &job.data,
            Source::Base { private_train, .. } => private_train,
        }
    }
}

/// How a run samples the synthetic set.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// Images per class.
    pub per_class: usize,
    /// The sampler.
    pub sampler: SamplerConfig,
    /// Seed of the sampling noise.
    pub seed: u64,
}

/// How a run evaluates the synthetic set against the real test set.
pub struct EvaluateSettings<'a> {
    /// The downstream classifier.
    pub downstream: DownstreamConfig,
    /// pytorch-fid's Inception network for FID and KID (`None`: not measured).
    pub inception: Option<&'a InceptionV3>,
    /// How FID and KID are measured.
    pub fidelity: FidelitySettings,
}

/// One run: where it samples from, the real test set, and the settings of each stage.
pub struct RunPlan<'a> {
    /// The model sampled: fine-tuned on the private set (whose spec it gives), or the base
    /// alone.
    pub source: Source<'a>,
    /// Spec of the real test set.
    pub test_spec: &'a str,
    /// The real test set, loaded once by the caller.
    pub test: &'a Dataset,
    /// Sampling.
    pub sample: SampleSettings,
    /// Evaluation.
    pub evaluate: EvaluateSettings<'a>,
    /// Output folder: finetune/, samples/, grid.png and memorization.png go there, and
    /// sampling's progress file ([`resume::PROGRESS_FILE`]) while it samples.
    pub out: &'a Path,
    /// When the run began (its loading of the data counts in the total time).
    pub started: Instant,
}

/// FID and KID of `synthetic` against `real` with `net`, reported as [`Stage::Fidelity`],
/// counted images and [`Event::Fidelity`]; `None` (and [`Stage::NoFidelity`]) without `net`.
pub fn measure_fidelity(
    net: Option<&InceptionV3>,
    synthetic: &Dataset,
    real: &Dataset,
    settings: &FidelitySettings,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Fidelity>> {
    let Some(net) = net else {
        on_event(Event::Stage(Stage::NoFidelity));
        return Ok(None);
    };
    let per_set = settings.max_images;
    let images = synthetic.len().min(per_set) + real.len().min(per_set);
    on_event(Event::Stage(Stage::Fidelity { images, per_set }));
    on_event(Event::Begin {
        unit: "images",
        total: images as u64,
    });
    let f = fidelity::measure(net, synthetic, real, settings, &mut |n| {
        on_event(Event::Done(n as u64))
    })?;
    on_event(Event::End);
    on_event(Event::Fidelity(&f));
    Ok(Some(f))
}

/// The most differing class names an error lists of each kind.
const LISTED_NAMES: usize = 10;

/// How class lists `a` (of `a_what`) and `b` (of `b_what`) differ, for an error: the names only
/// one has, or the first label they name differently when they hold the same names in another
/// order (`None`: they are equal).
fn class_difference(a_what: &str, a: &[String], b_what: &str, b: &[String]) -> Option<String> {
    if a == b {
        return None;
    }
    let only = |what: &str, x: &[String], y: &[String]| {
        let names: Vec<&str> = (x.iter())
            .filter(|n| !y.contains(n))
            .map(String::as_str)
            .collect();
        (!names.is_empty()).then(|| {
            let more = names.len().saturating_sub(LISTED_NAMES);
            let listed = names[..names.len().min(LISTED_NAMES)].join("', '");
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("only {what} has '{listed}'{more}")
        })
    };
    let parts: Vec<String> = [only(a_what, a, b), only(b_what, b, a)]
        .into_iter()
        .flatten()
        .collect();
    if !parts.is_empty() {
        return Some(parts.join("; "));
    }
    // the same names: in another order, or some of them twice
    let first = (a.iter().zip(b).enumerate()).find(|(_, (x, y))| x != y);
    Some(match first {
        Some((label, (x, y))) => format!(
            "the same names in another order: label {label} is '{x}' in {a_what} and '{y}' in \
             {b_what}"
        ),
        None => format!(
            "the same names, but {a_what} has {} classes and {b_what} {}",
            a.len(),
            b.len()
        ),
    })
}

/// Refuses to sample `classes` (the classes of the model a run samples, by label) when they are
/// not the test set's, by name and in order: the downstream classifier would be scored against
/// other labels. `source` says where the classes come from.
fn check_test_classes(plan: &RunPlan, source: &str, classes: &[String]) -> Result<()> {
    let test = format!("the test set `{}`", plan.test_spec);
    let Some(diff) = class_difference(source, classes, &test, &plan.test.class_names) else {
        return Ok(());
    };
    match plan.source {
        Source::Finetune { job, .. } => bail!(
            "the private training set `{}` and the test set `{}` do not name the same classes in \
             the same order, so the downstream accuracy would compare other labels: {diff}",
            job.data,
            plan.test_spec
        ),
        Source::Base { dir, .. } => bail!(
            "mode \"{BASE_MODE}\" samples the classes of the base {}, which must be those of \
             the test set `{}` by name and in order: {diff}; fine-tune to learn other classes, \
             or give a class_init table that starts each test class from public classes",
            dir.display(),
            plan.test_spec
        ),
    }
}

/// Rebuilds the class table of `model` for `classes` from the public table `init` (each class
/// from the mean of its public classes' rows, or each of them as its own row, as `rows` says, or
/// the null row): the base alone, with class rows started from public names. Returns where each
/// class started, for the report.
fn with_class_rows(
    model: &mut crate::synth::ModelDir,
    classes: &[String],
    init: &ClassInit,
    rows: InitRows,
) -> Result<Vec<RowStart>> {
    let plan = class_table::plan_rows(&model.classes, classes, Some(init), rows)?;
    model.unet = class_table::rebuild(&model.unet, &model.classes, &plan)?;
    model.classes = classes.to_vec();
    model.row_classes = class_table::row_classes(&plan);
    Ok(plan)
}

/// Runs `plan`: fine-tunes (unless mode "base"), samples into `out/samples` and `out/grid.png`
/// (resuming the progress file an interrupted sampling left in `out`, [`resume`]), trains the
/// downstream classifier on the samples and tests it on the real test set (converted to the
/// samples' shape), measures FID/KID when Inception weights are given and, when private data
/// was read, the memorization report (`out/memorization.png`). The sampled model's classes must
/// be the test set's, by name and in order (checked before fine-tuning too: the fine-tuned
/// model's classes are the private training set's). An `out` already holding `samples/` is
/// refused before anything runs.
pub fn run(plan: &RunPlan, device: Device, on_event: &mut dyn FnMut(Event)) -> Result<RunReport> {
    // refused before hours of fine-tuning and sampling end in a refusal to overwrite them
    let samples = plan.out.join("samples");
    if samples.exists() {
        bail!(
            "{}: holds the samples of a run that stopped after sampling; remove it and grid.png \
             beside it to sample again, or choose another output folder",
            samples.display()
        );
    }

    let base_weights = plan.source.base_dir().join(WEIGHTS_FILE);
    let base_weights_sha256 = fsutil::sha256_file(&base_weights)
        .with_context(|| format!("cannot read the base's weights {}", base_weights.display()))?;

    // 1. DP fine-tuning (none for the base alone)
    let t0 = Instant::now();
    let (ft, mut model, train, base_rows) = match plan.source {
        Source::Finetune { job, train } => {
            let private = format!("the private training set `{}`", job.data);
            check_test_classes(plan, &private, &train.class_names)?;
            on_event(Event::Stage(Stage::Finetune {
                mode: job.config.mode,
                epsilon: job.config.epsilon,
            }));
            // the model folder fine-tuning wrote, as it loaded it for the preview grid: the
            // saved weights, loaded once
            let FinetuneOutcome { done, model } = run_finetune(job, train, device, on_event)?;
            (Some(done), model, Some(train), None)
        }
        Source::Base {
            dir,
            class_init,
            class_init_rows,
            ..
        } => {
            on_event(Event::Stage(Stage::BaseAlone));
            let mut model = load_model_dir(dir, device)?;
            let rows = class_init
                .map(|init| {
                    with_class_rows(&mut model, &plan.test.class_names, init, class_init_rows)
                })
                .transpose()?;
            (None, model, None, rows)
        }
    };
    let finetune_secs =
        t0.elapsed().as_secs_f64() + ft.as_ref().map_or(0.0, |done| done.seconds_earlier);

    // 2. sampling
    let s = &plan.sample;
    on_event(Event::Stage(Stage::Sample {
        per_class: s.per_class,
    }));
    let source = match &ft {
        Some(done) => format!("the fine-tuned model {}", done.model_dir.display()),
        None => "the base".to_string(),
    };
    check_test_classes(plan, &source, &model.classes)?;
    // the model folder on disk keeps its float32 weights and its adapters
    model.prepare_sampling(s.sampler.precision)?;
    let sampling = Sampling::open(
        &model,
        s.per_class,
        &s.sampler,
        s.seed,
        plan.out,
        PART_IMAGES,
    )?;
    on_event(Event::Begin {
        unit: "images",
        total: sampling.total() as u64,
    });
    if sampling.resumed() > 0 {
        on_event(Event::SamplingResumed {
            done: sampling.resumed() as u64,
            total: sampling.total() as u64,
            file: sampling.file(),
        });
    }
    let sampled = sampling.run(&mut |n| on_event(Event::Done(n as u64)))?;
    on_event(Event::End);
    let (synthetic, sample_secs) = (sampled.dataset, sampled.seconds);
    imagefolder::write(&synthetic, &samples)?;
    grid::write_grid(
        &synthetic,
        GRID_PER_ROW,
        GRID_SCALE,
        &plan.out.join("grid.png"),
    )?;
    resume::remove(plan.out)?;

    // 3. downstream evaluation
    on_event(Event::Stage(Stage::Downstream {
        test: plan.test_spec,
    }));
    let t0 = Instant::now();
    // real test images of another shape are converted as the private ones were
    let shape = [synthetic.channels, synthetic.height, synthetic.width];
    let (test, test_conversion) = convert::to_shape(plan.test, shape);
    if let Some(how) = &test_conversion {
        on_event(Event::Converted {
            spec: plan.test_spec,
            how,
        });
    }
    let e = &plan.evaluate;
    let r = train_and_test(
        &synthetic,
        &test,
        &e.downstream,
        device,
        &mut |epoch, acc| {
            on_event(Event::Epoch {
                epoch,
                val_accuracy: acc,
            })
        },
    )?;
    let fidelity = measure_fidelity(e.inception, &synthetic, &test, &e.fidelity, on_event)?;
    let evaluate_secs = t0.elapsed().as_secs_f64();

    // 4. memorization report (reads the private training set: for the data holder only)
    let t0 = Instant::now();
    let memorization = match train {
        Some(train) => {
            on_event(Event::Stage(Stage::Memorization));
            // the private images in the samples' shape: fine-tuning converted them to the
            // model's, which is the samples' (so this borrows them and converts nothing)
            let trained = ft.as_ref().and_then(|ft| ft.converted.as_ref());
            let (train, _) = convert::to_shape(trained.unwrap_or(train), shape);
            let net = Some(r.model.as_ref());
            let m = memorization::measure(&synthetic, &train, &test, CLOSEST_PAIRS, net, device)?;
            let path = plan.out.join("memorization.png");
            memorization::write_pairs(&m, &synthetic, &train, 2, &path)?;
            Some(m)
        }
        None => None,
    };
    let memorization_secs = t0.elapsed().as_secs_f64();

    let (mode, delta, accountant) = match plan.source {
        Source::Finetune { job, .. } => (
            Some(job.config.mode),
            job.config.delta,
            job.config.accountant,
        ),
        Source::Base { delta, .. } => (None, delta, Accountant::default()),
    };
    Ok(RunReport {
        private_train: plan.source.private_train().to_string(),
        test: plan.test_spec.to_string(),
        mode: RunMode(mode),
        epsilon_spent: ft.as_ref().map_or(0.0, |ft| ft.epsilon),
        delta,
        accountant,
        noise_multiplier: ft.as_ref().map(|ft| ft.state.noise_multiplier),
        sample_rate: ft.as_ref().map(|ft| ft.state.sample_rate),
        steps: ft.as_ref().map_or(0, |ft| ft.state.step),
        ledger: ft.as_ref().map(|ft| ft.state.ledger.clone()),
        secure_noise: ft.as_ref().map(|ft| ft.secure_noise),
        trainable_parameters: ft.as_ref().map_or(0, |ft| ft.trainable_parameters),
        base_parameters: ft.as_ref().map(|ft| ft.base_parameters),
        base_weights_sha256,
        class_rows: ft
            .as_ref()
            .and_then(|ft| ft.class_rows.clone())
            .or(base_rows),
        conversion: Conversion {
            private_train: ft.as_ref().and_then(|ft| ft.conversion.clone()),
            test: test_conversion,
        },
        class_rows_note: CLASS_ROWS_NOTE,
        synthetic_images: synthetic.len(),
        sampler: s.sampler,
        test_accuracy: r.test.accuracy,
        per_class_accuracy: r.test.per_class_accuracy,
        test_classes: plan.test.class_names.clone(),
        confusion: r.test.confusion,
        downstream_best_epoch: r.best_epoch,
        downstream_val_accuracy: r.val_accuracy,
        downstream_val_examples: r.val_examples,
        fidelity,
        memorization,
        clip: ft.as_ref().map(|ft| ft.state.config.clip),
        seconds: Seconds {
            finetune: finetune_secs,
            sample: sample_secs,
            evaluate: evaluate_secs,
            memorization: memorization_secs,
            total: plan.started.elapsed().as_secs_f64(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::class_difference;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Class lists differ by name, by order or by a repeated name, and the message says which.
    #[test]
    fn class_differences_name_what_differs() {
        let digits = names(&["0", "1", "2"]);
        assert_eq!(class_difference("A", &digits, "B", &digits), None);
        let words = names(&["0", "one", "two"]);
        assert_eq!(
            class_difference("A", &digits, "B", &words).unwrap(),
            "only A has '1', '2'; only B has 'one', 'two'"
        );
        let reordered = names(&["0", "2", "1"]);
        assert_eq!(
            class_difference("A", &digits, "B", &reordered).unwrap(),
            "the same names in another order: label 1 is '1' in A and '2' in B"
        );
        let fewer = names(&["0", "1"]);
        assert_eq!(
            class_difference("A", &digits, "B", &fewer).unwrap(),
            "only A has '2'"
        );
        let twice = names(&["0", "1", "2", "2"]);
        assert_eq!(
            class_difference("A", &digits, "B", &twice).unwrap(),
            "the same names, but A has 3 classes and B 4"
        );
        let many: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        let listed = class_difference("A", &many, "B", &[]).unwrap();
        assert!(listed.ends_with("'c9' and 15 more"), "{listed}");
    }
}
