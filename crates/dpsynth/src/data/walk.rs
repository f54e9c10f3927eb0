//! Listing the files of a fetched folder (fonts, photographs) by extension.

use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

/// Every file under `dir` (recursively) whose extension is one of `extensions` (lower case,
/// compared case-insensitively), sorted by path. A missing `dir` is an error that tells the user
/// to run `dpsynth data fetch <fetch_name>`.
pub fn files_with_extensions(
    dir: &Path,
    extensions: &[&str],
    fetch_name: &str,
) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(DataError::format(
            dir,
            format!("no such folder: run `dpsynth data fetch {fetch_name}` first"),
        ));
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let p = e.map_err(|e| DataError::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| extensions.contains(&x.to_ascii_lowercase().as_str()))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_matching_files_recursively_sorted_and_names_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        for f in ["b/c/z.PNG", "a.jpg", "b/skip.txt", "b/y.png"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let got = files_with_extensions(dir.path(), &["png", "jpg"], "photos").unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["a.jpg", "b/c/z.PNG", "b/y.png"]);
        let missing = dir.path().join("nope");
        let err = files_with_extensions(&missing, &["png"], "photos").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nope") && msg.contains("dpsynth data fetch photos"),
            "{msg}"
        );
    }
}
