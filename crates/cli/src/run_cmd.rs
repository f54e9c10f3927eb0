//! `dpsynth run`: the whole chain, fine-tune → sample → evaluate, from one TOML config (the
//! embedded default when none is given), with report.md and report.json.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::progress::Reporter;
use anyhow::{Context, Result};
use clap::Args;
use dpsynth::data::{self, acquire, catalog};
use dpsynth::fsutil::write_atomic;
use dpsynth::memorization;
use dpsynth::pipeline::config::{FinetuneSection, PrivateSection, RunConfig};
use dpsynth::pipeline::finetune_job::FinetuneJob;
use dpsynth::pipeline::report::{Provenance, ReportFile, RunReport};
use dpsynth::pipeline::{self, RunPlan, Source, BASE_MODE};
use dpsynth::train::finetune::FinetuneConfig;
use privacy::Accountant;
use serde::Deserialize;
use tch::Device;

use crate::baseline_cmd::{self, train_baseline, ClassifierSettings, Split};

/// The `mode` of a classifier cell's report: the DP-SGD classifier trained on the private data.
pub const CLASSIFIER_MODE: &str = "dp-sgd-classifier";

/// The embedded default config.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/run-default.toml");

#[derive(Args)]
pub struct RunArgs {
    /// TOML config (see configs/run-default.toml, the embedded default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (overrides the config's `out`). Must not hold a finished run; a run
    /// interrupted while fine-tuning or sampling continues where it stopped.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A run config with a `[classifier]` table instead of `[finetune]`, `[sample]` and
/// `[evaluate]`: the DP-SGD classifier trained directly on the private data, the baseline of a
/// results table. (It stays here with [`ClassifierSettings`], which are also the flags of
/// `dpsynth baseline`.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifierRunConfig {
    out: PathBuf,
    private: PrivateSection,
    classifier: ClassifierSettings,
}

/// What a run config asks for.
pub(crate) enum Job {
    /// Fine-tune (or not: mode "base"), sample, evaluate: the library's run config.
    Pipeline(Box<RunConfig>),
    /// Train the DP-SGD classifier on the private data.
    Classifier(ClassifierRunConfig),
}

/// Parses a run config: a `[classifier]` table makes it a classifier run.
pub(crate) fn parse_job(text: &str, source: &str) -> Result<Job> {
    let table: toml::Table =
        toml::from_str(text).with_context(|| format!("{source}: invalid run config"))?;
    Ok(if table.contains_key("classifier") {
        Job::Classifier(
            toml::from_str(text)
                .with_context(|| format!("{source}: invalid run config ([classifier] run)"))?,
        )
    } else {
        Job::Pipeline(Box::new(
            toml::from_str(text).with_context(|| format!("{source}: invalid run config"))?,
        ))
    })
}

/// A relative path from the config, tried against the working folder, then the repository the
/// binary was built from (so `models/mnist-base` works from anywhere).
pub(crate) fn resolve(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p);
    if repo.exists() {
        repo
    } else {
        p.to_path_buf()
    }
}

/// The git commit the binary was built from, with `-dirty` when its sources had uncommitted
/// changes (set by build.rs), or `None` when built outside git: reports record what code made
/// them.
fn source_commit() -> Option<&'static str> {
    Some(env!("DPSYNTH_BUILD_COMMIT")).filter(|c| !c.is_empty())
}

/// The fine-tuning job of a run config's `[finetune]` table `f` (with `config`, the settings it
/// gives, on `train`, into `out`, resuming the checkpoint there if there is one); its class-init
/// table resolved as the config's other paths are.
pub(crate) fn finetune_job(
    f: &FinetuneSection,
    config: FinetuneConfig,
    base: PathBuf,
    train: &str,
    out: PathBuf,
) -> Result<FinetuneJob> {
    let resume = out.join("checkpoint/checkpoint.json").exists();
    Ok(FinetuneJob {
        resume,
        ..FinetuneJob::new(
            base,
            train.to_string(),
            config,
            f.class_init.as_deref().map(resolve),
            out,
        )?
    })
}

/// The run's output folder (`--out` or the config's), refused when it holds a finished run.
pub(crate) fn output_folder(a: &RunArgs, configured: &Path) -> Result<PathBuf> {
    let out = a.out.clone().unwrap_or(configured.to_path_buf());
    anyhow::ensure!(
        !out.join("report.json").exists(),
        "{}: holds a finished run; choose another --out",
        out.display()
    );
    Ok(out)
}

