//! `dpsynth results`: the tables of docs/RESULTS.md and docs/SELECTION.md, made from the
//! committed reports.
//!
//! A results cell is a folder `results/<dataset>/<cell>/` with the run's `config.toml` and its
//! `report.json` (any command's report with a `test_accuracy`). Repeats of one setting are cells
//! named `<setting>-s1`, `<setting>-s2`, ...; the table shows their mean and standard deviation.
//! A headline cell (`<method>-eps<E>`) whose folder holds a `config.toml` and no report yet shows
//! as "not run".
//! The table of a dataset is written between the lines `<!-- results:DATASET -->` and
//! `<!-- /results:DATASET -->`, which exactly one of the documents holds: the headline results
//! in docs/RESULTS.md, the public runs that chose settings in docs/SELECTION.md. Cells holding
//! a `dpsynth audit` report instead (`"command": "audit"`) make a second table, between
//! `<!-- audits:DATASET -->` and `<!-- /audits:DATASET -->`. A folder with a `plot.toml` is a
//! size study ([`crate::size_plot`]): its plot is written as `DATASET.svg` beside the first
//! document, and every cell folder in it must be named `<method>-n<N>-eps<E>-s<K>`, so no cell is in its table but off its plot. `--check` fails
//! when a document or a plot and the reports disagree, and on a `DATASET.svg` beside the first
//! document whose folder has no `plot.toml`, so no figure can drift from its report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use crate::size_plot::{mean_sd, parse_full_cell, parse_study_cell, svg, PlotConfig, Points};

#[derive(Args)]
pub struct ResultsArgs {
    /// Folder of results cells (`DATASET/CELL/report.json`).
    #[arg(long, default_value = "results")]
    dir: PathBuf,
    /// Documents whose marked tables are regenerated (repeat the flag for several; each table's
    /// markers must be in exactly one). Size-study plots are written beside the first.
    #[arg(long = "doc", default_values = ["docs/RESULTS.md", "docs/SELECTION.md"])]
    docs: Vec<PathBuf>,
    /// Change nothing; fail if the document's tables differ from the reports.
    #[arg(long)]
    check: bool,
}

/// One setting: its repeats' accuracies and what they were tested on.
struct Setting {
    test: String,
    epsilon: Option<f64>,
    accuracies: Vec<f64>,
}

/// `name` without a trailing repeat suffix `-sN`.
fn setting_name(cell: &str) -> &str {
    match cell.rsplit_once("-s") {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => cell,
    }
}

/// One audit cell's row: the accountant's ε beside the two canary sets' lower bounds.
fn audit_row(name: &str, report: &serde_json::Value, path: &Path) -> Result<String> {
    let bound = |set: &str| -> Result<String> {
        let r = &report[set]["result"];
        if r.is_null() {
            return Ok("not planted".to_string());
        }
        let eps = r["epsilon_lower_bound"]
            .as_f64()
            .with_context(|| format!("{}: no {set} bound", path.display()))?;
        let best = &r["best_guess"];
        Ok(format!(
            "{eps:.2} ({} of {} right, {} canaries)",
            best["correct"], best["guesses"], r["canaries"]
        ))
    };
    let accountant = report["accountant_epsilon"]
        .as_f64()
        .map_or("∞ (no noise)".to_string(), |e| format!("{e:.2}"));
    let sigma = report["noise_multiplier"]
        .as_f64()
        .with_context(|| format!("{}: no noise_multiplier", path.display()))?;
    Ok(format!(
        "| {name} | {accountant} | {sigma:.3} | {} | {} | {} |\n",
        report["steps"],
        bound("input_canaries")?,
        bound("gradient_canaries")?
    ))
}

/// The audit table of a dataset's audit rows.
fn audit_table(rows: &[String]) -> String {
    let mut out = String::from(
        "| audit | accountant's ε | σ | steps | ε lower bound, input canaries | ε lower bound, \
         gradient canaries |\n|---|---|---|---|---|---|\n",
    );
    rows.iter().for_each(|r| out += r);
    out
}

