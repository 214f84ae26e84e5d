//! Matrix-times-activations kernels that read GGUF blocks in place (no
//! dequantized copy of the weights).
//!
//! As in llama.cpp, activations are quantized to 8 bits per 32 values
//! ([`BlockQ8A`], the analogue of ggml's `block_q8_0`/`block_q8_1`) and the
//! weight codes are multiplied with them in integers; the block scales are
//! applied once per 32 (or 16) products. Float weights (F32, F16, BF16) take
//! f32 activations instead.
//!
//! Each block type has a portable kernel ([`portable`], written over a common
//! "group" view of every block) and the hot types have AVX2 kernels
//! ([`avx2`]), picked at run time. Every kernel computes one weight row
//! against all tokens of the batch, so a block is decoded once per tile of
//! tokens: that is what makes prompt processing faster than token-by-token.

pub mod avx2;
pub mod portable;

use std::borrow::Cow;
use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quants::{blocks_of, float, iq4, k_quants, legacy, with_block, Block, QType};

/// 32 activations quantized to i8 with one f32 scale, plus the sums of the
/// codes of each half and the scaled total (for the weight types with an offset or per-16 minimum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ8A {
    pub d: f32,
    /// `d` times the sum of all 32 codes (ggml `block_q8_1::s`).
    pub dsum: f32,
    pub sum: [i16; 2],
    pub qs: [i8; 32],
}

/// Activations of a batch: `ntok` rows of `cols` f32 values, and their 8-bit
/// form when `cols` divides into 32-blocks.
pub struct Acts<'a> {
    pub x: &'a [f32],
    pub q8: Vec<BlockQ8A>,
    pub ntok: usize,
    pub cols: usize,
}

impl<'a> Acts<'a> {
    /// Wrap `x` (`ntok × cols`, row-major) and quantize it to 8 bits.
    pub fn new(x: &'a [f32], cols: usize) -> Result<Self> {
        if cols == 0 || x.len() % cols != 0 {
            return Err(Error::Shape(format!(
                "{} activations do not make rows of {cols}",
                x.len()
            )));
        }
        let ntok = x.len() / cols;
        let q8 = if cols % 32 == 0 {
            let mut q8 = vec![BlockQ8A::default(); x.len() / 32];
            q8.par_chunks_mut(256)
                .zip(x.par_chunks(256 * 32))
                .for_each(|(dst, src)| quantize_acts(src, dst));
            q8
        } else {
            Vec::new()
        };
        Ok(Acts { x, q8, ntok, cols })
    }

    /// Activation blocks of all tokens (token `t` at `t * cols / 32`).
    pub fn q8(&self) -> &[BlockQ8A] {
        &self.q8
    }
}

/// Quantize activations to [`BlockQ8A`] (round to nearest, scale = absmax / 127, the
/// codes computed with the f32 scale, the scale kept at f16 precision: `quantize_row_q8_0`).
pub fn quantize_acts(x: &[f32], dst: &mut [BlockQ8A]) {
    for (blk, xs) in dst.iter_mut().zip(x.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i16; 2];
        for (j, (q, v)) in blk.qs.iter_mut().zip(xs).enumerate() {
            *q = (v * id).round() as i8;
            sums[j / 16] += *q as i16;
        }
        // Stored through f16 as ggml's block_q8_0/q8_1 do, so products agree with llama.cpp's.
        blk.d = half::f16::from_f32(d).to_f32();
        blk.sum = sums;
        blk.dsum = blk.d * (sums[0] as i32 + sums[1] as i32) as f32;
    }
}

/// A weight row type the kernels can multiply: `row_dot` writes, for every
/// token `t` of `acts`, `out[t] = dot(row, activations of t)`.
pub trait RowDot: Block {
    /// Whether the kernels read the 8-bit activations (else the f32 ones).
    const Q8_ACTS: bool = true;

    /// The plain kernel, present for every type and every CPU.
    fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]);

    /// The fastest kernel for this CPU; defaults to the portable one.
    fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32]) {
        Self::row_dot_portable(row, acts, out)
    }
}

/// Whether the AVX2 + FMA + F16C kernels can run here (checked once).
pub fn has_avx2() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("FERROQUANT_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The instruction set the dispatch picked, for reports.
pub fn isa() -> &'static str {
    if has_avx2() {
        "avx2+fma+f16c"
    } else {
        "portable"
    }
}

macro_rules! q8_portable {
    ($($B:ty),*) => {$(
        impl RowDot for $B {
            fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]) {
                portable::dot_groups(row, acts.q8(), out)
            }
        }
    )*};
}
q8_portable!(k_quants::BlockQ2K, k_quants::BlockQ3K);

macro_rules! q8_dispatch {
    ($($B:ty => $kernel:ident),*) => {$(
        impl RowDot for $B {
            fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]) {
                portable::dot_groups(row, acts.q8(), out)
            }
            fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32]) {
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked above);
                    // `acts` holds `out.len()` tokens of `row.len()` blocks.
                    unsafe { avx2::$kernel(row, acts.q8(), out) };
                    return;
                }
                portable::dot_groups(row, acts.q8(), out)
            }
        }
    )*};
}
q8_dispatch!(
    legacy::BlockQ4_0 => q4_0,
    legacy::BlockQ4_1 => q4_1,
    legacy::BlockQ5_0 => q5_0,
    legacy::BlockQ5_1 => q5_1,
    legacy::BlockQ8_0 => q8_0,
    k_quants::BlockQ4K => q4_k,
    k_quants::BlockQ5K => q5_k,
    k_quants::BlockQ6K => q6_k,
    iq4::BlockIQ4XS => iq4_xs,
    iq4::BlockIQ4NL => iq4_nl
);

