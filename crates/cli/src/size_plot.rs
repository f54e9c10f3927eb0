//! The accuracy-against-private-set-size plot of a size study, as SVG.
//!
//! A size study is a results folder `results/<study>/` whose cells are named
//! `METHOD-nN-epsE` (repeats `-sK`): METHOD run on a class-balanced subset of N private images at
//! ε = E. Its `plot.toml` names the folder whose `METHOD-epsE` cells ran on the whole private set,
//! and that set's size, so the largest point comes from the headline cells instead of a copy:
//!
//! ```toml
//! full = "mnist"          # results/mnist/loda-eps10-s1, ... are the points at N = full_examples
//! full_examples = 60000
//! title = "MNIST: downstream accuracy against private set size"
//! ```
//!
//! The plot has one line per method and ε (colour by method, solid for the method's largest ε and
//! dashed for the others), a point at each N with the mean over repeats and a bar of ± one standard
//! deviation, and a logarithmic N axis. The SVG text is a function of the reports only, so
//! `dpsynth results --check` can tell when a committed plot is stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

/// `plot.toml` of a size study.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotConfig {
    /// Results folder (a sibling of the study's) whose `METHOD-epsE` cells used the whole set.
    pub full: String,
    /// Size of the whole private set.
    pub full_examples: u64,
    /// Title over the plot.
    pub title: String,
}

impl PlotConfig {
    /// Reads `plot.toml`, naming the file in every error: `full` must be a plain folder name (a
    /// sibling of the study's, never a path out of the results folder) and `full_examples` more
    /// than 0 (the N axis is logarithmic).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let config: Self = toml::from_str(&text)
            .with_context(|| format!("{}: not a size-study plot", path.display()))?;
        ensure!(
            config.full_examples > 0,
            "{}: full_examples = 0: it must be the size of the whole private set, more than 0",
            path.display()
        );
        ensure!(
            !config.full.is_empty()
                && !config.full.contains(['/', '\\'])
                && config.full != "."
                && config.full != "..",
            "{}: full = {:?}: it must be the name of a folder beside the study's (under the \
             results folder), not a path",
            path.display(),
            config.full
        );
        Ok(config)
    }
}

/// One line of the plot: a method at one ε.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    /// Method, as in the cell names (`loda`, `full`, `classifier`).
    pub method: String,
    /// ε, as in the cell names.
    pub epsilon: u64,
}

/// Accuracies (fractions) of the repeats of one point.
pub type Points = BTreeMap<Line, BTreeMap<u64, Vec<f64>>>;

/// Splits `METHOD-nN-epsE` into its line and N; `None` for other names, and for N = 0 (no
/// point on a logarithmic axis).
pub fn parse_study_cell(setting: &str) -> Option<(Line, u64)> {
    let (rest, eps) = setting.rsplit_once("-eps")?;
    let (method, n) = rest.rsplit_once("-n")?;
    let n: u64 = n.parse().ok().filter(|&n| n > 0)?;
    Some((
        Line {
            method: method.to_string(),
            epsilon: eps.parse().ok()?,
        },
        n,
    ))
}

/// Splits `METHOD-epsE` into its line; `None` for other names.
pub fn parse_full_cell(setting: &str) -> Option<Line> {
    let (method, eps) = setting.rsplit_once("-eps")?;
    Some(Line {
        method: method.to_string(),
        epsilon: eps.parse().ok()?,
    })
}