/// What one dataset's folder holds.
struct Dataset {
    /// The settings whose cells have reports (accuracy cells).
    settings: BTreeMap<String, Setting>,
    /// The audit cells' table rows.
    audits: Vec<String>,
    /// The settings of cells with a `config.toml` and no report yet: the headline shows them as
    /// "not run", so a planned cell is never silently missing from it.
    unrun: BTreeSet<String>,
}

/// A dataset's cells. In a size study (`study`), every cell folder, run or not, must be named
/// `<method>-n<N>-eps<E>-s<K>`.
fn read_dataset(dir: &Path, study: bool) -> Result<Dataset> {
    let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
    let mut audits = Vec::new();
    let mut unrun = BTreeSet::new();
    let mut cells: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cells.sort();
    for cell in cells {
        let name = cell
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        ensure!(
            !study || parse_study_cell(setting_name(&name)).is_some(),
            "{}: the cell folder {name:?} is not named <method>-n<N>-eps<E>-s<K> (N more than 0, \
             whole numbers), as every cell of a size study (a folder with plot.toml) must be",
            cell.display()
        );
        let path = cell.join("report.json");
        if !path.is_file() {
            if cell.join("config.toml").is_file() {
                unrun.insert(setting_name(&name).to_string());
            }
            continue;
        }
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", path.display()))?;
        if report["command"] == "audit" {
            audits.push(audit_row(&name, &report, &path)?);
            continue;
        }
        let accuracy = report["test_accuracy"]
            .as_f64()
            .with_context(|| format!("{}: no test_accuracy", path.display()))?;
        let test = report["test"]
            .as_str()
            .map(str::to_string)
            .or_else(|| report["data"].as_str().map(|d| format!("{d}:test")))
            .with_context(|| format!("{}: no test set", path.display()))?;
        let epsilon = match report["mode"].as_str() {
            Some(dpsynth::pipeline::BASE_MODE) => None,
            _ => report["epsilon_spent"].as_f64(),
        };
        let s = settings
            .entry(setting_name(&name).to_string())
            .or_insert(Setting {
                test: test.clone(),
                epsilon,
                accuracies: Vec::new(),
            });
        ensure!(
            s.test == test,
            "{}: tested on {test}, its other repeats on {}",
            path.display(),
            s.test
        );
        s.accuracies.push(accuracy);
    }
    Ok(Dataset {
        settings,
        audits,
        unrun,
    })
}

/// `mean ± sd` of a setting's accuracies, in percent (no spread for a single run).
fn summary(s: &Setting) -> String {
    let (mean, sd) = mean_sd(&s.accuracies);
    let spread = if s.accuracies.len() > 1 {
        format!(" ± {:.2}", 100.0 * sd)
    } else {
        String::new()
    };
    format!("{:.2}%{spread}", 100.0 * mean)
}

