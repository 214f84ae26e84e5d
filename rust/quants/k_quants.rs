//! K-quants: 256-weight super-blocks of 16 or 32-weight sub-blocks whose
//! scales (and mins) are themselves quantized to 4, 6 or 8 bits (ggml-quants.c,
//! `block_q2_K` .. `block_q6_K`).
//!
//! Quantization follows ggml's reference quantizers (`quantize_row_q*_K_ref`)
//! without an imatrix and ggml's weighted ones (`quantize_row_q*_K_impl`, as
//! used by `quantize_q*_K` with `quant_weights`) with one, so the bytes match
//! llama.cpp's files; the scale searches live in [`super::search`].
//! Dequantization keeps gguf-py's float operation order, so it is bit-exact
//! with `gguf.quants.dequantize` (e.g. Q4_K: `(d * sc) * q - dmin * m`).

// Index loops mirror ggml's, which keeps the float order easy to check against it.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::legacy::dispatch;
use super::search::{
    make_q3_quants_lanes, make_qkx_quants_lanes, make_qp_quants, make_qx_quants,
    make_qx_quants_lanes, nearest_int, GROUP_MAX_EPS,
};
use super::{Block, QType, QK_K};

/// Q2_K: 16 sub-blocks of 16 weights, 2-bit codes, 4-bit scale and min each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Sub-block j: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// Weight 128*g + 32*s + l: bits 2s..2s+2 of byte 32*g + l.
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K: 16 sub-blocks of 16 weights, 3-bit codes, signed 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// Weight j: third code bit at bit j / 32 of byte j % 32.
    pub hmask: [u8; QK_K / 8],
    /// Low two code bits, laid out as Q2_K's `qs`.
    pub qs: [u8; QK_K / 4],
    /// 16 six-bit scales (offset 32): low nibbles in bytes 0..8, high pairs in 8..12.
    pub scales: [u8; 12],
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32 weights, 4-bit codes, 6-bit scale and min each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    /// 8 six-bit scales and 8 six-bit mins (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// Weight 64*g + l: low nibble of byte 32*g + l; weight 64*g + 32 + l: high nibble.
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: Q4_K plus a fifth code bit per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Weight 64*g + l: bit 2g of byte l; weight 64*g + 32 + l: bit 2g + 1.
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16 weights, 6-bit codes (offset 32), 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low nibbles: weight 128*g + 32*s + l in byte 64*g + 32*(s & 1) + l, high half if s >= 2.
    pub ql: [u8; QK_K / 2],
    /// High two bits: weight 128*g + 32*s + l at bits 2s..2s+2 of byte 32*g + l.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

// ---------------------------------------------------------------- helpers

/// Sub-group `j` of `N` values of a block.
#[inline(always)]
fn group<const N: usize>(x: &[f32], j: usize) -> &[f32; N] {
    x[N * j..N * (j + 1)]
        .try_into()
        .expect("group lies inside the block")
}

#[inline(always)]
fn block_of(x: &[f32]) -> &[f32; QK_K] {
    x.try_into().expect("a super-block holds QK_K values")
}

/// Sum of squares in index order (ggml's `sum_x2` / `sumx2` loops).
#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

#[inline(always)]
fn sum_ordered(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v;
    }
    s
}

/// ggml's `qw[l] * sqrtf(sigma2 + x[l]*x[l])` importance weights.
#[inline(always)]
fn imatrix_weights<const N: usize>(qw: &[f32], x: &[f32; N], sigma2: f32) -> [f32; N] {
    std::array::from_fn(|l| qw[l] * (sigma2 + x[l] * x[l]).sqrt())
}

/// Round through f16 as ggml stores a scale: the stored half and its value.
#[inline(always)]
fn f16_round(v: f32) -> (f16, f32) {
    let h = f16::from_f32(v);
    (h, h.to_f32())
}

/// Scale and min of sub-block `j` from the 12 packed bytes of Q4_K/Q5_K
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Pack 8 scales and 8 mins as ggml does; codes above 63 are packed with
/// the same (truncating) bit operations as ggml, not clamped.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The signed 6-bit scale `j` of Q3_K (offset removed).
#[inline(always)]
fn q3_scale(j: usize, s: &[u8; 12]) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8).wrapping_sub(32)
}

