//! WOFF 1.0 (W3C, 2012) to plain sfnt (TrueType/OpenType) bytes, so that web-font packages can
//! be rasterised by the same font reader as system fonts. A WOFF file is the sfnt's tables, each
//! zlib-compressed when that made it smaller, behind a 44-byte header and a 20-byte directory
//! entry per table; decoding rebuilds the sfnt offset table and directory and 4-byte-aligns the
//! tables. WOFF 2 (Brotli and transformed glyph tables) is not read.

use std::io::Read;
use std::path::Path;

use crate::data::error::{DataError, Result};

const WOFF_SIGNATURE: u32 = 0x774F_4646; // "wOFF"
const HEADER_LEN: usize = 44;
const ENTRY_LEN: usize = 20;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes WOFF 1.0 `bytes` (read from `path`, named in errors) into sfnt bytes.
pub fn to_sfnt(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let bad = |what: String| DataError::format(path, format!("not a valid WOFF file: {what}"));
    if bytes.len() < HEADER_LEN || u32_at(bytes, 0) != WOFF_SIGNATURE {
        return Err(bad("no wOFF signature".into()));
    }
    let flavor = u32_at(bytes, 4);
    let num_tables = u16_at(bytes, 12) as usize;
    if num_tables == 0 || HEADER_LEN + num_tables * ENTRY_LEN > bytes.len() {
        return Err(bad(format!("{num_tables} tables do not fit the file")));
    }
    let mut tables = Vec::with_capacity(num_tables);
    for i in 0..num_tables {
        let e = HEADER_LEN + i * ENTRY_LEN;
        let (tag, offset, comp_len, orig_len, checksum) = (
            u32_at(bytes, e),
            u32_at(bytes, e + 4) as usize,
            u32_at(bytes, e + 8) as usize,
            u32_at(bytes, e + 12) as usize,
            u32_at(bytes, e + 16),
        );
        let data = bytes
            .get(offset..offset.saturating_add(comp_len))
            .ok_or_else(|| bad(format!("table {i} lies outside the file")))?;
        let data = if comp_len < orig_len {
            let mut out = Vec::with_capacity(orig_len);
            flate2::read::ZlibDecoder::new(data)
                .take(orig_len as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("table {i}: {e}")))?;
            out
        } else {
            data.to_vec()
        };
        if data.len() != orig_len {
            return Err(bad(format!(
                "table {i} is {} bytes, its entry says {orig_len}",
                data.len()
            )));
        }
        tables.push((tag, checksum, data));
    }
    // the sfnt offset table: binary-search fields as the OpenType spec defines them
    let pow2 = 1usize << (usize::BITS - 1 - num_tables.leading_zeros());
    let search_range = (pow2 * 16) as u16;
    let entry_selector = pow2.trailing_zeros() as u16;
    let range_shift = (num_tables * 16) as u16 - search_range;
    let mut out = Vec::new();
    out.extend(flavor.to_be_bytes());
    out.extend((num_tables as u16).to_be_bytes());
    out.extend(search_range.to_be_bytes());
    out.extend(entry_selector.to_be_bytes());
    out.extend(range_shift.to_be_bytes());
    let mut offset = 12 + 16 * num_tables;
    for (tag, checksum, data) in &tables {
        out.extend(tag.to_be_bytes());
        out.extend(checksum.to_be_bytes());
        out.extend((offset as u32).to_be_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        offset += data.len().div_ceil(4) * 4;
    }
    for (_, _, data) in &tables {
        out.extend(data);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
    Ok(out)
}