/// The headline table: settings named `METHOD-epsE` (and their repeats) as one row per method
/// and one column per ε, each cell `mean ± sd (runs)`, or "not run" where no repeat has a report
/// (`unrun` names the settings of cells not run yet); `None` when no setting is so named.
fn headline(settings: &BTreeMap<String, Setting>, unrun: &BTreeSet<String>) -> Option<String> {
    let mut cells: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut epsilons: Vec<u64> = Vec::new();
    for (name, s) in settings {
        let Some(line) = parse_full_cell(name) else {
            continue;
        };
        epsilons.push(line.epsilon);
        let runs = s.accuracies.len();
        cells.entry(line.method).or_default().insert(
            line.epsilon,
            format!(
                "{} ({runs} run{})",
                summary(s),
                if runs == 1 { "" } else { "s" }
            ),
        );
    }
    for line in unrun.iter().filter_map(|name| parse_full_cell(name)) {
        epsilons.push(line.epsilon);
        cells.entry(line.method).or_default();
    }
    if cells.is_empty() {
        return None;
    }
    epsilons.sort_unstable();
    epsilons.dedup();
    let mut out = String::from("| method |");
    for e in &epsilons {
        out += &format!(" ε = {e} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(epsilons.len());
    out += "\n";
    let mut methods: Vec<_> = cells.iter().collect();
    methods.sort_by(|a, b| natural_cmp(a.0, b.0));
    for (method, row) in methods {
        out += &format!("| {method} |");
        for e in &epsilons {
            out += &format!(" {} |", row.get(e).map_or("not run", String::as_str));
        }
        out += "\n";
    }
    Some(out)
}

/// The markdown tables of one dataset's settings: the headline (method × ε) when there is one,
/// then every setting it does not show; a line saying so when no cell has a report yet.
fn table(settings: &BTreeMap<String, Setting>, unrun: &BTreeSet<String>) -> String {
    if settings.is_empty() {
        return "No cell has run yet.\n".to_string();
    }
    let Some(h) = headline(settings, unrun) else {
        return settings_table(settings.iter());
    };
    let mut others = settings
        .iter()
        .filter(|(name, _)| parse_full_cell(name).is_none())
        .peekable();
    match others.peek() {
        Some(_) => format!("{h}\nOther settings:\n\n{}", settings_table(others)),
        None => h,
    }
}

/// The markdown table of `settings`.
fn settings_table<'a>(settings: impl Iterator<Item = (&'a String, &'a Setting)>) -> String {
    let mut out = String::from(
        "| setting | tested on | ε spent | runs | accuracy (mean ± sd) |\n|---|---|---|---|---|\n",
    );
    let mut settings: Vec<_> = settings.collect();
    settings.sort_by(|a, b| natural_cmp(a.0, b.0));
    for (name, s) in settings {
        let eps = s.epsilon.map_or("none".to_string(), |e| format!("{e:.2}"));
        out += &format!(
            "| {name} | `{}` | {eps} | {} | {} |\n",
            s.test,
            s.accuracies.len(),
            summary(s)
        );
    }
    out
}

/// One piece of a setting name: a number (`5000`, `0.5`, `3e-3`) or the text between numbers.
enum Token<'a> {
    Number(f64),
    Text(&'a str),
}

/// `name` cut into numbers and the text between them.
fn tokens(name: &str) -> Vec<Token<'_>> {
    let b = name.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_digit() {
            i = digits(i);
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i = digits(i + 1);
            }
            // an exponent only where digits follow: `3e-3`, not the `e` of `eps`
            let sign = usize::from(i + 1 < b.len() && b[i + 1] == b'-');
            if i + 1 + sign < b.len() && b[i] == b'e' && b[i + 1 + sign].is_ascii_digit() {
                i = digits(i + 1 + sign);
            }
            out.push(Token::Number(name[start..i].parse().unwrap_or(f64::MAX)));
        } else {
            while i < b.len() && !b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Text(&name[start..i]));
        }
    }
    out
}

/// The order a reader expects of setting names: numbers compare by value, so `n5000` comes
/// before `n20000` and `lr3e-3` before `lr1e-2`; text compares as text.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(&tb) {
        let o = match (x, y) {
            (Token::Number(p), Token::Number(q)) => p.total_cmp(q),
            (Token::Text(p), Token::Text(q)) => p.cmp(q),
            (Token::Number(_), Token::Text(_)) => Less,
            (Token::Text(_), Token::Number(_)) => Greater,
        };
        if o != Equal {
            return o;
        }
    }
    ta.len().cmp(&tb.len())
}

/// A document and its text.
struct Doc {
    path: PathBuf,
    text: String,
}