/// Pack 16 six-bit Q3_K scale codes (0..64).
fn pack_q3_scales(codes: &[i8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &c) in codes.iter().enumerate() {
        let l = c as i32;
        if j < 8 {
            s[j] = (l & 0xF) as u8;
        } else {
            s[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        s[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
    s
}

/// 2-bit packing of Q2_K/Q3_K: weight 128*g + 32*s + l at bits 2s of byte 32*g + l.
fn pack_2bit(codes: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for (q, c) in qs.chunks_exact_mut(32).zip(codes.chunks_exact(128)) {
        for l in 0..32 {
            q[l] = c[l] | (c[32 + l] << 2) | (c[64 + l] << 4) | (c[96 + l] << 6);
        }
    }
    qs
}

#[inline(always)]
fn unpack_2bit(qs: &[u8; QK_K / 4], i: usize) -> u8 {
    let (g, s, l) = (i / 128, (i / 32) % 4, i % 32);
    (qs[32 * g + l] >> (2 * s)) & 3
}

/// Re-derive codes from the stored (f16-rounded) scales, as ggml does after
/// quantizing the scales: `code = clamp(round((x + m) / d), lo, hi) - lo`.
/// Sub-blocks with a zero scale keep the codes of the search.
#[inline(always)]
fn requantize<const N: usize>(x: &[f32; N], d: f32, m: f32, lo: i32, hi: i32, out: &mut [u8; N]) {
    // ggml's `if (!d) continue;`
    if d == 0.0 {
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (nearest_int((v + m) / d).max(lo).min(hi) - lo) as u8;
    }
}

/// Σ q·x and Σ x over one sub-block, eight lanes at a time.
#[inline(always)]
fn dot_and_sum<const N: usize>(q: &[f32; N], x: &[f32]) -> (f32, f32) {
    let mut acc = [0f32; 8];
    let mut sx = [0f32; 8];
    for (qc, xc) in q.chunks_exact(8).zip(x.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += qc[k] * xc[k];
            sx[k] += xc[k];
        }
    }
    (acc.iter().sum(), sx.iter().sum())
}

#[inline(always)]
fn dot<const N: usize>(q: &[f32; N], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (qc, xc) in q.chunks_exact(8).zip(x.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += qc[k] * xc[k];
        }
    }
    acc.iter().sum()
}

/// Codes of one block as floats, then `Σ_j scale_j Σ q x - min_j Σ x`.
#[inline(always)]
fn affine_dot<const N: usize>(
    codes: &[f32; QK_K],
    scale_min: impl Fn(usize) -> (f32, f32),
    x: &[f32],
) -> f32 {
    let mut total = 0f32;
    for j in 0..QK_K / N {
        let (qx, sx) = dot_and_sum(group::<N>(codes, j), &x[N * j..N * (j + 1)]);
        let (d, m) = scale_min(j);
        total += d * qx - m * sx;
    }
    total
}

// ---------------------------------------------------------------- Q2_K

fn quantize_q2k_ref(x: &[f32; QK_K], y: &mut BlockQ2K) {
    let mut codes = [[0u8; 16]; 16];
    let weights: [f32; QK_K] = std::array::from_fn(|l| x[l].abs());
    let (scales, mins) =
        make_qkx_quants_lanes::<16, 16, false>(3, x, &weights, &mut codes, -0.5, 0.1, 15, true);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    const Q4SCALE: f32 = 15.0;
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            y.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y.d = f16::from_f32(max_scale / Q4SCALE);
    } else {
        y.scales = [0; 16];
        y.d = f16::from_f32(0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            y.scales[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        y.dmin = f16::from_f32(max_min / Q4SCALE);
    } else {
        y.dmin = f16::from_f32(0.0);
    }
    finish_q2k(x, y, &mut codes);
}

fn quantize_q2k_weighted(x: &[f32; QK_K], qw: &[f32], y: &mut BlockQ2K) {
    let mut codes = [[0u8; 16]; 16];
    let sigma2 = sum_squares(x) / QK_K as f32;
    let weight = imatrix_weights::<QK_K>(qw, x, sigma2);
    let sw: [f32; 16] = std::array::from_fn(|j| sum_ordered(group::<16>(&weight, j)));
    let (scales, mins) =
        make_qkx_quants_lanes::<16, 16, true>(3, x, &weight, &mut codes, -0.9, 0.05, 36, false);
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    y.d = f16::from_f32(dm);
    y.dmin = f16::from_f32(mm);
    y.scales = std::array::from_fn(|j| ls[j] | (lm[j] << 4));
    finish_q2k(x, y, &mut codes);
}

/// Requantize against the stored scales and pack the codes.
fn finish_q2k(x: &[f32; QK_K], y: &mut BlockQ2K, codes: &mut [[u8; 16]; 16]) {
    let (d, dmin) = (y.d.to_f32(), y.dmin.to_f32());
    for j in 0..16 {
        let sc = y.scales[j];
        let dl = d * (sc & 0xF) as f32;
        let ml = dmin * (sc >> 4) as f32;
        requantize(group::<16>(x, j), dl, ml, 0, 3, &mut codes[j]);
    }
    y.qs = pack_2bit(bytemuck::cast_ref(codes));
}

dispatch! {
    /// `dl * code - ml` a run of 32 weights (two sub-blocks) at a time.
    fn dequantize_q2k(src: &[BlockQ2K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (r, ys) in y.chunks_exact_mut(32).enumerate() {
                let (g, s) = (r / 4, r % 4);
                let q: &[u8; 32] = b.qs[32 * g..32 * g + 32].try_into().expect("32 bytes");
                for (h, ys) in ys.chunks_exact_mut(16).enumerate() {
                    let sc = b.scales[2 * r + h];
                    let dl = d * (sc & 0xF) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    for l in 0..16 {
                        ys[l] = dl * ((q[16 * h + l] >> (2 * s)) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

impl Block for BlockQ2K {
    const QTYPE: QType = QType::Q2_K;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        for (i, (y, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            match imatrix {
                None => quantize_q2k_ref(block_of(x), y),
                Some(w) => quantize_q2k_weighted(block_of(x), &w[QK_K * i..], y),
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dequantize_q2k(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let codes: [f32; QK_K] = std::array::from_fn(|i| unpack_2bit(&b.qs, i) as f32);
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let sm = |j: usize| {
                let sc = b.scales[j];
                (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32)
            };
            sum += affine_dot::<16>(&codes, sm, xs);
        }
        sum
    }
}

// ---------------------------------------------------------------- Q3_K

fn quantize_q3k(x: &[f32; QK_K], qw: Option<&[f32]>, y: &mut BlockQ3K) {
    let mut codes = [[0i8; 16]; 16];
    y.scales = [0; 12];
    match qw {
        None => {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            let scales = make_q3_quants_lanes::<16, 16>(4, x, &mut codes);
            for j in 0..16 {
                let scale = scales[j].abs();
                if scale > amax {
                    amax = scale;
                    max_scale = scales[j];
                }
            }
            // ggml's `if (max_scale)`: NaN counts as set.
            if max_scale != 0.0 || max_scale.is_nan() {
                let iscale = -32.0 / max_scale;
                let sc: [i8; 16] = std::array::from_fn(|j| {
                    let l = nearest_int(iscale * scales[j]) as i8;
                    l.clamp(-32, 31) + 32
                });
                y.scales = pack_q3_scales(&sc);
                y.d = f16::from_f32(1.0 / iscale);
            } else {
                y.d = f16::from_f32(0.0);
            }
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
            let weight = imatrix_weights::<QK_K>(qw, x, sigma2);
            let sw: [f32; 16] = std::array::from_fn(|j| sum_ordered(group::<16>(&weight, j)));
            let scales = make_qx_quants_lanes::<16, 16>(4, x, &mut codes, Some(&weight));
            let mut ls = [0i8; 16];
            let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
            y.scales = pack_q3_scales(&ls);
            y.d = f16::from_f32(d_block);
        }
    }
    let d = y.d.to_f32();
    let mut codes: [[u8; 16]; 16] = bytemuck::cast(codes);
    for j in 0..16 {
        let dl = d * q3_scale(j, &y.scales) as f32;
        requantize(group::<16>(x, j), dl, 0.0, -4, 3, &mut codes[j]);
    }
    let codes: &mut [u8; QK_K] = bytemuck::cast_mut(&mut codes);
    // Third code bit to hmask (branch-free: the bit is random), low two to qs.
    y.hmask = [0; QK_K / 8];
    for (s, c) in codes.chunks_exact_mut(32).enumerate() {
        for (h, v) in y.hmask.iter_mut().zip(c) {
            *h |= (*v >> 2) << s;
            *v &= 3;
        }
    }
    y.qs = pack_2bit(codes);
}

#[inline(always)]
fn q3_code(b: &BlockQ3K, i: usize) -> i8 {
    let low = unpack_2bit(&b.qs, i) as i8;
    let high = (b.hmask[i % 32] >> (i / 32)) & 1;
    low - (((high ^ 1) << 2) as i8)
}

dispatch! {
    /// `dl * q3_code` a run of 32 weights at a time (fixed shifts per run, so the
    /// loops vectorize).
    fn dequantize_q3k(src: &[BlockQ3K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let dl: [f32; 16] = std::array::from_fn(|j| d * q3_scale(j, &b.scales) as f32);
            for (r, ys) in y.chunks_exact_mut(32).enumerate() {
                let (g, s) = (r / 4, r % 4);
                let q: &[u8; 32] = b.qs[32 * g..32 * g + 32].try_into().expect("32 bytes");
                let mut codes = [0i8; 32];
                for l in 0..32 {
                    let low = ((q[l] >> (2 * s)) & 3) as i8;
                    let high = (b.hmask[l] >> r) & 1;
                    codes[l] = low - (((high ^ 1) << 2) as i8);
                }
                let (d0, d1) = (dl[2 * r], dl[2 * r + 1]);
                for l in 0..16 {
                    ys[l] = d0 * codes[l] as f32;
                    ys[16 + l] = d1 * codes[16 + l] as f32;
                }
            }
        }
    }
}

impl Block for BlockQ3K {
    const QTYPE: QType = QType::Q3_K;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        for (i, (y, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            quantize_q3k(block_of(x), imatrix.map(|w| &w[QK_K * i..]), y);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dequantize_q3k(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let codes: [f32; QK_K] = std::array::from_fn(|i| q3_code(b, i) as f32);
            let d = b.d.to_f32();
            for j in 0..16 {
                let qx = dot(group::<16>(&codes, j), &xs[16 * j..16 * (j + 1)]);
                sum += d * q3_scale(j, &b.scales) as f32 * qx;
            }
        }
        sum
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// The shared search of Q4_K and Q5_K (`nmax` 15 or 31): sets `d`, `dmin`
/// and `scales` of the block and returns the codes of the 8 sub-blocks.
fn quantize_k4_scales(
    x: &[f32; QK_K],
    qw: Option<&[f32]>,
    nmax: i32,
    clamp_weighted: bool,
) -> (f16, f16, [u8; 12], [[u8; 32]; 8]) {
    let mut codes = [[0u8; 32]; 8];
    let (d, dmin, packed) = match qw {
        None => {
            let (rmin, rdelta, nstep) = if nmax == 15 {
                (-1.0, 0.1, 20)
            } else {
                (-0.5, 0.1, 15)
            };
            let mut weights = [0f32; QK_K];
            for (w, xs) in weights.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
                let av_x = (sum_squares(xs) / 32.0).sqrt();
                for (w, v) in w.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
            }
            let (scales, mins) = make_qkx_quants_lanes::<32, 8, false>(
                nmax, x, &weights, &mut codes, rmin, rdelta, nstep, false,
            );
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..8 {
                if scales[j] > max_scale {
                    max_scale = scales[j];
                }
                if mins[j] > max_min {
                    max_min = mins[j];
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            let ls: [u8; 8] =
                std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
            let lm: [u8; 8] =
                std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
            (
                f16::from_f32(max_scale / 63.0),
                f16::from_f32(max_min / 63.0),
                pack_scale_min_k4(&ls, &lm),
            )
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
            let weights = imatrix_weights::<QK_K>(qw, x, sigma2);
            let sw: [f32; 8] = std::array::from_fn(|j| sum_ordered(group::<32>(&weights, j)));
            let (scales, mins) = make_qkx_quants_lanes::<32, 8, true>(
                nmax, x, &weights, &mut codes, -0.9, 0.05, 36, false,
            );
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
            if clamp_weighted {
                // Q5_K clamps the codes here, Q4_K does not.
                ls = ls.map(|v| v.min(63));
                lm = lm.map(|v| v.min(63));
            }
            (
                f16::from_f32(d_block),
                f16::from_f32(m_block),
                pack_scale_min_k4(&ls, &lm),
            )
        }
    };
    let (df, mf) = (d.to_f32(), dmin.to_f32());
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = df * sc as f32;
        let ml = mf * m as f32;
        requantize(group::<32>(x, j), dl, ml, 0, nmax, &mut codes[j]);
    }
    (d, dmin, packed, codes)
}

dispatch! {
    /// `dl * code - ml`, the two nibbles of 32 bytes at a time.
        fn dequantize_q4k(src: &[BlockQ4K], dst: &mut [f32]) {
            for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
                for (g, ys) in y.chunks_exact_mut(64).enumerate() {
                    let q = &b.qs[32 * g..32 * (g + 1)];
                    let (lo, hi) = ys.split_at_mut(32);
                    let (sc, m) = scale_min_k4(2 * g, &b.scales);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    let (sc, m) = scale_min_k4(2 * g + 1, &b.scales);
                    let (d2, m2) = (d * sc as f32, dmin * m as f32);
                    for l in 0..32 {
                        lo[l] = d1 * (q[l] & 0xF) as f32 - m1;
                        hi[l] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
}

impl Block for BlockQ4K {
    const QTYPE: QType = QType::Q4_K;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        for (i, (y, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let qw = imatrix.map(|w| &w[QK_K * i..]);
            let (d, dmin, scales, codes) = quantize_k4_scales(block_of(x), qw, 15, false);
            y.d = d;
            y.dmin = dmin;
            y.scales = scales;
            y.qs = std::array::from_fn(|b| {
                let (g, l) = (b / 32, b % 32);
                codes[2 * g][l] | (codes[2 * g + 1][l] << 4)
            });
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dequantize_q4k(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let codes: [f32; QK_K] = std::array::from_fn(|i| {
                let (g, h, l) = (i / 64, (i / 32) % 2, i % 32);
                ((b.qs[32 * g + l] >> (4 * h)) & 0xF) as f32
            });
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let sm = |j: usize| {
                let (sc, m) = scale_min_k4(j, &b.scales);
                (d * sc as f32, dmin * m as f32)
            };
            sum += affine_dot::<32>(&codes, sm, xs);
        }
        sum
    }
}

#[inline(always)]
fn q5_code(b: &BlockQ5K, i: usize) -> u8 {
    let (g, h, l) = (i / 64, (i / 32) % 2, i % 32);
    let low = (b.qs[32 * g + l] >> (4 * h)) & 0xF;
    let high = (b.qh[l] >> (2 * g + h)) & 1;
    low | (high << 4)
}

dispatch! {
    /// `dl * q5_code - ml` a sub-block of 32 weights at a time.
    fn dequantize_q5k(src: &[BlockQ5K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (j, ys) in y.chunks_exact_mut(32).enumerate() {
                let (g, h) = (j / 2, j % 2);
                let q: &[u8; 32] = b.qs[32 * g..32 * g + 32].try_into().expect("32 bytes");
                let (sc, m) = scale_min_k4(j, &b.scales);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                for l in 0..32 {
                    let c = ((q[l] >> (4 * h)) & 0xF) | (((b.qh[l] >> j) & 1) << 4);
                    ys[l] = dl * c as f32 - ml;
                }
            }
        }
    }
}

impl Block for BlockQ5K {
    const QTYPE: QType = QType::Q5_K;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        for (i, (y, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let qw = imatrix.map(|w| &w[QK_K * i..]);
            let (d, dmin, scales, codes) = quantize_k4_scales(block_of(x), qw, 31, true);
            y.d = d;
            y.dmin = dmin;
            y.scales = scales;
            y.qh = [0; QK_K / 8];
            for g in 0..4 {
                for l in 0..32 {
                    let (c1, c2) = (codes[2 * g][l], codes[2 * g + 1][l]);
                    y.qh[l] |= ((c1 >> 4) << (2 * g)) | ((c2 >> 4) << (2 * g + 1));
                    y.qs[32 * g + l] = (c1 & 0xF) | ((c2 & 0xF) << 4);
                }
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dequantize_q5k(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let codes: [f32; QK_K] = std::array::from_fn(|i| q5_code(b, i) as f32);
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let sm = |j: usize| {
                let (sc, m) = scale_min_k4(j, &b.scales);
                (d * sc as f32, dmin * m as f32)
            };
            sum += affine_dot::<32>(&codes, sm, xs);
        }
        sum
    }
}

// ---------------------------------------------------------------- Q6_K

#[inline(always)]
fn quantize_q6k(x: &[f32; QK_K], qw: Option<&[f32]>, y: &mut BlockQ6K) {
    let mut codes = [[0i8; 16]; 16];
    let scales = make_qx_quants_lanes::<16, 16>(32, x, &mut codes, qw);
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let abs_scale = scales[ib].abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *y = BlockQ6K::zeroed();
        return;
    }
    let iscale = -128.0 / max_scale;
    let (d16, d) = f16_round(1.0 / iscale);
    y.d = d16;
    y.scales = std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
    let mut codes: [[u8; 16]; 16] = bytemuck::cast(codes);
    for j in 0..16 {
        let dl = d * y.scales[j] as f32;
        requantize(group::<16>(x, j), dl, 0.0, -32, 31, &mut codes[j]);
    }
    let c: &[u8; QK_K] = bytemuck::cast_ref(&codes);
    for g in 0..2 {
        for l in 0..32 {
            let q = |s: usize| c[128 * g + 32 * s + l];
            y.ql[64 * g + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            y.ql[64 * g + 32 + l] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            y.qh[32 * g + l] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

#[inline(always)]
fn q6_code(b: &BlockQ6K, i: usize) -> i8 {
    let (g, s, l) = (i / 128, (i / 32) % 4, i % 32);
    let low = (b.ql[64 * g + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0xF;
    let high = (b.qh[32 * g + l] >> (2 * s)) & 3;
    ((low | (high << 4)) as i8) - 32
}

dispatch! {
    /// `dl * q6_code` a run of 32 weights at a time.
    fn dequantize_q6k(src: &[BlockQ6K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            for (r, ys) in y.chunks_exact_mut(32).enumerate() {
                let (g, s) = (r / 4, r % 4);
                let at = 64 * g + 32 * (s & 1);
                let ql: &[u8; 32] = b.ql[at..at + 32].try_into().expect("32 bytes");
                let qh: &[u8; 32] = b.qh[32 * g..32 * g + 32].try_into().expect("32 bytes");
                let mut codes = [0i8; 32];
                for l in 0..32 {
                    let low = (ql[l] >> (4 * (s >> 1))) & 0xF;
                    let high = (qh[l] >> (2 * s)) & 3;
                    codes[l] = ((low | (high << 4)) as i8) - 32;
                }
                let (d0, d1) = (d * b.scales[2 * r] as f32, d * b.scales[2 * r + 1] as f32);
                for l in 0..16 {
                    ys[l] = d0 * codes[l] as f32;
                    ys[16 + l] = d1 * codes[16 + l] as f32;
                }
            }
        }
    }
}

dispatch! {
    /// The lane-parallel search 8 lanes wide where the CPU has AVX2 (integer-exact
    /// rounding, no reassociation: the same bytes on every path).
    fn quantize_q6k_row(src: &[f32], dst: &mut [BlockQ6K], imatrix: Option<&[f32]>) {
        for (i, (y, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            quantize_q6k(
                block_of(x),
                imatrix.map(|w| &w[QK_K * i..QK_K * (i + 1)]),
                y,
            );
        }
    }
}

impl Block for BlockQ6K {
    const QTYPE: QType = QType::Q6_K;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        quantize_q6k_row(src, dst, imatrix);
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dequantize_q6k(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let codes: [f32; QK_K] = std::array::from_fn(|i| q6_code(b, i) as f32);
            let d = b.d.to_f32();
            for j in 0..16 {
                let qx = dot(group::<16>(&codes, j), &xs[16 * j..16 * (j + 1)]);
                sum += d * b.scales[j] as f32 * qx;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::super::search::{
        make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qx_quants,
    };
    use super::*;

    /// splitmix64 with Box-Muller: reproducible gaussian data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn gauss(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        }
        fn gauss_vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.gauss()).collect()
        }
    }

    fn quantize<B: Block>(x: &[f32], imatrix: Option<&[f32]>) -> Vec<B> {
        let mut blocks = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
        B::quantize_row(x, &mut blocks, imatrix);
        blocks
    }

    fn dequantize<B: Block>(blocks: &[B]) -> Vec<f32> {
        let mut y = vec![0f32; blocks.len() * B::BLOCK_SIZE];
        B::dequantize_row(blocks, &mut y);
        y
    }

    /// sqrt(Σ w (x - y)² / Σ w) over rows of `cols` quantized one by one.
    fn weighted_rmse<B: Block>(x: &[f32], cols: usize, w: &[f32], imatrix: bool) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for row in x.chunks_exact(cols) {
            let y = dequantize(&quantize::<B>(row, imatrix.then_some(w)));
            for ((a, b), wi) in row.iter().zip(&y).zip(w) {
                num += *wi as f64 * ((a - b) as f64).powi(2);
                den += *wi as f64;
            }
        }
        (num / den).sqrt()
    }

    fn check_round_trip<B: Block>(bound: f64) {
        let mut rng = Rng(7);
        let cols = 1024;
        let x = rng.gauss_vec(16 * cols);
        let ones = vec![1f32; cols];
        let rmse = weighted_rmse::<B>(&x, cols, &ones, false);
        assert!(rmse < bound, "{}: rmse {rmse} >= {bound}", B::QTYPE.name());
        // A scaled input gives (up to f16 rounding) the scaled error.
        let x100: Vec<f32> = x.iter().map(|v| v * 100.0).collect();
        let rmse100 = weighted_rmse::<B>(&x100, cols, &ones, false);
        assert!(
            (rmse100 / 100.0 - rmse).abs() < 0.05 * rmse,
            "{}",
            B::QTYPE.name()
        );
    }

    /// The AVX2 build of the Q6_K search writes the portable path's bytes.
    #[test]
    fn q6k_paths_agree() {
        let mut s = 0x0dd_ba11_cafe_f00du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x: Vec<f32> = (0..QK_K * 16).map(|_| next()).collect();
        x[..QK_K].iter_mut().for_each(|v| *v *= 1e-30);
        x[QK_K..QK_K + 16].iter_mut().for_each(|v| *v = 0.0);
        let w: Vec<f32> = (0..QK_K * 16).map(|_| next() + 0.5).collect();
        for imatrix in [None, Some(&w[..])] {
            let runs: Vec<Vec<u8>> = crate::quants::legacy::all_levels()
                .into_iter()
                .map(|path| {
                    crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(Some(path)));
                    let mut b = vec![BlockQ6K::zeroed(); 16];
                    for (k, (row, out)) in
                        x.chunks_exact(QK_K).zip(b.chunks_exact_mut(1)).enumerate()
                    {
                        BlockQ6K::quantize_row(
                            row,
                            out,
                            imatrix.map(|w| &w[QK_K * k..QK_K * (k + 1)]),
                        );
                    }
                    crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(None));
                    bytemuck::cast_slice(&b).to_vec()
                })
                .collect();
            for r in &runs[1..] {
                assert_eq!(r, &runs[0], "imatrix={}", imatrix.is_some());
            }
        }
    }

    /// The run-at-a-time K-quant dequantizers give, bit for bit, the per-weight
    /// formulas (ggml's `dequantize_row_q*_K` written per weight) on random blocks, on every path.
    #[test]
    fn dequantizers_match_the_per_weight_formulas() {
        let mut s = 0x51f1_5eed_1234_5678u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 56) as u8
                })
                .collect()
        };
        let finite = |h: &mut f16| *h = f16::from_bits(h.to_bits() & 0xbfff);
        let mut q2: Vec<BlockQ2K> = bytemuck::pod_collect_to_vec(&bytes(84 * 8));
        let mut q4: Vec<BlockQ4K> = bytemuck::pod_collect_to_vec(&bytes(144 * 8));
        let mut q3: Vec<BlockQ3K> = bytemuck::pod_collect_to_vec(&bytes(110 * 8));
        let mut q5: Vec<BlockQ5K> = bytemuck::pod_collect_to_vec(&bytes(176 * 8));
        let mut q6: Vec<BlockQ6K> = bytemuck::pod_collect_to_vec(&bytes(210 * 8));
        q3.iter_mut().for_each(|b| finite(&mut b.d));
        q2.iter_mut().for_each(|b| {
            finite(&mut b.d);
            finite(&mut b.dmin)
        });
        q4.iter_mut().for_each(|b| {
            finite(&mut b.d);
            finite(&mut b.dmin)
        });
        let want2: Vec<u32> = q2
            .iter()
            .flat_map(|b| {
                (0..QK_K).map(move |i| {
                    let sc = b.scales[i / 16];
                    let dl = b.d.to_f32() * (sc & 0xF) as f32;
                    let ml = b.dmin.to_f32() * (sc >> 4) as f32;
                    (dl * unpack_2bit(&b.qs, i) as f32 - ml).to_bits()
                })
            })
            .collect();
        let want4: Vec<u32> = q4
            .iter()
            .flat_map(|b| {
                (0..QK_K).map(move |i| {
                    let (sc, m) = scale_min_k4(i / 32, &b.scales);
                    let (dl, ml) = (b.d.to_f32() * sc as f32, b.dmin.to_f32() * m as f32);
                    let code = (b.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
                    (dl * code as f32 - ml).to_bits()
                })
            })
            .collect();
        q5.iter_mut().for_each(|b| {
            finite(&mut b.d);
            finite(&mut b.dmin)
        });
        q6.iter_mut().for_each(|b| finite(&mut b.d));
        let want3: Vec<u32> = q3
            .iter()
            .flat_map(|b| {
                (0..QK_K).map(move |i| {
                    let dl = b.d.to_f32() * q3_scale(i / 16, &b.scales) as f32;
                    (dl * q3_code(b, i) as f32).to_bits()
                })
            })
            .collect();
        let want5: Vec<u32> = q5
            .iter()
            .flat_map(|b| {
                (0..QK_K).map(move |i| {
                    let (sc, m) = scale_min_k4(i / 32, &b.scales);
                    let (dl, ml) = (b.d.to_f32() * sc as f32, b.dmin.to_f32() * m as f32);
                    (dl * q5_code(b, i) as f32 - ml).to_bits()
                })
            })
            .collect();
        let want6: Vec<u32> = q6
            .iter()
            .flat_map(|b| {
                (0..QK_K).map(move |i| {
                    let dl = b.d.to_f32() * b.scales[i / 16] as f32;
                    (dl * q6_code(b, i) as f32).to_bits()
                })
            })
            .collect();
        for path in crate::quants::legacy::all_levels() {
            crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(Some(path)));
            let mut y = vec![0f32; 8 * QK_K];
            let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            BlockQ2K::dequantize_row(&q2, &mut y);
            assert_eq!(bits(&y), want2, "Q2_K {path:?}");
            BlockQ4K::dequantize_row(&q4, &mut y);
            assert_eq!(bits(&y), want4, "Q4_K {path:?}");
            BlockQ3K::dequantize_row(&q3, &mut y);
            assert_eq!(bits(&y), want3, "Q3_K {path:?}");
            BlockQ5K::dequantize_row(&q5, &mut y);
            assert_eq!(bits(&y), want5, "Q5_K {path:?}");
            BlockQ6K::dequantize_row(&q6, &mut y);
            assert_eq!(bits(&y), want6, "Q6_K {path:?}");
            crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(None));
        }
    }

    #[test]
    fn round_trip_error_on_gaussian_rows() {
        // Measured on N(0, 1): 0.297, 0.151, 0.071, 0.036, 0.0177 (as llama.cpp).
        check_round_trip::<BlockQ2K>(0.31);
        check_round_trip::<BlockQ3K>(0.16);
        check_round_trip::<BlockQ4K>(0.075);
        check_round_trip::<BlockQ5K>(0.038);
        check_round_trip::<BlockQ6K>(0.019);
    }

    fn check_zero<B: Block>() {
        let x = vec![0f32; 2 * QK_K];
        let w = vec![1f32; 2 * QK_K];
        for imatrix in [None, Some(&w[..])] {
            let blocks = quantize::<B>(&x, imatrix);
            assert!(
                dequantize(&blocks).iter().all(|v| *v == 0.0),
                "{}",
                B::QTYPE.name()
            );
            assert_eq!(B::vec_dot(&blocks, &w), 0.0);
        }
    }

    #[test]
    fn all_zero_blocks_stay_zero() {
        check_zero::<BlockQ2K>();
        check_zero::<BlockQ3K>();
        check_zero::<BlockQ4K>();
        check_zero::<BlockQ5K>();
        check_zero::<BlockQ6K>();
    }

    fn check_imatrix<B: Block>() {
        let mut rng = Rng(11);
        let cols = 512;
        let x = rng.gauss_vec(32 * cols);
        // Heavy-tailed importances, as real activations give.
        let w: Vec<f32> = (0..cols).map(|_| (2.0 * rng.gauss()).exp()).collect();
        let row = &x[..cols];
        let plain = quantize::<B>(row, None);
        let weighted = quantize::<B>(row, Some(&w));
        assert_ne!(
            bytemuck::cast_slice::<B, u8>(&plain),
            bytemuck::cast_slice::<B, u8>(&weighted),
            "{}: the imatrix changed nothing",
            B::QTYPE.name()
        );
        let without = weighted_rmse::<B>(&x, cols, &w, false);
        let with = weighted_rmse::<B>(&x, cols, &w, true);
        assert!(
            with < 0.97 * without,
            "{}: weighted rmse {with} with the imatrix, {without} without",
            B::QTYPE.name()
        );
    }

    #[test]
    fn imatrix_lowers_the_weighted_error() {
        check_imatrix::<BlockQ2K>();
        check_imatrix::<BlockQ3K>();
        check_imatrix::<BlockQ4K>();
        check_imatrix::<BlockQ5K>();
        check_imatrix::<BlockQ6K>();
    }

    fn check_vec_dot<B: Block>() {
        let mut rng = Rng(5);
        let n = 4 * QK_K;
        let blocks = quantize::<B>(&rng.gauss_vec(n), None);
        let a = rng.gauss_vec(n);
        let y = dequantize(&blocks);
        let exact: f64 = y.iter().zip(&a).map(|(p, q)| *p as f64 * *q as f64).sum();
        let scale: f64 = y
            .iter()
            .zip(&a)
            .map(|(p, q)| (*p as f64 * *q as f64).abs())
            .sum();
        let got = B::vec_dot(&blocks, &a) as f64;
        assert!(
            (got - exact).abs() <= 1e-5 * scale,
            "{}: vec_dot {got}, dequantize-dot {exact}",
            B::QTYPE.name()
        );
    }

    #[test]
    fn vec_dot_matches_dequantize_then_dot() {
        check_vec_dot::<BlockQ2K>();
        check_vec_dot::<BlockQ3K>();
        check_vec_dot::<BlockQ4K>();
        check_vec_dot::<BlockQ5K>();
        check_vec_dot::<BlockQ6K>();
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.7, -8),
        ];
        for (v, want) in cases {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn packed_scales_unpack_to_themselves() {
        for v in 0..64u8 {
            let ls: [u8; 8] = std::array::from_fn(|j| (v + 7 * j as u8) % 64);
            let lm: [u8; 8] = std::array::from_fn(|j| (v + 13 * j as u8 + 1) % 64);
            let packed = pack_scale_min_k4(&ls, &lm);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &packed), (ls[j], lm[j]));
            }
            let codes: [i8; 16] = std::array::from_fn(|j| ((v as usize + 5 * j) % 64) as i8);
            let packed = pack_q3_scales(&codes);
            for j in 0..16 {
                assert_eq!(q3_scale(j, &packed) as i32, codes[j] as i32 - 32);
            }
        }
    }

    /// Groups that exercise the searches' corners: all zero, constant, all
    /// positive, one outlier, tiny values, ties.
    fn awkward_groups<const N: usize>(rng: &mut Rng) -> Vec<[f32; N]> {
        let mut out = vec![
            [0f32; N],
            [0.75; N],
            [-2.0; N],
            std::array::from_fn(|i| i as f32),
            std::array::from_fn(|i| if i == 3 { 40.0 } else { 0.01 * i as f32 }),
            std::array::from_fn(|i| 1e-20 * (i as f32 - 4.0)),
            std::array::from_fn(|i| [1.0, -1.0, 0.5, -0.5][i % 4]),
        ];
        for _ in 0..200 {
            let g: [f32; N] = std::array::from_fn(|_| rng.gauss());
            out.push(g);
            out.push(g.map(f32::abs));
        }
        out
    }

    /// Each lane-parallel search equals its scalar twin bit for bit.
    #[test]
    fn lane_searches_match_the_scalar_searches() {
        let mut rng = Rng(3);
        let g16 = awkward_groups::<16>(&mut rng);
        let g32 = awkward_groups::<32>(&mut rng);
        for chunk in g16.chunks_exact(16) {
            let x: Vec<f32> = chunk.iter().flatten().copied().collect();
            let w: Vec<f32> = x.iter().map(|_| rng.uniform() as f32).collect();
            for qw in [None, Some(&w[..])] {
                for nmax in [4, 32] {
                    let mut lanes = [[0i8; 16]; 16];
                    let scales = make_qx_quants_lanes::<16, 16>(nmax, &x, &mut lanes, qw);
                    for g in 0..16 {
                        let mut l = [0i8; 16];
                        let wg = qw.map(|q| group::<16>(q, g));
                        let s = make_qx_quants(nmax, group::<16>(&x, g), &mut l, 1, wg);
                        assert_eq!(s.to_bits(), scales[g].to_bits(), "qx group {g}");
                        assert_eq!(l, lanes[g]);
                    }
                }
            }
            let mut lanes = [[0i8; 16]; 16];
            let scales = make_q3_quants_lanes::<16, 16>(4, &x, &mut lanes);
            for g in 0..16 {
                let mut l = [0i8; 16];
                let s = make_q3_quants(4, group::<16>(&x, g), &mut l, true);
                assert_eq!(s.to_bits(), scales[g].to_bits(), "q3 group {g}");
                assert_eq!(l, lanes[g]);
            }
            let mut lanes = [[0u8; 16]; 16];
            let (s2, m2) =
                make_qkx_quants_lanes::<16, 16, false>(3, &x, &w, &mut lanes, -0.5, 0.1, 15, true);
            for g in 0..16 {
                let mut l = [0u8; 16];
                let (xs, ws) = (group::<16>(&x, g), group::<16>(&w, g));
                let (s, m) = make_qkx2_quants(3, xs, ws, &mut l, -0.5, 0.1, 15, true);
                assert_eq!(
                    (s.to_bits(), m.to_bits()),
                    (s2[g].to_bits(), m2[g].to_bits())
                );
                assert_eq!(l, lanes[g], "qkx2 group {g}");
            }
        }
        for chunk in g32.chunks_exact(8) {
            let x: Vec<f32> = chunk.iter().flatten().copied().collect();
            let w: Vec<f32> = x.iter().map(|_| rng.uniform() as f32).collect();
            let mut lanes = [[0u8; 32]; 8];
            let (s3, m3) =
                make_qkx_quants_lanes::<32, 8, true>(15, &x, &w, &mut lanes, -0.9, 0.05, 36, false);
            for g in 0..8 {
                let mut l = [0u8; 32];
                let (xs, ws) = (group::<32>(&x, g), group::<32>(&w, g));
                let (s, m) = make_qkx3_quants(15, xs, ws, &mut l, -0.9, 0.05, 36, false);
                assert_eq!(
                    (s.to_bits(), m.to_bits()),
                    (s3[g].to_bits(), m3[g].to_bits())
                );
                assert_eq!(l, lanes[g], "qkx3 group {g}");
            }
        }
    }

    /// Dequantization against an independent reading of the C layout
    /// (ggml's `dequantize_row_q4_K` loop), on random bytes.
    #[test]
    fn q4k_dequantize_follows_the_c_layout() {
        let mut rng = Rng(9);
        let mut bytes = [0u8; 144];
        bytes.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        bytes[..2].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        bytes[2..4].copy_from_slice(&f16::from_f32(-0.125).to_bits().to_le_bytes());
        let b: BlockQ4K = bytemuck::pod_read_unaligned(&bytes);
        let mut y = [0f32; QK_K];
        BlockQ4K::dequantize_row(std::slice::from_ref(&b), &mut y);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let mut k = 0;
        for (is, q) in b.qs.chunks_exact(32).enumerate() {
            for (half, shift) in [(0, 0), (1, 4)] {
                let (sc, m) = scale_min_k4(2 * is + half, &b.scales);
                for &byte in q {
                    let want = d * sc as f32 * ((byte >> shift) & 0xF) as f32 - min * m as f32;
                    assert_eq!(y[k].to_bits(), want.to_bits(), "weight {k}");
                    k += 1;
                }
            }
        }
    }

    /// Single-thread timing of `quantize_row` (not a test: run with
    /// `cargo test --release --lib k_quants::tests::time_quantize -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn time_quantize() {
        fn run<B: Block>(x: &[f32], cols: usize, w: &[f32]) {
            let mut blocks = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
            for imatrix in [None, Some(w)] {
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    for (row, out) in x
                        .chunks_exact(cols)
                        .zip(blocks.chunks_exact_mut(cols / QK_K))
                    {
                        B::quantize_row(row, out, imatrix);
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{} imatrix={}: {:.1} ms",
                    B::QTYPE.name(),
                    imatrix.is_some(),
                    best * 1e3
                );
            }
        }
        let mut rng = Rng(1);
        let cols = 4096;
        let x = rng.gauss_vec(256 * cols);
        let w: Vec<f32> = (0..cols).map(|_| rng.gauss().exp()).collect();
        run::<BlockQ2K>(&x, cols, &w);
        run::<BlockQ3K>(&x, cols, &w);
        run::<BlockQ4K>(&x, cols, &w);
        run::<BlockQ5K>(&x, cols, &w);
        run::<BlockQ6K>(&x, cols, &w);
    }
}
