//! Datasets: one in-memory type, readers for IDX, CIFAR-10 binary and ImageFolder, dataset specs,
//! fetchers, generators of public pretraining data, and sample grids.

pub mod augment;
pub mod cifar;
pub mod class_map;
pub mod convert;
pub mod dataset;
pub mod dead_leaves;
pub mod elastic;
pub mod error;
pub mod fetch;
pub mod font_digits;
pub mod generated;
pub mod grid;
pub mod handwriting_fonts;
pub mod idx;
pub mod imagefolder;
pub mod optdigits;
pub mod photo_crops;
pub mod photos;
pub mod quickdraw;
pub mod spec;
pub mod subset;
pub mod tiny_imagenet;
pub mod walk;
pub mod woff;

pub use dataset::{Dataset, Summary};
pub use error::DataError;
pub use spec::{load, DatasetSpec, Split};
