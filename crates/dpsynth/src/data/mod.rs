//! Datasets: one in-memory type, readers for IDX, CIFAR-10 binary and ImageFolder, dataset specs,
//! fetchers and sample grids.

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod font_digits;
pub mod grid;
pub mod idx;
pub mod imagefolder;
pub mod spec;

pub use dataset::{Dataset, Summary};
pub use error::DataError;
pub use spec::{load, DatasetSpec, Split};
