//! Dataset readers: round trips on small generated files, and a clear error naming the file for
//! every kind of corrupt input.

use std::io::Write;
use std::path::Path;

use dpsynth::data::{self, acquire, cifar, grid, idx, imagefolder, DataError, Dataset};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Four 2x3 images with pixel value 10*i + position, labels 0, 1, 2, 1.
fn tiny_idx(dir: &Path, gz: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let pixels: Vec<u8> = (0..4)
        .flat_map(|i| (0..6).map(move |p| 10 * i + p))
        .collect();
    let (mut imgs, mut labs) = (
        idx::encode_images(4, 2, 3, &pixels),
        idx::encode_labels(&[0, 1, 2, 1]),
    );
    let suffix = if gz { ".gz" } else { "" };
    if gz {
        imgs = gzip(&imgs);
        labs = gzip(&labs);
    }
    let (i, l) = (
        dir.join(format!("imgs{suffix}")),
        dir.join(format!("labs{suffix}")),
    );
    write(&i, &imgs);
    write(&l, &labs);
    (i, l)
}

fn err_text(e: DataError) -> String {
    e.to_string()
}

#[test]
fn idx_raw_and_gz_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(&dir.path().join("raw"), false);
    let raw = idx::read_idx_pair(&i, &l).unwrap();
    let (i, l) = tiny_idx(&dir.path().join("gz"), true);
    let gz = idx::read_idx_pair(&i, &l).unwrap();
    assert_eq!(raw, gz);
    assert_eq!(raw.len(), 4);
    assert_eq!((raw.channels, raw.height, raw.width), (1, 2, 3));
    assert_eq!(raw.image(2), &[20, 21, 22, 23, 24, 25]);
    assert_eq!(raw.class_counts()[..3], [1, 2, 1]);
}

#[test]
fn truncated_idx_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(dir.path(), false);
    let bytes = std::fs::read(&i).unwrap();
    write(&i, &bytes[..bytes.len() - 5]);
    let msg = err_text(idx::read_idx_pair(&i, &l).unwrap_err());
    assert!(msg.contains("truncated IDX file"), "{msg}");
    assert!(msg.contains(&i.display().to_string()), "{msg}");
    // a header cut short too
    write(&i, &bytes[..7]);
    let msg = err_text(idx::read_idx_pair(&i, &l).unwrap_err());
    assert!(msg.contains("truncated IDX file"), "{msg}");
}

#[test]
fn wrong_magic_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(dir.path(), false);
    // labels given where images are expected
    let msg = err_text(idx::read_idx_pair(&l, &i).unwrap_err());
    assert!(msg.contains("wrong magic number 0x00000801"), "{msg}");
    assert!(msg.contains(&l.display().to_string()), "{msg}");
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(dir.path(), false);
    write(&l, &idx::encode_labels(&[0, 1, 2]));
    let msg = err_text(idx::read_idx_pair(&i, &l).unwrap_err());
    assert!(msg.contains("3 labels but"), "{msg}");
    assert!(msg.contains("has 4 images"), "{msg}");
}

#[test]
fn idx_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(dir.path(), false);
    write(&l, &idx::encode_labels(&[0, 1, 12, 1]));
    let msg = err_text(idx::read_idx_pair(&i, &l).unwrap_err());
    assert!(msg.contains("label 12 of image 2 is out of range"), "{msg}");
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

#[test]
fn cifar_binary_reads_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("test_batch.bin");
    let bytes: Vec<u8> = [cifar_record(3, 7), cifar_record(9, 200)].concat();
    write(&f, &bytes);
    let ds = cifar::read_batches(std::slice::from_ref(&f)).unwrap();
    assert_eq!(ds.labels, vec![3, 9]);
    assert_eq!((ds.channels, ds.height, ds.width), (3, 32, 32));
    assert!(ds.image(1).iter().all(|&p| p == 200));
    assert_eq!(ds.class_names[3], "cat");
}

#[test]
fn cifar_size_must_be_a_multiple_of_3073() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data_batch_1.bin");
    let mut bytes = cifar_record(1, 1);
    bytes.push(0);
    write(&f, &bytes);
    let msg = err_text(cifar::read_batches(std::slice::from_ref(&f)).unwrap_err());
    assert!(msg.contains("3074 is not a positive multiple"), "{msg}");
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
}

