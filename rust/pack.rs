//! Integer packing of the GPTQ checkpoint format (AutoGPTQ / GPTQModel
//! `qweight` and `qzeros`): `bits`-bit codes laid end to end, least
//! significant bit first, in 32-bit words. For 2, 4 and 8 bits a word holds
//! `32 / bits` whole codes; for 3 bits 32 codes fill three words with codes
//! 10 and 21 split across word boundaries, which is the same bit stream.
//!
//! Packing runs along the last (contiguous) axis of a row-major matrix; the
//! checkpoint writer transposes `qweight` so that it packs along the input
//! features.

use rayon::prelude::*;

use crate::error::{Error, Result};

fn check(bits: u32, len: usize) -> Result<usize> {
    if !(1..=8).contains(&bits) {
        return Err(Error::Value(format!(
            "packing needs 1..=8 bits, got {bits}"
        )));
    }
    if (len * bits as usize) % 32 != 0 {
        return Err(Error::Shape(format!(
            "{len} codes of {bits} bits do not fill whole 32-bit words"
        )));
    }
    Ok(len * bits as usize / 32)
}

/// Pack each row of `codes` (rows × cols) into rows × (cols·bits/32) words.
pub fn pack_rows(codes: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
    let words = check(bits, cols)?;
    if codes.len() != rows * cols {
        return Err(Error::Shape(format!(
            "{} codes, expected {rows}×{cols}",
            codes.len()
        )));
    }
    let limit = 1u64 << bits;
    if let Some(i) = codes.iter().position(|&c| c as u64 >= limit) {
        return Err(Error::Value(format!(
            "code {} at row {}, column {} does not fit in {bits} bits",
            codes[i],
            i / cols,
            i % cols
        )));
    }
    let mut out = vec![0u32; rows * words];
    if words == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(words)
        .zip(codes.par_chunks(cols))
        .for_each(|(dst, src)| {
            for (k, &c) in src.iter().enumerate() {
                let bit = k * bits as usize;
                let (word, shift) = (bit / 32, bit % 32);
                let v = c as u64;
                dst[word] |= (v << shift) as u32;
                if shift + bits as usize > 32 {
                    dst[word + 1] |= (v >> (32 - shift)) as u32;
                }
            }
        });
    Ok(out)
}

/// Inverse of [`pack_rows`]: rows × (cols·bits/32) words into rows × cols codes.
pub fn unpack_rows(words: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
    let per_row = check(bits, cols)?;
    if words.len() != rows * per_row {
        return Err(Error::Shape(format!(
            "{} words, expected {rows}×{per_row}",
            words.len()
        )));
    }
    let mut out = vec![0u32; rows * cols];
    if cols == 0 {
        return Ok(out);
    }
    let mask = (1u64 << bits) - 1;
    out.par_chunks_mut(cols)
        .zip(words.par_chunks(per_row.max(1)))
        .for_each(|(dst, src)| {
            for (k, c) in dst.iter_mut().enumerate() {
                let bit = k * bits as usize;
                let (word, shift) = (bit / 32, bit % 32);
                let mut v = (src[word] as u64) >> shift;
                if shift + bits as usize > 32 {
                    v |= (src[word + 1] as u64) << (32 - shift);
                }
                *c = (v & mask) as u32;
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_packs_eight_per_word() {
        let codes: Vec<u32> = (0..8).collect();
        let p = pack_rows(&codes, 1, 8, 4).unwrap();
        assert_eq!(p, vec![0x7654_3210]);
    }

    #[test]
    fn three_bit_splits_codes_ten_and_twenty_one() {
        let mut codes = vec![0u32; 32];
        codes[10] = 0b111;
        codes[21] = 0b101;
        let p = pack_rows(&codes, 1, 32, 3).unwrap();
        assert_eq!(p[0], 0b11 << 30);
        assert_eq!(p[1], 1 | (1 << 31));
        assert_eq!(p[2], 0b10);
        assert_eq!(unpack_rows(&p, 1, 32, 3).unwrap(), codes);
    }

    #[test]
    fn round_trip_every_width() {
        for bits in [2u32, 3, 4, 8] {
            let cols = 64;
            let codes: Vec<u32> = (0..2 * cols as u32)
                .map(|i| (i * 7 + 3) % (1 << bits))
                .collect();
            let p = pack_rows(&codes, 2, cols, bits).unwrap();
            assert_eq!(p.len(), 2 * cols * bits as usize / 32);
            assert_eq!(unpack_rows(&p, 2, cols, bits).unwrap(), codes);
        }
    }

    #[test]
    fn bad_shapes_and_codes_are_errors() {
        assert!(pack_rows(&[0; 10], 1, 10, 4).is_err());
        assert!(pack_rows(&[16; 8], 1, 8, 4).is_err());
    }
}
