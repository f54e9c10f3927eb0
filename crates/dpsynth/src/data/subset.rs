//! Class-balanced subsets, as the spec suffix `@N` (`mnist:train@1000`): N images, the same
//! number from each class that has images (the remainder from the first of them), chosen by a
//! fixed public seed, so that a study of private-set size draws the same subset on every machine.
//! The choice depends only on the labels and the seed. A class with no image at all (a class map
//! may name classes the public data lack, as the CIFAR-10 proxy's airplane and horse) takes no
//! share.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// The seed of every `@N` subset.
pub const SUBSET_SEED: u64 = 0;

/// Splits `spec` into the dataset spec and the subset size of a trailing `@N` (digits only),
/// if any.
pub fn split_suffix(spec: &str) -> Result<(&str, Option<usize>)> {
    match spec.rsplit_once('@') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let size = n
                .parse::<usize>()
                .map_err(|e| DataError::spec(spec, format!("subset size '{n}': {e}")))?;
            Ok((base, Some(size)))
        }
        _ => Ok((spec, None)),
    }
}

/// `size` images of `ds`, an equal share from each class that has images, in their original
/// order.
pub fn balanced(ds: &Dataset, size: usize, spec: &str) -> Result<Dataset> {
    let mut by_class = vec![Vec::new(); ds.num_classes()];
    for (i, &label) in ds.labels.iter().enumerate() {
        by_class[label as usize].push(i);
    }
    let classes: Vec<(usize, Vec<usize>)> = by_class
        .into_iter()
        .enumerate()
        .filter(|(_, of_class)| !of_class.is_empty())
        .collect();
    let k = classes.len();
    if size < k || size > ds.len() {
        return Err(DataError::spec(
            spec,
            format!(
                "a subset of {size} images: need at least one per class with images ({k}) and at \
                 most the {} images there are",
                ds.len()
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SUBSET_SEED);
    let mut chosen = Vec::with_capacity(size);
    for (rank, (class, mut of_class)) in classes.into_iter().enumerate() {
        let want = size / k + usize::from(rank < size % k);
        if of_class.len() < want {
            return Err(DataError::spec(
                spec,
                format!(
                    "class '{}' has {} images, fewer than the {want} a balanced subset of {size} \
                     takes from each",
                    ds.class_names[class],
                    of_class.len()
                ),
            ));
        }
        of_class.shuffle(&mut rng);
        chosen.extend_from_slice(&of_class[..want]);
    }
    chosen.sort_unstable();
    Ok(ds.subset(&chosen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn data() -> Dataset {
        let labels: Vec<u8> = (0..100).map(|i| (i % 3) as u8).collect();
        let images = (0..100).map(|i| i as u8).collect();
        let names = ["a", "b", "c"].map(String::from).to_vec();
        Dataset::new(Path::new("t"), images, labels, [1, 1, 1], names).unwrap()
    }

    #[test]
    fn suffix_is_parsed_only_when_it_is_a_number() {
        assert_eq!(
            split_suffix("mnist:train@1000").unwrap(),
            ("mnist:train", Some(1000))
        );
        assert_eq!(split_suffix("mnist:train").unwrap(), ("mnist:train", None));
        assert_eq!(
            split_suffix("imagefolder:a@b").unwrap(),
            ("imagefolder:a@b", None)
        );
    }

    #[test]
    fn subsets_are_balanced_repeatable_and_checked() {
        let ds = data();
        let a = balanced(&ds, 10, "x@10").unwrap();
        assert_eq!(a.len(), 10);
        let count = |c: u8| a.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(0), count(1), count(2)), (4, 3, 3));
        assert_eq!(a, balanced(&ds, 10, "x@10").unwrap());
        assert!(balanced(&ds, 2, "x@2").is_err());
        assert!(balanced(&ds, 101, "x@101").is_err());
        assert_eq!(
            balanced(&ds, 100, "x@100").unwrap(),
            ds,
            "34, 33 and 33: all of it"
        );
        let names = ["a", "b", "c"].map(String::from).to_vec();
        let skewed = Dataset::new(
            Path::new("t"),
            vec![0; 7],
            vec![0, 0, 0, 0, 1, 1, 2],
            [1, 1, 1],
            names,
        )
        .unwrap();
        let err = balanced(&skewed, 6, "x@6").unwrap_err().to_string();
        assert!(err.contains("class 'c' has 1 images"), "{err}");
    }

    #[test]
    fn a_class_without_images_takes_no_share() {
        // The CIFAR-10 proxy names airplane and horse but has no image of them.
        let names = ["a", "b", "c"].map(String::from).to_vec();
        let labels: Vec<u8> = (0..40).map(|i| if i % 2 == 0 { 0 } else { 2 }).collect();
        let ds = Dataset::new(Path::new("t"), vec![0; 40], labels, [1, 1, 1], names).unwrap();
        let a = balanced(&ds, 11, "x@11").unwrap();
        let count = |c: u8| a.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(0), count(1), count(2)), (6, 0, 5));
        assert_eq!(a.class_names.len(), 3, "the class list is kept");
        assert!(
            balanced(&ds, 1, "x@1").is_err(),
            "one image cannot cover two classes"
        );
    }
}