/// Replaces the table marked `kind:dataset` in the one document of `docs` that holds its
/// markers. Errors name the documents when none or several hold them.
fn replace_in_docs(docs: &mut [Doc], kind: &str, dataset: &str, body: &str) -> Result<()> {
    let open = format!("<!-- {kind}:{dataset} -->\n");
    let holders: Vec<usize> = (0..docs.len())
        .filter(|&i| docs[i].text.contains(&open))
        .collect();
    match holders[..] {
        [i] => {
            docs[i].text = replace_marked(&docs[i].text, kind, dataset, body, &docs[i].path)?;
            Ok(())
        }
        [] => bail!(
            "{}: no lines `{}` and `<!-- /{kind}:{dataset} -->` to hold the table of \
             results/{dataset}",
            doc_list(docs.iter().map(|d| d.path.as_path())),
            open.trim_end()
        ),
        _ => bail!(
            "{}: each holds `{}`; the table of results/{dataset} belongs in one",
            doc_list(holders.iter().map(|&i| docs[i].path.as_path())),
            open.trim_end()
        ),
    }
}

/// `doc` with the table marked `kind:dataset` (`results` or `audits`) replaced by `body`.
fn replace_marked(
    doc: &str,
    kind: &str,
    dataset: &str,
    body: &str,
    doc_path: &Path,
) -> Result<String> {
    let (open, close) = (
        format!("<!-- {kind}:{dataset} -->\n"),
        format!("<!-- /{kind}:{dataset} -->"),
    );
    let (Some(a), Some(b)) = (doc.find(&open), doc.find(&close)) else {
        bail!(
            "{}: no lines `{}` and `{close}` to hold the table of results/{dataset}",
            doc_path.display(),
            open.trim_end()
        );
    };
    ensure!(
        a < b,
        "{}: {close} comes before its opening line",
        doc_path.display()
    );
    Ok(format!("{}{open}{body}{}", &doc[..a], &doc[b..]))
}

/// The SVG of a size study (see [`crate::size_plot`]) whose `plot.toml` (at `plot_toml`) says
/// `config`: the study's `METHOD-nN-epsE` settings, and the `METHOD-epsE` settings of the folder
/// `config.full` (`full`, as the caller read it) at the whole set's size.
fn study_plot(
    plot_toml: &Path,
    config: &PlotConfig,
    settings: &BTreeMap<String, Setting>,
    full: &BTreeMap<String, Setting>,
) -> Result<String> {
    let mut points = Points::new();
    for (name, s) in settings {
        let (line, n) = parse_study_cell(name).with_context(|| {
            format!(
                "{}: the study's setting {name:?} is not <method>-n<N>-eps<E>",
                plot_toml.display()
            )
        })?;
        ensure!(
            n != config.full_examples,
            "{}: full_examples = {n} is also the N of the study's setting {name}: the whole-set \
             point would hide it",
            plot_toml.display()
        );
        points
            .entry(line)
            .or_default()
            .insert(n, s.accuracies.clone());
    }
    for (name, s) in full {
        if let Some(line) = parse_full_cell(name).filter(|l| points.contains_key(l)) {
            points
                .entry(line)
                .or_default()
                .insert(config.full_examples, s.accuracies.clone());
        }
    }
    Ok(svg(&config.title, &points))
}

