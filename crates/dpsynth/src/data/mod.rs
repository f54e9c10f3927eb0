//! Datasets: one in-memory type, readers for IDX, CIFAR-10 binary and ImageFolder, dataset specs,
//! fetchers, generators of public pretraining data, and sample grids.

pub mod acquire;
pub mod augment;
pub mod catalog;
pub mod cifar;
pub mod class_map;
pub mod convert;
pub mod dataset;
pub mod error;
pub mod grid;
pub mod idx;
pub mod imagefolder;
pub mod optdigits;
pub mod quickdraw;
pub mod spec;
pub mod subset;
pub mod tiny_imagenet;
pub mod walk;

pub use dataset::{Dataset, Summary};
pub use error::DataError;
pub use spec::{load, DatasetSpec, Split};
