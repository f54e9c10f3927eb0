//! The error type of everything that reads, writes or fetches datasets.

use std::path::{Path, PathBuf};

/// A dataset problem, always naming the file, spec or source at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file system refused an operation on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file exists but its content is not what the format requires.
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// A dataset spec such as `mnist:train` could not be understood or resolved.
    #[error("dataset spec '{spec}': {problem}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// Fetching a dataset failed.
    #[error("fetching {name}: {problem}")]
    Fetch {
        /// The dataset name.
        name: String,
        /// What went wrong, in words.
        problem: String,
    },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A format problem in `path`.
    pub fn format(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Self::Format {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
        }
    }

    /// A problem with a dataset spec.
    pub fn spec(spec: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Spec {
            spec: spec.into(),
            problem: problem.into(),
        }
    }

    /// A fetch failure for dataset `name`.
    pub fn fetch(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Fetch {
            name: name.into(),
            problem: problem.into(),
        }
    }
}

/// Result alias for dataset operations.
pub type Result<T> = std::result::Result<T, DataError>;
