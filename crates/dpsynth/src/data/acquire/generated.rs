//! What the generated 32×32 colour sets (`dead-leaves`, `photo-crops`) share: seeded parallel
//! generation, and writing train and test splits as CIFAR-10-format records into
//! `DATA/<name>/{train,test}.bin`, staged in a hidden folder and renamed into place.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::cifar;
use crate::data::dataset::Dataset;
use crate::data::error::{DataError, Result};
use crate::data::spec::Split;

/// Side of the generated images.
pub const SIZE: usize = 32;
/// Bytes of one 3×32×32 image.
pub const IMAGE_BYTES: usize = 3 * SIZE * SIZE;
/// The one class of the unlabelled generated sets (pretraining reads them with `labels = "null"`).
pub const CLASS: &str = "image";

/// Threads for generating: libtorch's thread count, which `--threads N` sets (default: one per
/// core), so that one flag bounds the CPU use of every command.
pub fn worker_threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// Makes `count` images with `render` in parallel ([`worker_threads`] threads). Image `i` is rendered from a ChaCha8 generator
/// seeded with `seed` on stream `i`, so it depends only on `seed`, `i` and what `render` reads,
/// not on the number of threads.
pub fn images(
    count: usize,
    seed: u64,
    render: impl Fn(&mut ChaCha8Rng) -> Vec<u8> + Sync,
) -> Dataset {
    let threads = worker_threads();
    let chunk = count.div_ceil(threads).max(1);
    let render = &render;
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    let end = (start + chunk).min(count);
                    let mut out = Vec::with_capacity((end - start) * IMAGE_BYTES);
                    for i in start..end {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        let img = render(&mut rng);
                        debug_assert_eq!(img.len(), IMAGE_BYTES);
                        out.extend(img);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread panicked"))
            .collect()
    });
    Dataset {
        images: parts.concat(),
        labels: vec![0; count],
        channels: 3,
        height: SIZE,
        width: SIZE,
        class_names: vec![CLASS.to_string()],
    }
}

/// The seed of a split: the test split gets another seed, so its images are not the first
/// training images.
pub fn split_seed(seed: u64, split: Split) -> u64 {
    match split {
        Split::Train => seed,
        Split::Test => seed ^ 0x5EED_7E57,
    }
}

/// The record file of a split inside a generated set's folder.
pub fn split_file(dir: &Path, split: Split) -> PathBuf {
    dir.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    })
}

/// Reads one split of a generated set (one class, [`CLASS`]).
pub fn read_split(dir: &Path, split: Split) -> Result<Dataset> {
    cifar::read_records(&[split_file(dir, split)], vec![CLASS.to_string()])
}

/// Fails when `data_dir/name` exists: a generated set is never overwritten.
pub fn check_absent(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let target = data_dir.join(name);
    if target.exists() {
        return Err(DataError::format(
            &target,
            "already exists: delete it to generate again",
        ));
    }
    Ok(target)
}

/// Writes `train` and `test` as `data_dir/name/{train,test}.bin`, plus `extra` (file name,
/// contents) beside them, staged in a hidden temp folder and renamed into place. Returns the
/// folder.
pub fn write_set(
    data_dir: &Path,
    name: &str,
    train: &Dataset,
    test: &Dataset,
    extra: &[(&str, String)],
) -> Result<PathBuf> {
    let target = check_absent(data_dir, name)?;
    std::fs::create_dir_all(data_dir).map_err(|e| DataError::io(data_dir, e))?;
    let stage = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(data_dir)
        .map_err(|e| DataError::io(data_dir, e))?;
    for (split, ds) in [(Split::Train, train), (Split::Test, test)] {
        let p = split_file(stage.path(), split);
        std::fs::write(&p, cifar::encode_records(ds)).map_err(|e| DataError::io(&p, e))?;
    }
    for (file, text) in extra {
        let p = stage.path().join(file);
        std::fs::write(&p, text).map_err(|e| DataError::io(&p, e))?;
    }
    let kept = stage.keep();
    std::fs::rename(&kept, &target).map_err(|e| DataError::io(&target, e))?;
    Ok(target)
}
