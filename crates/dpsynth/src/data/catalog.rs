//! Every named dataset once: its name, the splits its spec takes, how it is acquired and its
//! licence. Spec parsing ([`super::spec`]), the help texts, `data fetch`, `data generate` and the
//! "not found: run ... first" messages all read this table, so adding a dataset is one row here,
//! one [`super::spec::DatasetSpec`] variant and its reader or acquirer.

use super::acquire::{dead_leaves, font_digits, handwriting_fonts, photo_crops};
use super::{optdigits, quickdraw, tiny_imagenet};

/// How a dataset gets into the data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// `dpsynth data fetch NAME` (downloaded or copied, checksummed).
    Fetch,
    /// `dpsynth data generate NAME` (made here, repeatable from a seed).
    Generate,
    /// Read from a path given in the spec (`NAME:PATH`); nothing to acquire.
    Path,
}

/// One named dataset.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its name in specs and commands.
    pub name: &'static str,
    /// The splits of its spec (`NAME:SPLIT`); empty for raw material that is no dataset (fonts,
    /// photographs), `["PATH"]`-like placeholders for path specs.
    pub splits: &'static [&'static str],
    /// How it is acquired.
    pub acquire: Acquire,
    /// Its terms of use, for the public sets whose terms are not those everybody knows.
    pub licence: Option<&'static str>,
}

const TRAIN_TEST: &[&str] = &["train", "test"];
const ALL: &[&str] = &["all"];

/// The named datasets, in the order the help texts list them.
pub const CATALOG: &[Entry] = &[
    Entry {
        name: "mnist",
        splits: TRAIN_TEST,
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: "fashion-mnist",
        splits: TRAIN_TEST,
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: "cifar10",
        splits: TRAIN_TEST,
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: tiny_imagenet::NAME,
        splits: &["train", "val", "unlabeled"],
        acquire: Acquire::Fetch,
        licence: Some(tiny_imagenet::LICENCE),
    },
    Entry {
        name: optdigits::NAME,
        splits: ALL,
        acquire: Acquire::Fetch,
        licence: Some(optdigits::LICENCE),
    },
    Entry {
        name: quickdraw::NAME,
        splits: ALL,
        acquire: Acquire::Fetch,
        licence: Some(quickdraw::LICENCE),
    },
    Entry {
        name: "fonts",
        splits: &[],
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: handwriting_fonts::NAME,
        splits: &[],
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: "photos",
        splits: &[],
        acquire: Acquire::Fetch,
        licence: None,
    },
    Entry {
        name: font_digits::FONT_DIGITS.name,
        splits: TRAIN_TEST,
        acquire: Acquire::Generate,
        licence: None,
    },
    Entry {
        name: font_digits::HANDWRITING_DIGITS.name,
        splits: TRAIN_TEST,
        acquire: Acquire::Generate,
        licence: None,
    },
    Entry {
        name: dead_leaves::NAME,
        splits: TRAIN_TEST,
        acquire: Acquire::Generate,
        licence: None,
    },
    Entry {
        name: photo_crops::NAME,
        splits: TRAIN_TEST,
        acquire: Acquire::Generate,
        licence: None,
    },
    Entry {
        name: tiny_imagenet::PROXY_NAME,
        splits: &["CLASS_MAP"],
        acquire: Acquire::Path,
        licence: Some(tiny_imagenet::LICENCE),
    },
    Entry {
        name: tiny_imagenet::PROXY_TRAIN_NAME,
        splits: &["CLASS_MAP"],
        acquire: Acquire::Path,
        licence: Some(tiny_imagenet::LICENCE),
    },
    Entry {
        name: "imagefolder",
        splits: &["PATH"],
        acquire: Acquire::Path,
        licence: None,
    },
];

/// The entry named `name`.
pub fn entry(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The names acquired by `how`, comma-separated, for help texts and errors.
pub fn names(how: Acquire) -> String {
    let names: Vec<&str> = CATALOG
        .iter()
        .filter(|e| e.acquire == how)
        .map(|e| e.name)
        .collect();
    names.join(", ")
}

/// The spec forms accepted (`mnist:train|test, ...`), for help texts and error messages.
pub fn spec_help() -> String {
    let forms: Vec<String> = CATALOG
        .iter()
        .filter(|e| !e.splits.is_empty())
        .map(|e| format!("{}:{}", e.name, e.splits.join("|")))
        .collect();
    format!(
        "{}; SPEC@N takes a class-balanced subset of N images (public seed)",
        forms.join(", ")
    )
}

/// The command that puts dataset `name` in the data folder, when it is one of the catalog's.
pub fn how_to_get(name: &str) -> Option<String> {
    entry(name).and_then(|e| match e.acquire {
        Acquire::Fetch => Some(format!("dpsynth data fetch {name}")),
        Acquire::Generate => Some(format!("dpsynth data generate {name}")),
        Acquire::Path => None,
    })
}

/// The error for a named dataset's missing file or folder `path`: it names the command that
/// acquires dataset `name`.
pub fn not_found(path: &std::path::Path, name: &str) -> super::DataError {
    let how = how_to_get(name).map_or(String::new(), |how| {
        format!("run `{how}` first (or pass --data-dir)")
    });
    super::DataError::format(path, format!("not found: {how}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are unique, and every spec form in the help parses (or needs only its path).
    #[test]
    fn names_are_unique_and_the_help_forms_parse() {
        for (i, e) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[..i].iter().all(|o| o.name != e.name),
                "{} listed twice",
                e.name
            );
            for split in e.splits {
                let spec = format!("{}:{split}", e.name);
                assert!(
                    spec.parse::<super::super::DatasetSpec>().is_ok(),
                    "{spec} is in the help but does not parse"
                );
            }
        }
        assert_eq!(
            how_to_get("handwriting-digits").as_deref(),
            Some("dpsynth data generate handwriting-digits")
        );
        assert_eq!(how_to_get("imagefolder"), None);
        assert!(spec_help().starts_with("mnist:train|test, fashion-mnist:train|test"));
    }
}
