//! `dpsynth data fetch handwriting-fonts`: handwriting-style font families under the SIL Open
//! Font License, from npm's `@fontsource/*` packages (`npm pack`, never `npm install`), for the
//! `font-digits` renders. The packages ship web fonts; the WOFF 1.0 files of the Latin subset,
//! every weight in normal style, are decoded to TrueType ([`super::woff`]).
//!
//! Each family lands in `DATA/handwriting-fonts/<family>/` with the package's LICENSE, and
//! `LICENSES.md` names every family's package, version, licence and attribution. A family whose
//! package cannot be had, or whose licence is not OFL-1.1, is reported and skipped; the fetch
//! fails only when every family does.

use std::path::Path;

use super::woff;
use crate::data::acquire::{commit_collection, npm_pack, staging, untar_prefix, Outcome};
use crate::data::error::{DataError, Result};

/// The dataset's name in `data fetch`.
pub const NAME: &str = "handwriting-fonts";

/// The licence every family must carry (`license` in the package's package.json).
const LICENCE: &str = "OFL-1.1";

/// Fontsource families in Google Fonts' handwriting category, under the OFL, whose digits look
/// handwritten (Homemade Apple, Rock Salt, Coming Soon, Just Another Hand and Schoolbell are
/// left out: their packages are Apache-2.0).
pub const FAMILIES: [&str; 35] = [
    "caveat",
    "kalam",
    "indie-flower",
    "patrick-hand",
    "shadows-into-light",
    "shadows-into-light-two",
    "gloria-hallelujah",
    "reenie-beanie",
    "nanum-pen-script",
    "sue-ellen-francisco",
    "covered-by-your-grace",
    "architects-daughter",
    "amatic-sc",
    "handlee",
    "nothing-you-could-do",
    "waiting-for-the-sunrise",
    "la-belle-aurore",
    "gochi-hand",
    "neucha",
    "short-stack",
    "mali",
    "itim",
    "pangolin",
    "kristi",
    "dawning-of-a-new-day",
    "zeyada",
    "over-the-rainbow",
    "loved-by-the-king",
    "annie-use-your-telescope",
    "give-you-glory",
    "the-girl-next-door",
    "cedarville-cursive",
    "swanky-and-moo-moo",
    "mynerve",
    "caveat-brush",
];

/// One fetched family, for LICENSES.md.
struct Family {
    name: String,
    version: String,
    fonts: usize,
    attribution: String,
}

/// Fetches every family into `data_dir/handwriting-fonts` (see the module docs).
pub fn fetch(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join(NAME);
    if target.exists() {
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let work = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for family in FAMILIES {
        match fetch_family(family, work.path(), stage.path()) {
            Ok(f) => done.push(f),
            Err(e) => {
                // a half-filled folder must not look like a family
                let _ = std::fs::remove_dir_all(stage.path().join(family));
                failed.push(format!("{family}: {e}"));
            }
        }
    }
    let licences = licences_md(&done, &failed);
    commit_collection(NAME, stage, &target, done.len(), licences, failed)
}

fn fetch_family(family: &str, work: &Path, dest: &Path) -> Result<Family> {
    let package = format!("@fontsource/{family}");
    let dir = work.join(family);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let tgz = npm_pack(NAME, &package, &dir)?;
    untar_prefix(&tgz, "package", &dir.join("package"))?;
    let meta_path = dir.join("package/package.json");
    let meta: serde_json::Value = std::fs::read(&meta_path)
        .map_err(|e| DataError::io(&meta_path, e))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| DataError::format(&meta_path, format!("invalid JSON: {e}")))
        })?;
    let licence = meta["license"].as_str().unwrap_or("none");
    if licence != LICENCE {
        return Err(DataError::fetch(
            NAME,
            format!("{package} is licensed {licence}, not {LICENCE}"),
        ));
    }
    let version = meta["version"].as_str().unwrap_or("unknown").to_string();
    let out = dest.join(family);
    std::fs::create_dir_all(&out).map_err(|e| DataError::io(&out, e))?;
    let files = dir.join("package/files");
    let mut fonts = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&files)
        .map_err(|e| DataError::io(&files, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let latin = format!("{family}-latin-");
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with(&latin) && name.ends_with("-normal.woff")) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let ttf = woff::to_sfnt(&path, &bytes)?;
        let to = out.join(name.replace(".woff", ".ttf"));
        std::fs::write(&to, ttf).map_err(|e| DataError::io(&to, e))?;
        fonts += 1;
    }
    if fonts == 0 {
        return Err(DataError::fetch(
            NAME,
            format!("{package} has no Latin normal-style WOFF file"),
        ));
    }
    let licence_file = dir.join("package/LICENSE");
    if licence_file.is_file() {
        std::fs::copy(&licence_file, out.join("LICENSE"))
            .map_err(|e| DataError::io(&licence_file, e))?;
    }
    let metadata = dir.join("package/metadata.json");
    let attribution = std::fs::read(&metadata)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| m["license"]["attribution"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(Family {
        name: package,
        version,
        fonts,
        attribution,
    })
}

fn licences_md(done: &[Family], failed: &[String]) -> String {
    let mut s = String::from(
        "# Handwriting fonts and their licences\n\n\
         Fetched by `dpsynth data fetch handwriting-fonts` from npm (`npm pack`); every family \
         is under the SIL Open Font License 1.1, whose text is the LICENSE file in its folder. \
         The .ttf files are the packages' Latin WOFF files decoded to TrueType.\n\n\
         | package | version | fonts | attribution |\n|---|---|---|---|\n",
    );
    for f in done {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            f.name, f.version, f.fonts, f.attribution
        );
    }
    if !failed.is_empty() {
        s += "\nFamilies skipped:\n\n";
        for f in failed {
            s += &format!("- {f}\n");
        }
    }
    s
}
