//! GGUF block formats. One module per family, each block a `#[repr(C)]` struct
//! whose bytes are the bytes on disk, with its quantize, dequantize and dot
//! product side by side (as in ggml-quants.c and candle's `quantized`).
//!
//! The row-level entry points here check shapes and values once, then run the
//! family kernels over rows in parallel with rayon.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod float;
pub mod iq4;
pub mod k_quants;
pub mod legacy;
pub mod search;
pub mod types;

use std::borrow::Cow;

use bytemuck::Pod;
use rayon::prelude::*;

use crate::error::{Error, Result};
pub use types::{QType, TypeInfo, ALL_TYPES, QK_K};

/// One GGUF block type: its on-disk layout and its kernels.
pub trait Block: Pod + Send + Sync {
    const QTYPE: QType;
    /// Weights per block.
    const BLOCK_SIZE: usize = Self::QTYPE.block_size();

    /// Quantize one row; `src.len() == dst.len() * BLOCK_SIZE`. `imatrix`
    /// holds one importance weight per column of the row (llama.cpp's
    /// `quant_weights`); types whose search does not use it ignore it.
    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>);

    /// [`Block::quantize_row`] for input not yet checked: returns false, leaving `dst`
    /// unspecified, when `src` holds a NaN or an infinity. The default checks the row
    /// first (it is then in L1 for the quantizer); the fast kernels fuse the check into
    /// their pass over the values.
    fn quantize_row_checked(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) -> bool {
        if !all_finite(src) {
            return false;
        }
        Self::quantize_row(src, dst, imatrix);
        true
    }

    /// Dequantize one row; `dst.len() == src.len() * BLOCK_SIZE`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]);

    /// Dot product of a quantized row with f32 activations. The default
    /// dequantizes block by block; families override it with fused kernels.
    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut buf = vec![0f32; Self::BLOCK_SIZE];
        let mut sum = 0f32;
        for (block, xs) in src.iter().zip(x.chunks_exact(Self::BLOCK_SIZE)) {
            Self::dequantize_row(std::slice::from_ref(block), &mut buf);
            sum += buf.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
        }
        sum
    }
}

/// Run `$body` with `$B` bound to the block struct of `$qtype` (also used by `simd`).
macro_rules! with_block {
    ($qtype:expr, $B:ident => $body:expr) => {
        match $qtype {
            $crate::quants::QType::F32 => {
                type $B = $crate::quants::float::BlockF32;
                $body
            }
            $crate::quants::QType::F16 => {
                type $B = $crate::quants::float::BlockF16;
                $body
            }
            $crate::quants::QType::BF16 => {
                type $B = $crate::quants::float::BlockBF16;
                $body
            }
            $crate::quants::QType::Q4_0 => {
                type $B = $crate::quants::legacy::BlockQ4_0;
                $body
            }
            $crate::quants::QType::Q4_1 => {
                type $B = $crate::quants::legacy::BlockQ4_1;
                $body
            }
            $crate::quants::QType::Q5_0 => {
                type $B = $crate::quants::legacy::BlockQ5_0;
                $body
            }
            $crate::quants::QType::Q5_1 => {
                type $B = $crate::quants::legacy::BlockQ5_1;
                $body
            }
            $crate::quants::QType::Q8_0 => {
                type $B = $crate::quants::legacy::BlockQ8_0;
                $body
            }
            $crate::quants::QType::Q2_K => {
                type $B = $crate::quants::k_quants::BlockQ2K;
                $body
            }
            $crate::quants::QType::Q3_K => {
                type $B = $crate::quants::k_quants::BlockQ3K;
                $body
            }
            $crate::quants::QType::Q4_K => {
                type $B = $crate::quants::k_quants::BlockQ4K;
                $body
            }
            $crate::quants::QType::Q5_K => {
                type $B = $crate::quants::k_quants::BlockQ5K;
                $body
            }
            $crate::quants::QType::Q6_K => {
                type $B = $crate::quants::k_quants::BlockQ6K;
                $body
            }
            $crate::quants::QType::IQ4_NL => {
                type $B = $crate::quants::iq4::BlockIQ4NL;
                $body
            }
            $crate::quants::QType::IQ4_XS => {
                type $B = $crate::quants::iq4::BlockIQ4XS;
                $body
            }
        }
    };
}

pub(crate) use with_block;

/// View bytes as blocks, copying only when the buffer is misaligned.
pub fn blocks_of<B: Block>(bytes: &[u8]) -> Cow<'_, [B]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(blocks) => Cow::Borrowed(blocks),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

/// Rows handed to one rayon task: enough work to amortize scheduling.
fn rows_per_task(cols: usize) -> usize {
    (1 << 16).max(cols).div_euclid(cols.max(1)).max(1)
}

/// Whether every value is finite: the largest magnitude's bits (as integers) stay below
/// the infinity's (branch-free, so it vectorizes).
#[inline]
pub(crate) fn all_finite(x: &[f32]) -> bool {
    let mut lanes = [0u32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for k in 0..16 {
            lanes[k] = lanes[k].max(c[k].to_bits() & 0x7fff_ffff);
        }
    }
    let tail = chunks.remainder().iter().map(|v| v.to_bits() & 0x7fff_ffff);
    lanes.into_iter().chain(tail).max().unwrap_or(0) < 0x7f80_0000
}