impl RowDot for float::BlockF32 {
    const Q8_ACTS: bool = false;
    fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]) {
        portable::dot_float(row, acts, out, |b| b.value)
    }
    fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2/FMA present; `acts.x` holds `out.len()` rows of `row.len()`.
            unsafe { avx2::f32_rows(bytemuck::cast_slice(row), acts.x, out) };
            return;
        }
        Self::row_dot_portable(row, acts, out)
    }
}

impl RowDot for float::BlockF16 {
    const Q8_ACTS: bool = false;
    fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]) {
        portable::dot_float(row, acts, out, |b| b.value.to_f32())
    }
    fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2/FMA/F16C present; `acts.x` holds `out.len()` rows of `row.len()`.
            unsafe { avx2::f16_rows(bytemuck::cast_slice(row), acts.x, out) };
            return;
        }
        Self::row_dot_portable(row, acts, out)
    }
}

impl RowDot for float::BlockBF16 {
    const Q8_ACTS: bool = false;
    fn row_dot_portable(row: &[Self], acts: &Acts, out: &mut [f32]) {
        portable::dot_float(row, acts, out, |b| b.to_f32())
    }
    fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2/FMA present; `acts.x` holds `out.len()` rows of `row.len()`.
            unsafe { avx2::bf16_rows(bytemuck::cast_slice(row), acts.x, out) };
            return;
        }
        Self::row_dot_portable(row, acts, out)
    }
}

/// A quantized weight matrix: `rows` rows of `cols` weights, row-major bytes.
#[derive(Clone, Copy)]
pub struct WeightView<'a> {
    pub qtype: QType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl WeightView<'_> {
    pub fn check(&self) -> Result<()> {
        let need = self.qtype.row_bytes(self.cols)? * self.rows;
        if self.bytes.len() != need {
            return Err(Error::Shape(format!(
                "{} weights of {} rows × {} columns need {need} bytes, {} given",
                self.qtype.name(),
                self.rows,
                self.cols,
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// `out[t][r] = dot(weight row r, activations of token t)`; `out` is
/// `acts.ntok × w.rows`, row-major. Parallel over weight rows.
pub fn matmul(w: &WeightView, acts: &Acts, out: &mut [f32]) -> Result<()> {
    w.check()?;
    if acts.cols != w.cols {
        return Err(Error::Shape(format!(
            "activations have {} columns, the weight {}",
            acts.cols, w.cols
        )));
    }
    if out.len() != acts.ntok * w.rows {
        return Err(Error::Shape(format!(
            "output holds {} values, {} tokens × {} rows need {}",
            out.len(),
            acts.ntok,
            w.rows,
            acts.ntok * w.rows
        )));
    }
    with_block!(w.qtype, B => matmul_typed::<B>(w, acts, out, false));
    Ok(())
}

/// [`matmul`] through the portable kernels only (for tests and comparisons).
pub fn matmul_portable(w: &WeightView, acts: &Acts, out: &mut [f32]) -> Result<()> {
    w.check()?;
    if acts.cols != w.cols || out.len() != acts.ntok * w.rows {
        return Err(Error::Shape("matmul_portable: shapes do not agree".into()));
    }
    with_block!(w.qtype, B => matmul_typed::<B>(w, acts, out, true));
    Ok(())
}

fn matmul_typed<B: RowDot>(w: &WeightView, acts: &Acts, out: &mut [f32], portable: bool) {
    let blocks: Cow<[B]> = blocks_of::<B>(w.bytes);
    let per_row = w.cols / B::BLOCK_SIZE;
    let ntok = acts.ntok;
    let threads = rayon::current_num_threads().max(1);
    let chunk = (w.rows / (threads * 8)).clamp(1, 4096);
    let run = |row: usize, dst: &mut [f32]| {
        let r = &blocks[row * per_row..(row + 1) * per_row];
        if portable {
            B::row_dot_portable(r, acts, dst)
        } else {
            B::row_dot(r, acts, dst)
        }
    };
    if ntok == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, dst)| {
            for (i, o) in dst.iter_mut().enumerate() {
                run(ci * chunk + i, std::slice::from_mut(o));
            }
        });
        return;
    }
    // Row-major [row][token] first, so each task writes one contiguous piece.
    let mut tmp = vec![0f32; w.rows * ntok];
    tmp.par_chunks_mut(chunk * ntok)
        .enumerate()
        .for_each(|(ci, dst)| {
            for (i, o) in dst.chunks_exact_mut(ntok).enumerate() {
                run(ci * chunk + i, o);
            }
        });
    out.par_chunks_mut(w.rows).enumerate().for_each(|(t, o)| {
        for (r, v) in o.iter_mut().enumerate() {
            *v = tmp[r * ntok + t];
        }
    });
}

/// Dequantize row `row` of a weight matrix into `dst` (`cols` values).
pub fn dequantize_row(w: &WeightView, row: usize, dst: &mut [f32]) -> Result<()> {
    if row >= w.rows {
        return Err(Error::Value(format!(
            "row {row} out of range ({} rows)",
            w.rows
        )));
    }
    let rb = w.qtype.row_bytes(w.cols)?;
    crate::quants::dequantize(w.qtype, &w.bytes[row * rb..(row + 1) * rb], w.cols, dst)
}

#[cfg(test)]
mod tests;
