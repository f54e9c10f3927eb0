//! Class maps: private class name → names of related public classes, a TOML file of lines such
//! as `cat = ["tabby", "Persian cat", "Egyptian cat"]`. Fine-tuning starts a private class's
//! embedding row from the mean of its public classes' rows (`train::class_table`), and the
//! `tiny-imagenet-proxy:FILE` spec labels public images with the private class they map to. A
//! private class with an empty list has no public counterpart. Keys are the private classes,
//! in name order (the order of an ImageFolder's labels).

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{DataError, Result};

/// Private class name → public class names (possibly none).
pub type ClassMap = BTreeMap<String, Vec<String>>;

/// Reads a class map, naming the file and the entry at fault.
pub fn load(path: &Path) -> Result<ClassMap> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let map: ClassMap = toml::from_str(&text).map_err(|e| {
        DataError::format(
            path,
            format!(
                "not a class map (expected lines such as cat = [\"tabby\", \"Persian cat\"]): {e}"
            ),
        )
    })?;
    if map.is_empty() {
        return Err(DataError::format(path, "no classes"));
    }
    for (private, public) in &map {
        if let Some(p) = public.iter().find(|p| p.trim().is_empty()) {
            return Err(DataError::format(
                path,
                format!("class '{private}' lists an empty public name {p:?}"),
            ));
        }
    }
    Ok(map)
}
