//! `dpsynth data fetch quickdraw6`: the doodles from the team's shared archive or a local copy.

use std::path::Path;

use super::{fetch_shared_archive, Outcome, SharedArchive};
use crate::data::error::Result;
use crate::data::quickdraw::{read, NAME};

const ARCHIVE: SharedArchive<'static> = SharedArchive {
    name: NAME,
    file: "quickdraw6-idx.tar.gz",
    sha256: "cfd4dfe82ed1dcd949443ba1be12f3b110b2f3afc4257edaeadf0a9cfd8f6b89",
    root: "quickdraw6",
};

/// Fetches the doodles from `source` or the shared archive (sha256-checked) into
/// `data_dir/quickdraw6`.
pub fn fetch(data_dir: &Path, source: Option<&Path>) -> Result<Outcome> {
    fetch_shared_archive(&ARCHIVE, data_dir, source, |dir| read(dir).map(|_| ()))
}
