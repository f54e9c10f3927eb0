//! Tiny ImageNet: fetching from a folder or an archive, the checksum of the shared archive, and
//! reading the three splits with their WordNet class names, on a small tree made here.

use std::path::Path;

use dpsynth::data::tiny_imagenet::ProxySplit;
use dpsynth::data::{self, acquire, tiny_imagenet};

fn jpg(path: &Path, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(32, 32, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

/// A two-class tree in the archive's layout: 3 train and 2 val images per class, 4 unlabelled.
fn tiny_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join("classes.tsv"),
        "n001\ttabby, tabby cat\nn002\tsports car, sport car\n",
    )
    .unwrap();
    for (c, wnid) in ["n001", "n002"].iter().enumerate() {
        let v = 100 * c as u8;
        for i in 0..3 {
            jpg(
                &root.join(format!("train/{wnid}/{wnid}_{i}.jpg")),
                [v, 0, 50],
            );
        }
        for i in 0..2 {
            jpg(&root.join(format!("val/{wnid}/val_{c}{i}.jpg")), [v, 0, 50]);
        }
    }
    for i in 0..4 {
        jpg(&root.join(format!("unlabeled/test_{i}.jpg")), [9, 9, 200]);
    }
}

fn tar_gz(src: &Path, prefix: &str, out: &Path) {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::fast(),
    ));
    b.append_dir_all(prefix, src).unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn fetch_from_a_folder_reads_every_split_with_wordnet_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tinyimagenet32");
    tiny_tree(&src);
    let data_dir = dir.path().join("data");
    let first = acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&src)).unwrap();
    assert!(matches!(first, acquire::Outcome::Fetched(_)), "{first:?}");
    let again = acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&src)).unwrap();
    assert!(
        matches!(again, acquire::Outcome::AlreadyPresent(_)),
        "{again:?}"
    );

    let train = data::load("tiny-imagenet:train", &data_dir).unwrap();
    assert_eq!(train.class_names, ["tabby", "sports car"]);
    assert_eq!(train.labels, [0, 0, 0, 1, 1, 1]);
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    // class 1's images are red 100 (JPEG is lossy: a flat colour comes back within a few levels)
    assert!(train.image(4)[0].abs_diff(100) <= 3);
    let val = data::load("tiny-imagenet:val", &data_dir).unwrap();
    assert_eq!(val.labels, [0, 0, 1, 1]);
    let unlabeled = data::load("tiny-imagenet:unlabeled", &data_dir).unwrap();
    assert_eq!(unlabeled.len(), 4);
    assert_eq!(unlabeled.class_names, [tiny_imagenet::UNLABELED_CLASS]);
    let spec: data::DatasetSpec = "tiny-imagenet:val".parse().unwrap();
    assert_eq!(spec.to_string(), "tiny-imagenet:val");
    assert!(spec.licence().unwrap().contains("non-commercial"));
}

#[test]
fn fetch_from_an_archive_unpacks_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    tiny_tree(&src);
    let tgz = dir.path().join("my-copy.tar.gz");
    tar_gz(&src, "tinyimagenet32", &tgz);
    let data_dir = dir.path().join("data");
    acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&tgz)).unwrap();
    assert_eq!(
        data::load("tiny-imagenet:train", &data_dir).unwrap().len(),
        6
    );
}

#[test]
fn a_tampered_shared_archive_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    tiny_tree(&src);
    // a well-formed archive under the shared archive's name: its sha256 is not the published one
    let tgz = dir.path().join(acquire::tiny_imagenet::ARCHIVE);
    tar_gz(&src, "tinyimagenet32", &tgz);
    let data_dir = dir.path().join("data");
    let msg = acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&tgz))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sha256"), "{msg}");
    assert!(msg.contains(acquire::tiny_imagenet::ARCHIVE), "{msg}");
    assert!(!data_dir.join(tiny_imagenet::NAME).exists());
    // nor does a staging folder stay behind
    let left: Vec<_> = std::fs::read_dir(&data_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_incomplete_tree_is_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tinyimagenet32");
    tiny_tree(&src);
    std::fs::remove_dir_all(src.join("val/n002")).unwrap();
    let data_dir = dir.path().join("data");
    let msg = acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&src))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("n002"), "{msg}");
    assert!(!data_dir.join(tiny_imagenet::NAME).exists());
}

#[test]
fn bad_specs_and_class_tables_are_named() {
    let msg = "tiny-imagenet:test"
        .parse::<data::DatasetSpec>()
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("'val'") && msg.contains("'unlabeled'"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("classes.tsv");
    std::fs::write(&tsv, "n1\tcat\nn2\tcat, puss\n").unwrap();
    let msg = tiny_imagenet::read_classes(&tsv).unwrap_err().to_string();
    assert!(msg.contains("line 2") && msg.contains("'cat'"), "{msg}");
    let msg = data::load("tiny-imagenet:train", dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dpsynth data fetch tiny-imagenet"), "{msg}");
}

#[test]
fn the_proxy_relabels_val_images_by_a_class_map() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tinyimagenet32");
    tiny_tree(&src);
    let data_dir = dir.path().join("data");
    acquire::fetch(tiny_imagenet::NAME, &data_dir, Some(&src)).unwrap();
    let map = dir.path().join("map.toml");
    std::fs::write(
        &map,
        "horse = []\ncar = [\"sports car\"]\ncat = [\"tabby\"]\n",
    )
    .unwrap();
    let spec = format!("tiny-imagenet-proxy:{}", map.display());
    let proxy = data::load(&spec, &data_dir).unwrap();
    // classes in name order; horse has no public images
    assert_eq!(proxy.class_names, ["car", "cat", "horse"]);
    assert_eq!(proxy.labels, [1, 1, 0, 0]);
    assert_eq!(proxy.class_counts(), [2, 2, 0]);
    // the train proxy relabels the same classes' train images
    let spec_train = format!("tiny-imagenet-proxy-train:{}", map.display());
    let train = data::load(&spec_train, &data_dir).unwrap();
    assert_eq!(train.class_names, proxy.class_names);
    // tiny_tree writes 3 train images per class (2 val)
    assert_eq!(train.class_counts(), [3, 3, 0]);
    // a proxy names a labelled split only (`ProxySplit` has no unlabelled variant), and each
    // spec names its split exactly
    for (split, name, folder) in [
        (ProxySplit::Val, tiny_imagenet::PROXY_NAME, "val"),
        (ProxySplit::Train, tiny_imagenet::PROXY_TRAIN_NAME, "train"),
    ] {
        assert_eq!(split.split().as_str(), folder);
        let spec = data::DatasetSpec::TinyImageNetProxy(split, map.clone());
        assert_eq!(tiny_imagenet::proxy_name(split), name);
        assert_eq!(spec.to_string().parse::<data::DatasetSpec>().unwrap(), spec);
    }

    std::fs::write(&map, "cat = [\"lion\"]\n").unwrap();
    let msg = data::load(&spec, &data_dir).unwrap_err().to_string();
    assert!(msg.contains("map.toml") && msg.contains("'lion'"), "{msg}");
    std::fs::write(&map, "cat = [\"tabby\"]\ndog = [\"tabby\"]\n").unwrap();
    let msg = data::load(&spec, &data_dir).unwrap_err().to_string();
    assert!(msg.contains("two private classes"), "{msg}");
    std::fs::write(&map, "cat = \"tabby\"\n").unwrap();
    let msg = data::load(&spec, &data_dir).unwrap_err().to_string();
    assert!(
        msg.contains("map.toml") && msg.contains("not a class map"),
        "{msg}"
    );
}
