//! WOFF 1.0 decoding: the committed TrueType fixture, wrapped as WOFF here (each table
//! zlib-compressed), decodes to a font with the same tables that draws the same digits; a
//! damaged file is an error naming it.

use std::io::Write;
use std::path::Path;

use ab_glyph::{Font, FontRef};
use dpsynth::data::acquire::woff;

fn fixture() -> Vec<u8> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fonts"));
    let f = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "ttf"))
        .expect("a .ttf fixture");
    std::fs::read(f).unwrap()
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// The sfnt's tables as (tag, checksum, bytes).
fn tables(sfnt: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let n = u16::from_be_bytes([sfnt[4], sfnt[5]]) as usize;
    (0..n)
        .map(|i| {
            let r = 12 + 16 * i;
            let (off, len) = (be32(sfnt, r + 8) as usize, be32(sfnt, r + 12) as usize);
            (
                be32(sfnt, r),
                be32(sfnt, r + 4),
                sfnt[off..off + len].to_vec(),
            )
        })
        .collect()
}

/// Wraps an sfnt as WOFF 1.0, compressing each table.
fn to_woff(sfnt: &[u8]) -> Vec<u8> {
    let t = tables(sfnt);
    let mut data = Vec::new();
    let mut dir = Vec::new();
    let mut offset = 44 + 20 * t.len();
    for (tag, sum, bytes) in &t {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(bytes).unwrap();
        let z = z.finish().unwrap();
        let stored = if z.len() < bytes.len() {
            z
        } else {
            bytes.clone()
        };
        for v in [
            *tag,
            offset as u32,
            stored.len() as u32,
            bytes.len() as u32,
            *sum,
        ] {
            dir.extend(v.to_be_bytes());
        }
        offset += stored.len().div_ceil(4) * 4;
        data.extend(&stored);
        data.resize(data.len().div_ceil(4) * 4, 0);
    }
    let mut out = Vec::new();
    out.extend(0x774F_4646u32.to_be_bytes());
    out.extend(be32(sfnt, 0).to_be_bytes());
    out.extend((offset as u32).to_be_bytes());
    out.extend((t.len() as u16).to_be_bytes());
    out.extend([0u8; 2]);
    out.extend((sfnt.len() as u32).to_be_bytes());
    out.extend([0u8; 24]); // version, metadata and private blocks: none
    out.extend(dir);
    out.extend(data);
    out
}

#[test]
fn woff_decodes_to_the_same_tables_and_glyphs() {
    let ttf = fixture();
    let woff_bytes = to_woff(&ttf);
    assert!(
        woff_bytes.len() < ttf.len(),
        "the tables were not compressed"
    );
    let sfnt = woff::to_sfnt(Path::new("f.woff"), &woff_bytes).unwrap();
    assert_eq!(tables(&sfnt), tables(&ttf));
    let (a, b) = (
        FontRef::try_from_slice(&ttf).unwrap(),
        FontRef::try_from_slice(&sfnt).unwrap(),
    );
    for d in '0'..='9' {
        assert_eq!(a.glyph_id(d), b.glyph_id(d));
        assert_ne!(b.glyph_id(d).0, 0, "{d} has no glyph");
    }
}

#[test]
fn damaged_woff_is_refused_naming_the_file() {
    let mut bytes = to_woff(&fixture());
    bytes.truncate(bytes.len() / 2);
    let msg = woff::to_sfnt(Path::new("caveat.woff"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("caveat.woff") && msg.contains("not a valid WOFF"),
        "{msg}"
    );
    let msg = woff::to_sfnt(Path::new("x.ttf"), &fixture())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no wOFF signature"), "{msg}");
}