/// Mean and sample standard deviation (0 for one value).
pub(crate) fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The SVG of `points` under `title`; an empty study gives a plot that says so.
pub fn svg(title: &str, points: &Points) -> String {
    let sizes: Vec<u64> = {
        let mut s: Vec<u64> = points.values().flat_map(|p| p.keys().copied()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let accs: Vec<f64> = points
        .values()
        .flat_map(|p| p.values())
        .map(|v| mean_sd(v))
        .flat_map(|(m, s)| [m - s, m + s])
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        WIDTH / 2.0,
        escape(title)
    );
    if sizes.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no cell of this study has a report \
             yet</text>\n</svg>",
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return out;
    }
    // y range: whole percent steps around the data, at most 100%
    let lo = accs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = accs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let y_lo = ((lo * 100.0).floor() - 1.0).max(0.0);
    let y_hi = ((hi * 100.0).ceil() + 1.0).min(100.0).max(y_lo + 1.0);
    let (x_lo, x_hi) = (
        (sizes[0] as f64).log10() - 0.15,
        (sizes[sizes.len() - 1] as f64).log10() + 0.15,
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |n: u64| LEFT + ((n as f64).log10() - x_lo) / (x_hi - x_lo) * plot_w;
    let y = |acc: f64| TOP + (y_hi - 100.0 * acc) / (y_hi - y_lo) * plot_h;
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" \
         stroke=\"#444\"/>"
    );
    for &n in &sizes {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(n),
            TOP + plot_h + 18.0,
            thousands(n)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">private training images \
         (log scale)</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let step = ((y_hi - y_lo) / 6.0).ceil().max(1.0);
    let mut t = y_lo;
    while t <= y_hi + 1e-9 {
        let yy = y(t / 100.0);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t:.0}%</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
        t += step;
    }
    let methods: Vec<&str> = {
        let mut m: Vec<&str> = points.keys().map(|l| l.method.as_str()).collect();
        m.dedup();
        m
    };
    // each method's solid line is its own largest ε, so a method run only at smaller ε has one
    let mut top_eps: BTreeMap<&str, u64> = BTreeMap::new();
    for l in points.keys() {
        let e = top_eps.entry(l.method.as_str()).or_insert(l.epsilon);
        *e = (*e).max(l.epsilon);
    }
    for (i, (line, by_n)) in points.iter().enumerate() {
        let colour =
            COLOURS[methods.iter().position(|m| *m == line.method).unwrap_or(0) % COLOURS.len()];
        let dash = if top_eps.get(line.method.as_str()) == Some(&line.epsilon) {
            ""
        } else {
            " stroke-dasharray=\"6 4\""
        };
        let path: Vec<String> = by_n
            .iter()
            .map(|(&n, v)| format!("{:.1},{:.1}", x(n), y(mean_sd(v).0)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
            path.join(" ")
        );
        for (&n, v) in by_n {
            let (m, s) = mean_sd(v);
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                x(n),
                y(m)
            );
            if s > 0.0 {
                // a bar reaching past 100% (or below 0%) stops at the plot's edge
                let bar = |acc: f64| y(acc).clamp(TOP, TOP + plot_h);
                let _ = writeln!(
                    out,
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" \
                     stroke=\"{colour}\"/>",
                    x(n),
                    bar(m + s),
                    bar(m - s)
                );
            }
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            out,
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} ε = {}</text>",
            lx + 28.0,
            lx + 34.0,
            ly + 4.0,
            escape(&line.method),
            line.epsilon
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `60000` as `60,000`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Text safe inside an SVG element.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_names_parse_into_lines_and_sizes() {
        let line = |m: &str, e| Line {
            method: m.to_string(),
            epsilon: e,
        };
        assert_eq!(
            parse_study_cell("loda-n1000-eps10"),
            Some((line("loda", 10), 1000))
        );
        assert_eq!(
            parse_study_cell("dp-sgd-n5000-eps1"),
            Some((line("dp-sgd", 1), 5000))
        );
        assert_eq!(parse_study_cell("loda-eps10"), None);
        assert_eq!(parse_study_cell("loda-nabc-eps10"), None);
        assert_eq!(
            parse_study_cell("loda-n0-eps10"),
            None,
            "no point at log10(0)"
        );
        assert_eq!(parse_study_cell("loda-n1000-eps0.5"), None);
        assert_eq!(parse_full_cell("full-eps1"), Some(line("full", 1)));
        assert_eq!(parse_full_cell("base-alone"), None);
    }

    #[test]
    fn points_land_where_their_values_say() {
        let mut points = Points::new();
        let line = Line {
            method: "loda".into(),
            epsilon: 10,
        };
        points
            .entry(line.clone())
            .or_default()
            .insert(1000, vec![0.90, 0.92]);
        points.entry(line).or_default().insert(60000, vec![0.95]);
        let s = svg("t & <u>", &points);
        assert!(s.contains("t &amp; &lt;u&gt;"), "{s}");
        assert!(s.contains(">60,000<") && s.contains(">1,000<"), "{s}");
        // one error bar (two repeats at 1,000), two points, one legend entry
        assert_eq!(error_bars(&s).len(), 1, "{s}");
        assert_eq!(s.matches("<circle").count(), 2, "{s}");
        assert_eq!(s.matches("<polyline").count(), 1, "{s}");
        // the higher mean is drawn higher (smaller y)
        let ys: Vec<f64> = s
            .match_indices("<circle")
            .map(|(i, _)| {
                let cy = &s[i..][s[i..].find("cy=\"").unwrap() + 4..];
                cy[..cy.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        assert!(ys[1] < ys[0], "{ys:?}");
        assert!(svg("empty", &Points::new()).contains("no cell of this study"));
    }

    /// The value of attribute `name` in the element text `e`.
    fn attr(e: &str, name: &str) -> f64 {
        let v = &e[e.find(&format!(" {name}=\"")).unwrap() + name.len() + 3..];
        v[..v.find('"').unwrap()].parse().unwrap()
    }

    /// The error bars of `s` as (y1, y2): its vertical lines (grid and legend lines are
    /// horizontal).
    fn error_bars(s: &str) -> Vec<(f64, f64)> {
        s.split("<line")
            .skip(1)
            .map(|e| &e[..e.find("/>").unwrap()])
            .filter(|e| attr(e, "x1") == attr(e, "x2"))
            .map(|e| (attr(e, "y1"), attr(e, "y2")))
            .collect()
    }

    #[test]
    fn bars_stay_inside_and_each_method_has_a_solid_line() {
        let mut points = Points::new();
        let line = |m: &str, e| Line {
            method: m.to_string(),
            epsilon: e,
        };
        // mean 95%, sd 7.1 points: mean + sd is past 100%
        points
            .entry(line("loda", 10))
            .or_default()
            .insert(1000, vec![0.90, 1.0]);
        points
            .entry(line("loda", 1))
            .or_default()
            .insert(1000, vec![0.80]);
        // classifier only at ε = 1: its own largest ε, so solid
        points
            .entry(line("classifier", 1))
            .or_default()
            .insert(1000, vec![0.70]);
        let s = svg("t", &points);
        let bars = error_bars(&s);
        assert_eq!(bars.len(), 1, "{s}");
        let (top, bottom) = (TOP, HEIGHT - BOTTOM);
        for (y1, y2) in bars {
            assert!(
                (top..=bottom).contains(&y1) && (top..=bottom).contains(&y2),
                "{s}"
            );
        }
        let dashed: Vec<bool> = s
            .split("<polyline")
            .skip(1)
            .map(|e| e[..e.find("/>").unwrap()].contains("stroke-dasharray"))
            .collect();
        // lines in order: classifier ε = 1, loda ε = 1, loda ε = 10
        assert_eq!(dashed, [false, true, false], "{s}");
    }

    #[test]
    fn a_bad_plot_toml_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("plot.toml");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            PlotConfig::read(&path)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        read("full = \"mnist\"\nfull_examples = 60000\ntitle = \"T\"\n").unwrap();
        let err = read("full = \"mnist\"\nfull_examples = 0\ntitle = \"T\"\n").unwrap_err();
        assert!(
            err.contains("plot.toml") && err.contains("full_examples"),
            "{err}"
        );
        for full in ["../x", "a/b", "..", ""] {
            let err = read(&format!(
                "full = \"{full}\"\nfull_examples = 60000\ntitle = \"T\"\n"
            ))
            .unwrap_err();
            assert!(err.contains("plot.toml") && err.contains("full ="), "{err}");
        }
    }
}