/// Loads a dataset spec, fetching its dataset first when it is a named, fetchable one that
/// does not load yet.
pub(crate) fn load_or_fetch(spec: &str, data_dir: &Path) -> Result<data::Dataset> {
    match data::load(spec, data_dir) {
        Ok(ds) => Ok(ds),
        Err(e) => match spec
            .split(':')
            .next()
            .filter(|n| catalog::entry(n).is_some_and(|e| e.acquire == catalog::Acquire::Fetch))
        {
            Some(name) => {
                acquire::fetch(name, data_dir, None)?;
                Ok(data::load(spec, data_dir)?)
            }
            None => Err(e.into()),
        },
    }
}

/// The fields every run report starts with: what ran, from which config and code.
pub(crate) fn provenance(source: &str, text: &str) -> Provenance {
    Provenance {
        command: "run",
        version: env!("CARGO_PKG_VERSION"),
        commit: source_commit(),
        config: source.to_string(),
        config_text: text.to_string(),
        threads: tch::get_num_threads(),
    }
}

/// Runs a `[classifier]` config: the DP-SGD classifier on the private data (resumed from its
/// checkpoint in OUT/classifier when there is one), with report.json and report.md.
fn run_classifier(
    cfg: ClassifierRunConfig,
    a: &RunArgs,
    text: &str,
    source: &str,
    data_dir: &Path,
    device: Device,
) -> Result<()> {
    let out = output_folder(a, &cfg.out)?;
    let start = Instant::now();
    let train = load_or_fetch(&cfg.private.train, data_dir)?;
    let test = load_or_fetch(&cfg.private.test, data_dir)?;
    eprintln!(
        "== DP-SGD classifier on {}, epsilon {}",
        cfg.private.train, cfg.classifier.epsilon
    );
    let outcome = train_baseline(
        &cfg.classifier,
        Split {
            train: (&cfg.private.train, train),
            test: (&cfg.private.test, test),
        },
        &baseline_cmd::Run {
            accountant: Accountant::Pld,
            seed: None,
            out: &out.join("classifier"),
            private_log: crate::progress::PrivateLog::Off,
            checkpoint_every: baseline_cmd::CHECKPOINT_EVERY,
        },
        device,
    )?;
    let total_secs = start.elapsed().as_secs_f64();
    let mut report = serde_json::to_value(provenance(source, text))?;
    let fields = report.as_object_mut().expect("an object");
    if let serde_json::Value::Object(baseline) = outcome.report {
        for (k, v) in baseline {
            fields.entry(k).or_insert(v);
        }
    }
    fields.insert("mode".into(), CLASSIFIER_MODE.into());
    fields.insert("seconds".into(), serde_json::json!({ "total": total_secs }));
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let md = format!(
        "# dpsynth run: DP-SGD classifier\n\n\
         - config: {source}\n\
         - private data: `{}`, tested on `{}`\n\
         - privacy: epsilon = {:.3} at delta = {:e} (PLD accountant)\n\
         - **test accuracy: {:.2}%**\n\
         - time: {total_secs:.0} s on {} thread(s)\n",
        cfg.private.train,
        cfg.private.test,
        outcome.epsilon,
        cfg.classifier.delta,
        100.0 * outcome.test_accuracy,
        tch::get_num_threads(),
    );
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Runs `dpsynth run`.
pub fn run(a: RunArgs, data_dir: &Path, device: Device) -> Result<()> {
    let (text, source) = match &a.config {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFIG.to_string(), "embedded default".to_string()),
    };
    let cfg = match parse_job(&text, &source)? {
        Job::Pipeline(cfg) => cfg,
        Job::Classifier(cfg) => return run_classifier(cfg, &a, &text, &source, data_dir, device),
    };
    let sample = cfg
        .sample
        .settings(device)
        .with_context(|| source.clone())?;
    let out = output_folder(&a, &cfg.out)?;
    // Inception weights first, so a bad path fails before hours of fine-tuning
    let inception = (cfg.evaluate.inception.as_ref())
        .map(|p| crate::evaluate_cmd::load_inception(&resolve(p), device))
        .transpose()?;
    let evaluate = cfg
        .evaluate
        .settings(inception.as_ref())
        .with_context(|| source.clone())?;
    let started = Instant::now();

    // each dataset once (fetched if it is a named dataset that is missing)
    let f = &cfg.finetune;
    let train = match f.mode.0 {
        Some(_) => Some(load_or_fetch(&cfg.private.train, data_dir)?),
        None => None,
    };
    let test = load_or_fetch(&cfg.private.test, data_dir)?;
    let base = resolve(&f.base);
    let job;
    let class_init;
    let from = match (f.finetune_config(), &train) {
        (Some(config), Some(train)) => {
            let out = out.join("finetune");
            job = finetune_job(f, config, base.clone(), &cfg.private.train, out)?;
            Source::Finetune { job: &job, train }
        }
        _ => {
            let table = f.class_init.as_deref().map(resolve);
            class_init = table
                .as_deref()
                .map(dpsynth::train::class_table::load_class_init)
                .transpose()?;
            Source::Base {
                dir: &base,
                private_train: &cfg.private.train,
                delta: f.delta,
                class_init: class_init.as_ref(),
                class_init_rows: f.class_init_rows,
            }
        }
    };
    let plan = RunPlan {
        source: from,
        test_spec: &cfg.private.test,
        test: &test,
        sample,
        evaluate,
        out: &out,
        started,
    };
    let mut reporter = Reporter::new(f.private_log.into());
    let report = pipeline::run(&plan, device, &mut |e| reporter.on(e))?;

    let provenance = provenance(&source, &text);
    let file = ReportFile {
        provenance: &provenance,
        report: &report,
    };
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&serde_json::to_value(file)?)?.as_bytes(),
    )?;
    let md = markdown(&report, &provenance, &f.base);
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    println!(
        "downstream test accuracy {:.2}% at epsilon {:.3} (delta {:e}) in {:.0}s; report: {}",
        100.0 * report.test_accuracy,
        report.epsilon_spent,
        report.delta,
        report.seconds.total,
        out.join("report.md").display()
    );
    Ok(())
}