#[test]
fn cifar_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("test_batch.bin");
    write(&f, &[cifar_record(0, 1), cifar_record(10, 1)].concat());
    let msg = err_text(cifar::read_batches(&[f]).unwrap_err());
    assert!(
        msg.contains("label 10 of record 1 is out of range"),
        "{msg}"
    );
}

fn png(path: &Path, w: u32, h: u32, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([value]))
        .save(path)
        .unwrap();
}

#[test]
fn imagefolder_sorts_classes_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    png(&root.join("b/x.png"), 4, 3, 9);
    png(&root.join("a/1.png"), 4, 3, 1);
    png(&root.join("a/2.png"), 4, 3, 2);
    std::fs::write(root.join("a/.DS_Store"), b"junk").unwrap();
    let ds = imagefolder::read(&root).unwrap();
    assert_eq!(ds.class_names, vec!["a", "b"]);
    assert_eq!(ds.labels, vec![0, 0, 1]);
    assert_eq!((ds.channels, ds.height, ds.width), (1, 3, 4));
    assert!(ds.image(2).iter().all(|&p| p == 9));

    let out = dir.path().join("copy");
    imagefolder::write(&ds, &out).unwrap();
    let again = imagefolder::read(&out).unwrap();
    assert_eq!(again, ds);
    // never overwrites
    let msg = err_text(imagefolder::write(&ds, &out).unwrap_err());
    assert!(msg.contains("already exists"), "{msg}");
}

#[test]
fn imagefolder_rgb_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<u8> = (0..2 * 3 * 2 * 2).map(|v| (v * 10) as u8).collect();
    let ds = Dataset::new(
        dir.path(),
        images,
        vec![1, 0],
        [3, 2, 2],
        vec!["cat".into(), "dog".into()],
    )
    .unwrap();
    let out = dir.path().join("rgb");
    imagefolder::write(&ds, &out).unwrap();
    let back = imagefolder::read(&out).unwrap();
    // files are read class by class: the dog (label 1) comes second
    assert_eq!(back.subset(&[1, 0]), ds);
}

#[test]
fn empty_class_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a/1.png"), 2, 2, 0);
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let msg = err_text(imagefolder::read(dir.path()).unwrap_err());
    assert!(msg.contains("empty class folder"), "{msg}");
    assert!(msg.contains("/b"), "{msg}");
}

#[test]
fn mixed_image_sizes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a/1.png"), 2, 2, 0);
    png(&dir.path().join("b/2.png"), 3, 2, 0);
    let msg = err_text(imagefolder::read(dir.path()).unwrap_err());
    assert!(msg.contains("image is 3x2 but"), "{msg}");
    assert!(msg.contains("b/2.png"), "{msg}");
}

#[test]
fn non_image_file_in_class_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a/1.png"), 2, 2, 0);
    std::fs::write(dir.path().join("a/notes.txt"), b"hello").unwrap();
    let msg = err_text(imagefolder::read(dir.path()).unwrap_err());
    assert!(msg.contains("a/notes.txt: not an image file"), "{msg}");
}

#[test]
fn undecodable_image_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a/1.png"), 2, 2, 0);
    std::fs::write(dir.path().join("a/2.png"), b"not a png").unwrap();
    let msg = err_text(imagefolder::read(dir.path()).unwrap_err());
    assert!(msg.contains("a/2.png: cannot decode image"), "{msg}");
}

#[test]
fn unknown_spec_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, expect) in [
        ("svhn:train", "unknown dataset 'svhn'"),
        ("mnist:validation", "unknown split 'validation'"),
        ("mnist", "expected NAME:ARG"),
        ("imagefolder:", "imagefolder needs a path"),
    ] {
        let msg = err_text(data::load(spec, dir.path()).unwrap_err());
        assert!(msg.contains(expect), "{spec}: {msg}");
        assert!(msg.contains(spec), "{spec}: {msg}");
    }
}

