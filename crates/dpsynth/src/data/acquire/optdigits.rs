//! `dpsynth data fetch optdigits`: the UCI digits CSV out of the scikit-learn wheel.

use std::path::Path;

use super::{check_sha256, commit_staging, pip_wheel, staging, Outcome};
use crate::data::error::{DataError, Result};
use crate::data::optdigits::{CSV, CSV_SHA256, LICENCE, NAME};

/// Fetches the CSV from the scikit-learn wheel (`pip download`) into `data_dir/optdigits`.
pub fn fetch(data_dir: &Path) -> Result<Outcome> {
    let target = data_dir.join(NAME);
    if target.exists() {
        check_sha256(&target.join(CSV), CSV_SHA256)?;
        return Ok(Outcome::AlreadyPresent(target));
    }
    let stage = staging(&target)?;
    let work = tempfile::tempdir().map_err(|e| DataError::io(std::env::temp_dir(), e))?;
    let (root, version) = pip_wheel(NAME, "scikit-learn", work.path())?;
    let gz = root.join("sklearn/datasets/data/digits.csv.gz");
    let bytes = crate::data::idx::read_maybe_gz(&gz)?;
    let csv = stage.path().join(CSV);
    std::fs::write(&csv, &bytes).map_err(|e| DataError::io(&csv, e))?;
    check_sha256(&csv, CSV_SHA256)?;
    let source = stage.path().join("SOURCE.md");
    let note = format!(
        "digits.csv: sklearn/datasets/data/digits.csv.gz of the scikit-learn {version} wheel \
         (PyPI), uncompressed.\n\nLicence: {LICENCE}.\n"
    );
    std::fs::write(&source, note).map_err(|e| DataError::io(&source, e))?;
    commit_staging(stage, &target)
}