/// report.md of a run: what report.json says (`r` and its provenance `p`), for people; `base`,
/// the config's base folder, is named only in mode "base" (report.json has it in the config's
/// text).
fn markdown(r: &RunReport, p: &Provenance, base: &Path) -> String {
    // the fine-tuning's figures are there exactly when it ran
    let training = match (
        r.base_parameters,
        r.noise_multiplier,
        r.clip,
        r.sample_rate,
        r.secure_noise,
    ) {
        (Some(base_parameters), Some(sigma), Some(clip), Some(q), Some(secure_noise)) => format!(
            "- mode: {} ({} trainable of {} parameters)\n\
             - privacy: epsilon = {:.3} at delta = {:e} ({} accountant), sigma = {:.3}, clip C = {}, q = {:.5}, {} steps; noise {}\n",
            r.mode,
            r.trainable_parameters,
            base_parameters,
            r.epsilon_spent,
            r.delta,
            r.accountant.to_string().to_uppercase(),
            sigma,
            clip,
            q,
            r.steps,
            if secure_noise { "from OS-seeded ChaCha20" } else { "seeded (NOT private)" },
        ),
        _ => format!(
            "- mode: {BASE_MODE} (the base `{}` alone{}: no fine-tuning, no private training image read)\n",
            base.display(),
            if r.class_rows.is_some() { ", class rows started from public class names" } else { "" }
        ),
    };
    let memorization_md = r.memorization.as_ref().map_or(String::new(), |m| {
        let space = |d: &memorization::Distances, what: &str| {
            format!(
                "{:.1}% of synthetic images are nearer a training image than any held-out one \
                 in {what} (nearest training image at median {:.3}, minimum {:.3}; held-out: \
                 {:.3}, {:.3})",
                100.0 * d.closer_to_train,
                d.to_train.p50,
                d.to_train.min,
                d.to_heldout.p50,
                d.to_heldout.min
            )
        };
        let features = m.features.as_ref().map_or(String::new(), |d| {
            format!("; {}", space(d, "the downstream classifier's features"))
        });
        format!(
            "- memorization (for the data holder only: it reads the private training set; 50% \
             when nothing is copied): {}{features}; closest pairs in memorization.png\n",
            space(&m.pixels, "pixels (RMS distance)")
        )
    });
    let fidelity_md = r.fidelity.as_ref().map_or(String::new(), |f| {
        format!(
            "- fidelity to `{}`: {}\n",
            r.test,
            crate::evaluate_cmd::fidelity_line(f)
        )
    });
    let t = &r.seconds;
    format!(
        "# dpsynth run\n\n\
         - config: {}\n\
         - private data: `{}`, tested on `{}`\n\
         {training}\
         - synthetic images: {} ({}-{}, guidance {}, {})\n\
         - **downstream test accuracy: {:.2}%** (epoch {} chosen on {} held-out synthetic images)\n\
         {fidelity_md}\
         {memorization_md}\
         - time: fine-tune {:.0} s, sample {:.0} s, evaluate {:.0} s, total {:.0} s on {} thread(s)\n\n\
         ![samples](grid.png)\n\n\
         Per-class accuracy: {}\n",
        p.config,
        r.private_train,
        r.test,
        r.synthetic_images,
        r.sampler.kind.name(),
        r.sampler.num_steps,
        r.sampler.guidance_scale,
        r.sampler.precision.name(),
        100.0 * r.test_accuracy,
        r.downstream_best_epoch,
        r.downstream_val_examples,
        t.finetune,
        t.sample,
        t.evaluate,
        t.total,
        p.threads,
        r.per_class_accuracy
            .iter()
            .zip(&r.test_classes)
            .map(|(a, class)| format!("{class}: {:.1}%", 100.0 * a))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed run config under configs/ (the embedded default and the smoke config)
    /// parses and points at the MNIST base model and private data. (Pretraining configs,
    /// `*-base*.toml`, are checked by the library; results cells by
    /// `results_cell_configs_parse`.)
    #[test]
    fn committed_run_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("run-") {
                continue;
            }
            let cfg: RunConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.finetune.base, Path::new("models/mnist-base"), "{name}");
            assert_eq!(cfg.private.train, "mnist:train", "{name}");
            assert_eq!(cfg.private.test, "mnist:test", "{name}");
            seen += 1;
        }
        assert_eq!(seen, 2, "run-default and run-smoke");
        let default: RunConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(default.finetune.epsilon, 10.0);
        assert_eq!(default.sample.per_class * 10, 10_000);
    }

    /// Every results cell (`results/<dataset>/<cell>/config.toml`) parses, names a mode, valid
    /// sampler settings, a base folder (and class-init table) that exists in the repository and
    /// its dataset's data, and writes under `out/results/<dataset>/<cell>`.
    #[test]
    fn results_cell_configs_parse() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut seen = 0;
        for dataset in std::fs::read_dir(repo.join("results")).unwrap() {
            let dataset = dataset.unwrap().path();
            if !dataset.is_dir() {
                continue;
            }
            let data = dataset.file_name().unwrap().to_string_lossy().into_owned();
            for cell in std::fs::read_dir(&dataset).unwrap() {
                let cell = cell.unwrap().path();
                if !cell.is_dir() {
                    continue; // a study's files beside its cells (plot.toml)
                }
                let name = format!("{data}/{}", cell.file_name().unwrap().to_string_lossy());
                let text = std::fs::read_to_string(cell.join("config.toml"))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let (out, private) = match parse_job(&text, &name).unwrap() {
                    Job::Pipeline(cfg) => {
                        assert!(
                            repo.join(&cfg.finetune.base).join("config.json").is_file(),
                            "{name}"
                        );
                        if let Some(table) = &cfg.finetune.class_init {
                            assert!(repo.join(table).is_file(), "{name}: {table:?}");
                        }
                        cfg.sample
                            .settings(Device::Cpu)
                            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
                        (cfg.out, cfg.private)
                    }
                    Job::Classifier(cfg) => (cfg.out, cfg.private),
                };
                // results/<dataset>[-<study>]/ holds cells trained on <dataset>:train[@N]
                let trained = private.train.split(':').next().unwrap();
                assert!(
                    data == trained || data.starts_with(&format!("{trained}-")),
                    "{name}: trains on {}",
                    private.train
                );
                // a training split, or a set that is one (tiny-imagenet-proxy-train:CLASS_MAP)
                assert!(
                    private.train.starts_with(&format!("{trained}:train"))
                        || trained.ends_with("-train"),
                    "{name}: trains on {}",
                    private.train
                );
                assert_eq!(out, Path::new("out/results").join(&name), "{name}");
                seen += 1;
            }
        }
        assert!(seen >= 1, "no results cells");
    }
}