#[test]
fn missing_paths_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(data::load("mnist:train", dir.path()).unwrap_err());
    assert!(msg.contains("train-images-idx3-ubyte: not found"), "{msg}");
    assert!(msg.contains("dpsynth data fetch mnist"), "{msg}");
    let missing = dir.path().join("nowhere");
    let msg = err_text(
        data::load(&format!("imagefolder:{}", missing.display()), dir.path()).unwrap_err(),
    );
    assert!(msg.contains("nowhere: no such folder"), "{msg}");
    let msg = err_text(data::load("cifar10:test", dir.path()).unwrap_err());
    assert!(msg.contains("dpsynth data fetch cifar10"), "{msg}");
}

#[test]
fn summary_counts_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    // two 1x1x2 images: pixels 0,255 and 255,255 -> mean 0.75, std sqrt(0.1875)
    let ds = Dataset::new(
        dir.path(),
        vec![0, 255, 255, 255],
        vec![0, 0],
        [1, 1, 2],
        vec!["a".into(), "b".into()],
    )
    .unwrap();
    let s = ds.summary();
    assert_eq!(s.count, 2);
    assert_eq!(s.per_class, vec![("a".into(), 2), ("b".into(), 0)]);
    assert!((s.mean[0] - 0.75).abs() < 1e-12);
    assert!((s.std[0] - 0.1875f64.sqrt()).abs() < 1e-12);
}

#[test]
fn grid_has_one_row_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = tiny_idx(dir.path(), false);
    let ds = idx::read_idx_pair(&i, &l).unwrap();
    let g = grid::grid(&ds, 2, 1);
    // 10 classes of 2-pixel rows with 2-pixel gaps; 2 columns of 3 pixels
    assert_eq!(g.dimensions(), (2 + 2 * (3 + 2), 2 + 10 * (2 + 2)));
    let out = dir.path().join("g.png");
    grid::write_grid(&ds, 2, 3, &out).unwrap();
    assert!(image::open(&out).is_ok());
}

#[test]
fn cifar_fetch_from_binary_folder_is_idempotent_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cifar-10-batches-bin");
    for f in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        write(&src.join(format!("{f}.bin")), &cifar_record(2, 5));
    }
    let data_dir = dir.path().join("data");
    // a source with no CIFAR-10 in it fails and leaves no folder behind
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(acquire::fetch("cifar10", &data_dir, Some(&empty)).is_err());
    assert!(!data_dir.join("cifar10").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&data_dir).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "staging folder left behind: {leftovers:?}"
    );

    let first = acquire::fetch("cifar10", &data_dir, Some(dir.path())).unwrap();
    assert!(matches!(first, acquire::Outcome::Fetched(_)));
    let second = acquire::fetch("cifar10", &data_dir, Some(dir.path())).unwrap();
    assert!(matches!(second, acquire::Outcome::AlreadyPresent(_)));
    let train = data::load("cifar10:train", &data_dir).unwrap();
    assert_eq!(train.len(), 5);
    assert_eq!(train.class_counts()[2], 5);
}

#[test]
fn cifar_fetch_from_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("cifar-10-binary.tar.gz");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&tgz).unwrap(),
        flate2::Compression::fast(),
    ));
    let rec = cifar_record(7, 1);
    let mut header = tar::Header::new_gnu();
    header.set_size(rec.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(
            &mut header.clone(),
            "cifar-10-batches-bin/test_batch.bin",
            &rec[..],
        )
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    let data_dir = dir.path().join("data");
    acquire::fetch("cifar10", &data_dir, Some(&tgz)).unwrap();
    let test = data::load("cifar10:test", &data_dir).unwrap();
    assert_eq!(test.labels, vec![7]);
}

#[test]
fn fetch_rejects_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(acquire::fetch("imagenet", dir.path(), None).unwrap_err());
    assert!(msg.contains("unknown dataset"), "{msg}");
}

#[test]
fn mnist_folder_with_a_bad_checksum_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mnist");
    for (f, _) in acquire::MNIST_MD5 {
        write(&m.join(f), b"not mnist");
    }
    let msg = err_text(acquire::fetch("mnist", dir.path(), None).unwrap_err());
    assert!(msg.contains("does not match the official"), "{msg}");
    // the data is left as it was, for the user to inspect
    assert_eq!(
        std::fs::read(m.join(acquire::MNIST_MD5[0].0)).unwrap(),
        b"not mnist"
    );
}