fn non_finite_error(src: &[f32], i: usize, cols: usize) -> Error {
    Error::Value(format!(
        "input holds a non-finite value ({}) at row {}, column {}",
        src[i],
        i / cols,
        i % cols
    ))
}

fn check_matrix(len: usize, cols: usize) -> Result<usize> {
    if cols == 0 {
        return Err(Error::Shape("rows must have at least one column".into()));
    }
    if len % cols != 0 {
        return Err(Error::Shape(format!(
            "{len} values do not make rows of {cols} columns"
        )));
    }
    Ok(len / cols)
}

/// Bytes needed for `rows × cols` weights of `qtype`.
pub fn quantized_size(qtype: QType, rows: usize, cols: usize) -> Result<usize> {
    Ok(qtype.row_bytes(cols)? * rows)
}

/// Quantize a row-major `rows × cols` matrix into `dst` (`rows × row_bytes`).
pub fn quantize(
    qtype: QType,
    src: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    let rows = check_matrix(src.len(), cols)?;
    let row_bytes = qtype.row_bytes(cols)?;
    if dst.len() != rows * row_bytes {
        return Err(Error::Shape(format!(
            "output buffer holds {} bytes, {rows} rows of {} need {}",
            dst.len(),
            qtype.name(),
            rows * row_bytes
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != cols {
            return Err(Error::Shape(format!(
                "imatrix has {} values, the rows have {cols} columns",
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::Value(format!(
                "imatrix value {} at column {i} is not a finite non-negative number",
                w[i]
            )));
        }
    }
    // The rows are checked as they are quantized (the kernels fuse the check into their
    // pass); when a task meets a non-finite value, the first one (lowest index) is looked
    // up afterwards.
    let chunk_rows = rows_per_task(cols);
    let chunk_len = cols * chunk_rows;
    let ok = with_block!(qtype, B => {
        dst.par_chunks_mut(row_bytes * chunk_rows)
            .zip(src.par_chunks(chunk_len))
            .map(|(out, inp)| quantize_chunk::<B>(inp, cols, imatrix, out))
            .reduce(|| true, |a, b| a & b)
    });
    if ok {
        return Ok(());
    }
    match src.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(non_finite_error(src, i, cols)),
        None => Err(Error::Value("input holds a non-finite value".into())),
    }
}

/// Quantize whole rows; false when one of them holds a non-finite value.
fn quantize_chunk<B: Block>(
    src: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> bool {
    let row_bytes = out.len() / (src.len() / cols);
    match bytemuck::try_cast_slice_mut::<u8, B>(out) {
        Ok(blocks) => {
            let per_row = row_bytes / std::mem::size_of::<B>();
            let mut ok = true;
            for (row, dst) in src.chunks_exact(cols).zip(blocks.chunks_exact_mut(per_row)) {
                ok &= B::quantize_row_checked(row, dst, imatrix);
            }
            ok
        }
        Err(_) => {
            let mut tmp = vec![B::zeroed(); out.len() / std::mem::size_of::<B>()];
            let ok = quantize_chunk::<B>(src, cols, imatrix, bytemuck::cast_slice_mut(&mut tmp));
            out.copy_from_slice(bytemuck::cast_slice(&tmp));
            ok
        }
    }
}

/// Dequantize `rows × row_bytes` bytes of `qtype` into `dst` (`rows × cols`).
pub fn dequantize(qtype: QType, src: &[u8], cols: usize, dst: &mut [f32]) -> Result<()> {
    let rows = check_matrix(dst.len(), cols)?;
    let row_bytes = qtype.row_bytes(cols)?;
    if src.len() != rows * row_bytes {
        return Err(Error::Shape(format!(
            "{} bytes given, {rows} rows × {cols} columns of {} need {}",
            src.len(),
            qtype.name(),
            rows * row_bytes
        )));
    }
    let chunk_rows = rows_per_task(cols);
    with_block!(qtype, B => {
        dst.par_chunks_mut(cols * chunk_rows)
            .zip(src.par_chunks(row_bytes * chunk_rows))
            .for_each(|(out, inp)| {
                let blocks = blocks_of::<B>(inp);
                B::dequantize_row(&blocks, out);
            });
    });
    Ok(())
}

/// Dot product of one quantized row with `x`.
pub fn vec_dot(qtype: QType, row: &[u8], x: &[f32]) -> Result<f32> {
    let row_bytes = qtype.row_bytes(x.len())?;
    if row.len() != row_bytes {
        return Err(Error::Shape(format!(
            "row holds {} bytes, {} columns of {} need {row_bytes}",
            row.len(),
            x.len(),
            qtype.name()
        )));
    }
    Ok(with_block!(qtype, B => B::vec_dot(&blocks_of::<B>(row), x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_structs_match_the_type_table() {
        for qtype in ALL_TYPES {
            let size = with_block!(qtype, B => std::mem::size_of::<B>());
            let block = with_block!(qtype, B => B::BLOCK_SIZE);
            assert_eq!(size, qtype.type_size(), "{}", qtype.name());
            assert_eq!(block, qtype.block_size(), "{}", qtype.name());
        }
    }

    #[test]
    fn names_round_trip() {
        for qtype in ALL_TYPES {
            assert_eq!(QType::from_name(qtype.name()).unwrap(), qtype);
            assert_eq!(QType::from_id(qtype as u32).unwrap(), qtype);
        }
        assert!(QType::from_name("Q9_9").is_err());
    }
}
