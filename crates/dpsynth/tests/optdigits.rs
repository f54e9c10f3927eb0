//! UCI optical digits: parsing the scikit-learn CSV with errors naming the line, and the
//! MNIST-style normalisation of an 8×8 digit (centre of mass at the centre, a 20-pixel box, full
//! ink) on digits made here.

use std::path::Path;

use dpsynth::data::{self, optdigits};

/// A vertical bar two cells wide in columns 5-6 of rows 1-6: ink off-centre in the 8×8 block.
fn bar() -> [u8; 64] {
    let mut d = [0u8; 64];
    for row in 1..7 {
        d[row * 8 + 5] = 16;
        d[row * 8 + 6] = 8;
    }
    d
}

#[test]
fn a_digit_is_centred_by_mass_in_a_twenty_pixel_box() {
    let img = optdigits::normalise(&bar());
    assert_eq!(img.len(), 28 * 28);
    assert_eq!(*img.iter().max().unwrap(), 255);
    let (mut sum, mut cx, mut cy) = (0.0, 0.0, 0.0);
    let (mut top, mut bottom) = (28, 0);
    for y in 0..28 {
        for x in 0..28 {
            let v = img[y * 28 + x] as f64;
            sum += v;
            cx += v * (x as f64 + 0.5);
            cy += v * (y as f64 + 0.5);
            // ink above a tenth of full: the faint bilinear fringe is not the digit
            if v > 25.5 {
                top = top.min(y);
                bottom = bottom.max(y);
            }
        }
    }
    // the centre of mass is at the frame's centre, to within the 4x4 supersampling's rounding
    assert!((cx / sum - 14.0).abs() < 0.5, "x {}", cx / sum);
    assert!((cy / sum - 14.0).abs() < 0.5, "y {}", cy / sum);
    // six inked rows fill the 20-pixel box (give or take a pixel of sampling at each end)
    let height = bottom - top + 1;
    assert!((19..=22).contains(&height), "ink is {height} pixels tall");
}

#[test]
fn the_csv_parses_and_bad_lines_are_named() {
    let path = Path::new("digits.csv");
    let line = |d: &[u8; 64], label: u8| {
        let mut v: Vec<String> = d.iter().map(|c| c.to_string()).collect();
        v.push(label.to_string());
        v.join(",")
    };
    let text = format!("{}\n{}\n", line(&bar(), 1), line(&[0; 64], 7));
    let (images, labels) = optdigits::parse(path, &text).unwrap();
    assert_eq!(labels, [1, 7]);
    assert_eq!(images[0], bar());

    let mut over = bar();
    over[0] = 17;
    for (text, want) in [
        (
            format!("{}\n{}", line(&bar(), 1), line(&over, 2)),
            "line 2: count 17",
        ),
        ("1,2,3\n".to_string(), "line 1: 3 values"),
        (line(&bar(), 12), "label 12"),
        ("a,b\n".to_string(), "not a list"),
        (String::new(), "no digits"),
    ] {
        let msg = optdigits::parse(path, &text).unwrap_err().to_string();
        assert!(msg.contains("digits.csv") && msg.contains(want), "{msg}");
    }
}

#[test]
fn missing_data_and_bad_splits_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let msg = data::load("optdigits:all", dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dpsynth data fetch optdigits"), "{msg}");
    let msg = "optdigits:train"
        .parse::<data::DatasetSpec>()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("'all'"), "{msg}");
}
