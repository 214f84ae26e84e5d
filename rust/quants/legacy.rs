//! The legacy 32-weight blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml-quants.c
//! `quantize_row_*_ref`). Quantization matches gguf-py's numpy quantizers byte
//! for byte, which in turn match ggml's reference code: a scale from the
//! block's extreme value, truncation after adding 0.5 (or rounding half away
//! from zero for Q8_0).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{Block, QType};

pub const QK4_0: usize = 32;
pub const QK8_0: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Low nibble of byte j: weight j; high nibble: weight j + 16.
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Fifth bit of weight j at bit j (little-endian u32).
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// The value of largest magnitude (first one on ties), sign kept.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Pack 32 codes of up to 4 bits: low nibbles from the first half.
fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (q[j] & 0x0f) | (q[j + 16] << 4))
}

fn pack_high_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | (((v as u32 >> 4) & 1) << j));
    bits.to_le_bytes()
}

/// Codes of a 32-weight block: low nibbles, plus the fifth bit from `qh`.
fn unpack(qs: &[u8; 16], qh: Option<&[u8; 4]>) -> [u8; 32] {
    let high = qh.map_or(0, |h| u32::from_le_bytes(*h));
    std::array::from_fn(|j| {
        let nib = if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        };
        nib | ((((high >> j) & 1) as u8) << 4)
    })
}

/// Symmetric codes `trunc(x / d + offset)` clamped to `max_code`, d = max / -offset_int.
fn symmetric_codes(x: &[f32], half_range: f32, max_code: u8) -> (f32, [u8; 32]) {
    let d = signed_absmax(x) / -half_range;
    let id = inverse(d);
    let q = std::array::from_fn(|j| ((x[j] * id + (half_range + 0.5)).trunc() as u8).min(max_code));
    (d, q)
}

/// Affine codes `trunc((x - min) / d + 0.5)`, d = (max - min) / max_code.
fn affine_codes(x: &[f32], max_code: u8) -> (f32, f32, [u8; 32]) {
    let (min, max) = min_max(x);
    let d = (max - min) / max_code as f32;
    let id = inverse(d);
    let q = std::array::from_fn(|j| (((x[j] - min) * id + 0.5).trunc() as u8).min(max_code));
    (d, min, q)
}

fn dot_codes(q: &[u8; 32], offset: f32, x: &[f32]) -> f32 {
    q.iter().zip(x).map(|(&c, a)| (c as f32 - offset) * a).sum()
}

impl Block for BlockQ4_0 {
    const QTYPE: QType = QType::Q4_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, q) = symmetric_codes(x, 8.0, 15);
            block.d = f16::from_f32(d);
            block.qs = pack_nibbles(&q);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let d = block.d.to_f32();
            for (v, c) in y.iter_mut().zip(unpack(&block.qs, None)) {
                *v = d * (c as i8 - 8) as f32;
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| b.d.to_f32() * dot_codes(&unpack(&b.qs, None), 8.0, xs))
            .sum()
    }
}

impl Block for BlockQ4_1 {
    const QTYPE: QType = QType::Q4_1;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, m, q) = affine_codes(x, 15);
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qs = pack_nibbles(&q);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let (d, m) = (block.d.to_f32(), block.m.to_f32());
            for (v, c) in y.iter_mut().zip(unpack(&block.qs, None)) {
                *v = d * c as f32 + m;
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let q = unpack(&b.qs, None);
                b.d.to_f32() * dot_codes(&q, 0.0, xs) + b.m.to_f32() * xs.iter().sum::<f32>()
            })
            .sum()
    }
}

impl Block for BlockQ5_0 {
    const QTYPE: QType = QType::Q5_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, q) = symmetric_codes(x, 16.0, 31);
            block.d = f16::from_f32(d);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let d = block.d.to_f32();
            for (v, c) in y.iter_mut().zip(unpack(&block.qs, Some(&block.qh))) {
                *v = d * (c as i8 - 16) as f32;
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| b.d.to_f32() * dot_codes(&unpack(&b.qs, Some(&b.qh)), 16.0, xs))
            .sum()
    }
}

impl Block for BlockQ5_1 {
    const QTYPE: QType = QType::Q5_1;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, m, q) = affine_codes(x, 31);
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let (d, m) = (block.d.to_f32(), block.m.to_f32());
            for (v, c) in y.iter_mut().zip(unpack(&block.qs, Some(&block.qh))) {
                *v = d * c as f32 + m;
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let q = unpack(&b.qs, Some(&b.qh));
                b.d.to_f32() * dot_codes(&q, 0.0, xs) + b.m.to_f32() * xs.iter().sum::<f32>()
            })
            .sum()
    }
}

impl Block for BlockQ8_0 {
    const QTYPE: QType = QType::Q8_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK8_0)) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = inverse(d);
            block.d = f16::from_f32(d);
            for (q, v) in block.qs.iter_mut().zip(x) {
                // f32::round rounds half away from zero, as C's roundf.
                *q = (v * id).round() as i8;
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
            let d = block.d.to_f32();
            for (v, &q) in y.iter_mut().zip(&block.qs) {
                *v = q as f32 * d;
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK8_0))
            .map(|(b, xs)| {
                b.d.to_f32() * b.qs.iter().zip(xs).map(|(&q, a)| q as f32 * a).sum::<f32>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<B: Block>(x: &[f32]) -> Vec<f32> {
        let mut blocks = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
        B::quantize_row(x, &mut blocks, None);
        let mut y = vec![0f32; x.len()];
        B::dequantize_row(&blocks, &mut y);
        y
    }

    #[test]
    fn legacy_round_trip_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 8.0)
            .collect();
        let step = 8.0 / 8.0; // absmax / 8 for Q4_0
        for (a, b) in x.iter().zip(round_trip::<BlockQ4_0>(&x)) {
            assert!((a - b).abs() <= step * 0.5 + 1e-3, "{a} vs {b}");
        }
        for (a, b) in x.iter().zip(round_trip::<BlockQ8_0>(&x)) {
            assert!((a - b).abs() <= 4.0 / 127.0 * 0.5 + 1e-2, "{a} vs {b}");
        }
    }

    #[test]
    fn all_zero_block_stays_zero() {
        let x = [0f32; 32];
        assert!(round_trip::<BlockQ4_1>(&x).iter().all(|v| *v == 0.0));
        assert!(round_trip::<BlockQ5_0>(&x).iter().all(|v| *v == 0.0));
    }
}