/// Runs `dpsynth results`.
pub fn run(a: ResultsArgs) -> Result<()> {
    ensure!(!a.docs.is_empty(), "--doc: name at least one document");
    let old = a
        .docs
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Ok(Doc {
                path: path.clone(),
                text,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let first = &a.docs[0];
    let mut datasets: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("{}: cannot list", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    datasets.sort();
    let mut new: Vec<Doc> = old
        .iter()
        .map(|d| Doc {
            path: d.path.clone(),
            text: d.text.clone(),
        })
        .collect();
    // every dataset's settings, so a study's plot finds its whole-set cells without a second read
    let mut read: BTreeMap<String, BTreeMap<String, Setting>> = BTreeMap::new();
    let mut studies = Vec::new();
    // a plot beside the document named after a folder that is no size study is left over
    let mut strays = Vec::new();
    for dir in &datasets {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let plot_toml = dir.join("plot.toml");
        let study = plot_toml.is_file();
        let Dataset {
            settings,
            audits,
            unrun,
        } = read_dataset(dir, study)?;
        replace_in_docs(&mut new, "results", &name, &table(&settings, &unrun))?;
        if !audits.is_empty() {
            replace_in_docs(&mut new, "audits", &name, &audit_table(&audits))?;
        }
        let svg_path = first.with_file_name(format!("{name}.svg"));
        if study {
            studies.push((
                name.clone(),
                plot_toml.clone(),
                PlotConfig::read(&plot_toml)?,
            ));
        } else if svg_path.exists() {
            strays.push(svg_path);
        }
        read.insert(name, settings);
    }
    let mut plots = Vec::new();
    for (name, plot_toml, config) in &studies {
        let Some(full) = read.get(&config.full) else {
            bail!(
                "{}: full = {:?}: no such folder in {} (the folder of the whole-set cells)",
                plot_toml.display(),
                config.full,
                a.dir.display()
            );
        };
        let svg = study_plot(plot_toml, config, &read[name], full)?;
        plots.push((first.with_file_name(format!("{name}.svg")), svg));
    }
    if a.check {
        for (n, o) in new.iter().zip(&old) {
            ensure!(
                n.text == o.text,
                "{}: its results tables differ from the reports under {}: run \
                 `scripts/results` and commit the result",
                o.path.display(),
                a.dir.display()
            );
        }
        for (path, svg) in &plots {
            ensure!(
                std::fs::read_to_string(path).ok().as_deref() == Some(svg.as_str()),
                "{}: missing or differs from the reports under {}: run `scripts/results` and \
                 commit the result",
                path.display(),
                a.dir.display()
            );
        }
        if let Some(path) = strays.first() {
            bail!(
                "{}: a plot of {}, which has no plot.toml (is no size study): delete the plot or \
                 restore the plot.toml",
                path.display(),
                a.dir.join(path.file_stem().unwrap_or_default()).display()
            );
        }
        println!(
            "{}: tables agree with the reports ({} dataset folders)",
            doc_list(a.docs.iter().map(PathBuf::as_path)),
            datasets.len()
        );
    } else {
        for path in &strays {
            eprintln!(
                "warning: {}: a plot of {}, which has no plot.toml: `--check` fails until it is \
                 deleted",
                path.display(),
                a.dir.join(path.file_stem().unwrap_or_default()).display()
            );
        }
        for (path, svg) in &plots {
            dpsynth::fsutil::write_atomic(path, svg.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        for (n, o) in new.iter().zip(&old) {
            if n.text != o.text {
                dpsynth::fsutil::write_atomic(&n.path, n.text.as_bytes())
                    .with_context(|| format!("writing {}", n.path.display()))?;
                println!("{}: tables rewritten from the reports", n.path.display());
            } else {
                println!(
                    "{}: tables already agree with the reports",
                    n.path.display()
                );
            }
        }
    }
    Ok(())
}

/// `paths`, comma-separated.
fn doc_list<'a>(paths: impl Iterator<Item = &'a Path>) -> String {
    paths
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(dir: &Path, name: &str, accuracy: f64) {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let report = serde_json::json!({"command": "run", "mode": "loda", "test": "mnist:test",
            "epsilon_spent": 9.99, "test_accuracy": accuracy});
        std::fs::write(dir.join(name).join("report.json"), report.to_string()).unwrap();
    }

    #[test]
    fn repeats_are_averaged_and_the_check_catches_drift() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results/mnist");
        cell(&results, "loda-eps10-s1", 0.90);
        cell(&results, "loda-eps10-s2", 0.92);
        cell(&results, "loda-eps10-s3", 0.94);
        cell(&results, "loda-lr1e-2", 0.80);
        let doc = tmp.path().join("R.md");
        std::fs::write(
            &doc,
            "# R\n<!-- results:mnist -->\nold\n<!-- /results:mnist -->\nend\n",
        )
        .unwrap();
        let args = |check| ResultsArgs {
            dir: tmp.path().join("results"),
            docs: vec![doc.clone()],
            check,
        };
        assert!(
            run(args(true)).is_err(),
            "the old table must fail the check"
        );
        run(args(false)).unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        // below it, only the settings it does not show
        assert!(
            text.contains("Other settings:\n\n| setting |")
                && text.contains("| loda-lr1e-2 | `mnist:test` | 9.99 | 1 | 80.00% |")
                && !text.contains("| loda-eps10 | `"),
            "{text}"
        );
        assert!(text.ends_with("<!-- /results:mnist -->\nend\n"), "{text}");
        // the headline: one row per method, one column per epsilon
        assert!(
            text.contains("| method | ε = 10 |\n|---|---|\n| loda | 92.00% ± 2.00 (3 runs) |"),
            "{text}"
        );
        run(args(true)).unwrap();
        cell(&results, "loda-eps10-s3", 0.95);
        let err = run(args(true)).unwrap_err().to_string();
        assert!(err.contains("differ from the reports"), "{err}");
    }

    /// A headline cell with a config and no report is a "not run" entry, in a row and a column of
    /// its own where no other cell has them; a setting outside the headline is left out.
    #[test]
    fn planned_headline_cells_show_as_not_run() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results/cifar10");
        cell(&results, "loda-lr1e-2-eps10-s1", 0.30);
        for planned in ["loda-eps10-s1", "loda-eps1-s1", "base-alone"] {
            std::fs::create_dir_all(results.join(planned)).unwrap();
            std::fs::write(results.join(planned).join("config.toml"), "").unwrap();
        }
        // a folder with neither file is not a cell
        std::fs::create_dir_all(results.join("full-eps10-s1")).unwrap();
        let doc = tmp.path().join("R.md");
        std::fs::write(
            &doc,
            "<!-- results:cifar10 -->\n<!-- /results:cifar10 -->\n",
        )
        .unwrap();
        run(ResultsArgs {
            dir: tmp.path().join("results"),
            docs: vec![doc.clone()],
            check: false,
        })
        .unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        assert!(
            text.contains(
                "| method | ε = 1 | ε = 10 |\n|---|---|---|\n| loda | not run | not run |\n\
                 | loda-lr1e-2 | not run | 30.00% (1 run) |\n<!--"
            ),
            "{text}"
        );
    }

    /// Each table goes to the one document that holds its markers; none or two is an error
    /// naming the documents.
    #[test]
    fn each_table_lives_in_exactly_one_document() {
        let tmp = tempfile::tempdir().unwrap();
        cell(&tmp.path().join("results/mnist"), "loda-eps10-s1", 0.90);
        cell(&tmp.path().join("results/stand-in"), "loda-lr1e-2", 0.80);
        let (a, b) = (tmp.path().join("A.md"), tmp.path().join("B.md"));
        let marks = |d: &str| format!("<!-- results:{d} -->\n<!-- /results:{d} -->\n");
        let args = |check| ResultsArgs {
            dir: tmp.path().join("results"),
            docs: vec![a.clone(), b.clone()],
            check,
        };
        std::fs::write(&a, marks("mnist")).unwrap();
        std::fs::write(&b, "# B\n").unwrap();
        let err = run(args(false)).unwrap_err().to_string();
        assert!(
            err.contains("A.md, ") && err.contains("B.md") && err.contains("results:stand-in"),
            "{err}"
        );
        std::fs::write(&b, marks("stand-in") + &marks("mnist")).unwrap();
        let err = run(args(false)).unwrap_err().to_string();
        assert!(
            err.contains("each holds") && err.contains("results:mnist"),
            "{err}"
        );
        std::fs::write(&b, marks("stand-in")).unwrap();
        run(args(false)).unwrap();
        run(args(true)).unwrap();
        let (ta, tb) = (
            std::fs::read_to_string(&a).unwrap(),
            std::fs::read_to_string(&b).unwrap(),
        );
        assert!(
            ta.contains("| loda | 90.00% (1 run) |") && !ta.contains("loda-lr1e-2"),
            "{ta}"
        );
        assert!(
            tb.contains("| loda-lr1e-2 |") && !tb.contains("| loda |"),
            "{tb}"
        );
        std::fs::write(&b, marks("stand-in")).unwrap();
        let err = run(args(true)).unwrap_err().to_string();
        assert!(err.contains("B.md") && err.contains("differ"), "{err}");
    }

    #[test]
    fn settings_are_ordered_by_the_value_of_their_numbers() {
        let mut names = vec![
            "loda-n20000",
            "loda-n5000",
            "classifier-n1000",
            "loda-n1000",
            "c-lr1e-2",
            "c-lr3e-3",
            "c-lr0.5",
            "c-lr2",
            "c-lr0.03",
            "loda-eps10-lr3e-2-guidance2",
            "loda-eps10-lr3e-2",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "c-lr3e-3",
                "c-lr1e-2",
                "c-lr0.03",
                "c-lr0.5",
                "c-lr2",
                "classifier-n1000",
                "loda-eps10-lr3e-2",
                "loda-eps10-lr3e-2-guidance2",
                "loda-n1000",
                "loda-n5000",
                "loda-n20000",
            ]
        );
    }

    #[test]
    fn a_missing_marker_is_named() {
        let err = replace_marked("# R\n", "results", "cifar10", "", Path::new("R.md"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("R.md") && err.contains("<!-- results:cifar10 -->"),
            "{err}"
        );
        assert_eq!(
            table(&BTreeMap::new(), &BTreeSet::new()),
            "No cell has run yet.\n"
        );
        assert_eq!(setting_name("loda-eps10-s12"), "loda-eps10");
        assert_eq!(
            setting_name("base-alone-fonts-optdigits"),
            "base-alone-fonts-optdigits"
        );
    }

    /// A size study's plot takes its cells and the full set's, and `--check` catches a stale one.
    #[test]
    fn a_size_study_draws_its_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        cell(&results.join("mnist"), "loda-eps10-s1", 0.95);
        cell(&results.join("mnist"), "full-eps10-s1", 0.90);
        cell(&results.join("mnist-size"), "loda-n1000-eps10-s1", 0.80);
        std::fs::write(
            results.join("mnist-size/plot.toml"),
            "full = \"mnist\"\nfull_examples = 60000\ntitle = \"T\"\n",
        )
        .unwrap();
        let doc = size_study_doc(tmp.path());
        let args = |check| ResultsArgs {
            dir: results.clone(),
            docs: vec![doc.clone()],
            check,
        };
        let err = run(args(true)).unwrap_err().to_string();
        assert!(err.contains("R.md"), "{err}");
        run(args(false)).unwrap();
        run(args(true)).unwrap();
        let svg = std::fs::read_to_string(tmp.path().join("docs/mnist-size.svg")).unwrap();
        // loda at 1,000 and at 60,000; full has no study cell, so no line
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        assert!(svg.contains(">60,000<") && !svg.contains("full ε"), "{svg}");
        std::fs::write(tmp.path().join("docs/mnist-size.svg"), "stale").unwrap();
        let err = run(args(true)).unwrap_err().to_string();
        assert!(err.contains("mnist-size.svg"), "{err}");
    }

    /// `docs/R.md` under `root` with empty `mnist` and `mnist-size` tables.
    fn size_study_doc(root: &Path) -> PathBuf {
        let doc = root.join("docs/R.md");
        std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
        std::fs::write(
            &doc,
            "<!-- results:mnist -->\n<!-- /results:mnist -->\n\
             <!-- results:mnist-size -->\n<!-- /results:mnist-size -->\n",
        )
        .unwrap();
        doc
    }

    /// A study whose input cannot make a sound plot fails, naming the file and what is wrong.
    #[test]
    fn a_bad_size_study_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        cell(&results.join("mnist"), "loda-eps10-s1", 0.95);
        cell(&results.join("mnist-size"), "loda-n1000-eps10-s1", 0.80);
        let plot_toml = results.join("mnist-size/plot.toml");
        let plot = |full: &str, n: u64| {
            std::fs::write(
                &plot_toml,
                format!("full = \"{full}\"\nfull_examples = {n}\ntitle = \"T\"\n"),
            )
            .unwrap()
        };
        let doc = size_study_doc(tmp.path());
        let run = |check| {
            run(ResultsArgs {
                dir: results.clone(),
                docs: vec![doc.clone()],
                check,
            })
            .map_err(|e| format!("{e:#}"))
        };
        plot("mnist", 60000);
        run(false).unwrap();
        run(true).unwrap();
        // the whole set's size is a study N: its point would overwrite the study's
        plot("mnist", 1000);
        let err = run(true).unwrap_err();
        assert!(
            err.contains("plot.toml") && err.contains("full_examples = 1000"),
            "{err}"
        );
        // the whole-set folder is missing, or a path out of the results folder
        plot("cifar10", 60000);
        let err = run(true).unwrap_err();
        assert!(
            err.contains("plot.toml") && err.contains("full = \"cifar10\""),
            "{err}"
        );
        plot("../mnist", 60000);
        let err = run(true).unwrap_err();
        assert!(
            err.contains("plot.toml") && err.contains("full = \"../mnist\""),
            "{err}"
        );
        // a cell folder (run or not) that would be in the table but off the plot
        plot("mnist", 60000);
        for bad in ["loda-n1000-eps0.5-s1", "loda-n0-eps10-s1", "loda-eps10-s1"] {
            std::fs::create_dir_all(results.join("mnist-size").join(bad)).unwrap();
            let err = run(true).unwrap_err();
            assert!(
                err.contains(bad) && err.contains("<method>-n<N>-eps<E>-s<K>"),
                "{err}"
            );
            std::fs::remove_dir(results.join("mnist-size").join(bad)).unwrap();
        }
        run(true).unwrap();
        // a plot named after a folder without plot.toml is left over
        std::fs::write(tmp.path().join("docs/mnist.svg"), "<svg/>").unwrap();
        let err = run(true).unwrap_err();
        assert!(
            err.contains("mnist.svg") && err.contains("no plot.toml"),
            "{err}"
        );
    }

    /// An audit report makes a row of the audit table, not of the accuracy tables.
    #[test]
    fn audit_cells_make_the_audit_table() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results/mnist");
        cell(&results, "loda-eps10-s1", 0.90);
        std::fs::create_dir_all(results.join("audit-sigma0")).unwrap();
        let bound = |eps: f64| {
            serde_json::json!({"canaries": 1000, "epsilon_lower_bound": eps,
                "best_guess": {"correct": 250, "guesses": 250}})
        };
        let report = serde_json::json!({"command": "audit", "accountant_epsilon": null,
            "noise_multiplier": 0.0, "steps": 60,
            "input_canaries": {"result": bound(0.0)},
            "gradient_canaries": {"result": bound(3.69)}});
        std::fs::write(results.join("audit-sigma0/report.json"), report.to_string()).unwrap();
        let doc = tmp.path().join("R.md");
        let marks = "<!-- results:mnist -->\n<!-- /results:mnist -->\n";
        std::fs::write(&doc, marks).unwrap();
        let args = || ResultsArgs {
            dir: tmp.path().join("results"),
            docs: vec![doc.clone()],
            check: false,
        };
        let err = run(args()).unwrap_err().to_string();
        assert!(err.contains("<!-- audits:mnist -->"), "{err}");
        let marks = format!("{marks}<!-- audits:mnist -->\n<!-- /audits:mnist -->\n");
        std::fs::write(&doc, marks).unwrap();
        run(args()).unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        assert!(
            text.contains("| audit-sigma0 | ∞ (no noise) | 0.000 | 60 | 0.00 (250 of 250 right, 1000 canaries) | 3.69 (250 of 250 right, 1000 canaries) |"),
            "{text}"
        );
        assert!(
            !text.contains("| audit-sigma0 | `"),
            "not an accuracy row: {text}"
        );
    }
}
