//! File-system helpers: atomic writes, shared by every writer, and files' sha256.
//!
//! A file is written to a temp file in the same folder, synced, then renamed over the target, so
//! a crash leaves either the old file or the new one, never a partial file. Temp files are created
//! readable by all (0644) like ordinary files, since models and reports are shared.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

/// The folder `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temp file beside `path` (same folder, so the final rename is atomic), ending in `suffix`.
/// The folder is created if needed.
pub fn temp_beside(path: &Path, suffix: &str) -> std::io::Result<NamedTempFile> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)?;
    let mut b = tempfile::Builder::new();
    b.prefix(".tmp-").suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o644));
    }
    b.tempfile_in(dir)
}

/// Syncs a finished temp file to disk and renames it to `path`.
pub fn persist(tmp: NamedTempFile, path: &Path) -> std::io::Result<()> {
    // reopen: a writer that took the path (e.g. libtorch) may have replaced the file behind the
    // temp file's own handle
    std::fs::File::open(tmp.path())?.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_beside(path, ".partial")?;
    tmp.write_all(bytes)?;
    persist(tmp, path)
}

/// The sha256 of the file at `path`, in lower-case hex, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
