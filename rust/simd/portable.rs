//! Portable kernels. The 32-weight legacy blocks (Q4_0..Q8_0, IQ4_NL) are
//! viewed as a [`Group`] (i8 codes, a scale and a bias) multiplied with
//! [`BlockQ8A`] activations; the 256-weight super-blocks (Q2_K..Q6_K,
//! IQ4_XS) as a [`KBlock`] (i8 codes, integer scales and mins per 16, two
//! float factors) multiplied with [`BlockQ8K`] activations, all in integers
//! as ggml does. The decoders follow ggml-quants.c's `dequantize_row_*`.

// The decoders index codes and packed bytes by the same position.
#![allow(clippy::needless_range_loop)]

use super::{BlockQ8A, BlockQ8K};
use crate::quants::{iq4, k_quants, legacy, Block, QK_K};

/// One 32-weight piece of a block in scale/bias form.
#[derive(Clone, Copy, Debug, Default)]
pub struct Group {
    pub codes: [i8; 32],
    pub scale: f32,
    pub bias: f32,
}

/// Blocks that can be read as 32-weight groups.
pub trait Groups: Block {
    /// Fill `out` (`BLOCK_SIZE / 32` groups) with this block's groups.
    fn groups(&self, out: &mut [Group]);
}

/// The IQ4_NL / IQ4_XS code book (ggml `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn f16(v: half::f16) -> f32 {
    v.to_f32()
}

/// Low nibbles give weights 0..16, high nibbles 16..32 (the legacy layout).
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 })
}

fn fifth_bits(qh: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*qh)
}

fn group(codes: [i8; 32], scale: f32, bias: f32) -> Group {
    Group { codes, scale, bias }
}

impl Groups for legacy::BlockQ4_0 {
    fn groups(&self, out: &mut [Group]) {
        let n = nibbles(&self.qs);
        out[0] = group(std::array::from_fn(|j| n[j] as i8 - 8), f16(self.d), 0.0);
    }
}

impl Groups for legacy::BlockQ4_1 {
    fn groups(&self, out: &mut [Group]) {
        let n = nibbles(&self.qs);
        out[0] = group(
            std::array::from_fn(|j| n[j] as i8),
            f16(self.d),
            f16(self.m),
        );
    }
}

impl Groups for legacy::BlockQ5_0 {
    fn groups(&self, out: &mut [Group]) {
        let n = nibbles(&self.qs);
        let h = fifth_bits(&self.qh);
        let codes = std::array::from_fn(|j| (n[j] | ((((h >> j) & 1) as u8) << 4)) as i8 - 16);
        out[0] = group(codes, f16(self.d), 0.0);
    }
}

impl Groups for legacy::BlockQ5_1 {
    fn groups(&self, out: &mut [Group]) {
        let n = nibbles(&self.qs);
        let h = fifth_bits(&self.qh);
        let codes = std::array::from_fn(|j| (n[j] | ((((h >> j) & 1) as u8) << 4)) as i8);
        out[0] = group(codes, f16(self.d), f16(self.m));
    }
}

impl Groups for legacy::BlockQ8_0 {
    fn groups(&self, out: &mut [Group]) {
        out[0] = group(self.qs, f16(self.d), 0.0);
    }
}

impl Groups for iq4::BlockIQ4NL {
    fn groups(&self, out: &mut [Group]) {
        let n = nibbles(&self.qs);
        out[0] = group(
            std::array::from_fn(|j| KVALUES_IQ4NL[n[j] as usize]),
            f16(self.d),
            0.0,
        );
    }
}

/// The 6-bit scale and minimum of sub-block `j` of Q4_K/Q5_K (ggml `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The sixteen 6-bit Q3_K scales, offset by -32 (ggml `dequantize_row_q3_K`).
pub fn q3k_scales(raw: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word =
        |i: usize| u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    std::array::from_fn(|i| (aux[i / 4].to_le_bytes()[i % 4] as i8).wrapping_sub(32))
}

/// `out[t] = dot(row, token t)` for the legacy types; `acts` holds
/// `out.len()` tokens of `row.len()` blocks each. As ggml: per block
/// `d_x · d_y · Σ code·q + bias · s_y` (`s_y` = [`BlockQ8A::dsum`]).
pub fn dot_groups<B: Groups>(row: &[B], acts: &[BlockQ8A], out: &mut [f32]) {
    let nb = row.len();
    let mut g = [Group::default()];
    out.fill(0.0);
    for (bi, blk) in row.iter().enumerate() {
        blk.groups(&mut g);
        let g = &g[0];
        for (t, o) in out.iter_mut().enumerate() {
            let a = &acts[t * nb + bi];
            let isum: i32 = g
                .codes
                .iter()
                .zip(&a.qs)
                .map(|(&c, &q)| c as i32 * q as i32)
                .sum();
            *o += g.scale * a.d * isum as f32 + g.bias * a.dsum;
        }
    }
}

/// A 256-weight super-block in integer form: `w[l] = d · sc[l / 16] · codes[l]
/// - dmin · mn[l / 16]`.
#[derive(Clone, Copy, Debug)]
pub struct KBlock {
    pub codes: [i8; QK_K],
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

impl Default for KBlock {
    fn default() -> Self {
        KBlock {
            codes: [0; QK_K],
            sc: [0; 16],
            mn: [0; 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// Super-block types read as [`KBlock`]s.
pub trait KDecode: Block {
    fn kblock(&self, out: &mut KBlock);
}

impl KDecode for k_quants::BlockQ4K {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), f16(self.dmin));
        for g in 0..8 {
            let (sc, m) = scale_min_k4(g, &self.scales);
            (o.sc[2 * g], o.sc[2 * g + 1]) = (sc as i32, sc as i32);
            (o.mn[2 * g], o.mn[2 * g + 1]) = (m as i32, m as i32);
            let q = &self.qs[32 * (g / 2)..32 * (g / 2) + 32];
            let shift = 4 * (g % 2);
            for l in 0..32 {
                o.codes[32 * g + l] = ((q[l] >> shift) & 15) as i8;
            }
        }
    }
}

impl KDecode for k_quants::BlockQ5K {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), f16(self.dmin));
        for g in 0..8 {
            let (sc, m) = scale_min_k4(g, &self.scales);
            (o.sc[2 * g], o.sc[2 * g + 1]) = (sc as i32, sc as i32);
            (o.mn[2 * g], o.mn[2 * g + 1]) = (m as i32, m as i32);
            let q = &self.qs[32 * (g / 2)..32 * (g / 2) + 32];
            let shift = 4 * (g % 2);
            for l in 0..32 {
                o.codes[32 * g + l] =
                    (((q[l] >> shift) & 15) | (((self.qh[l] >> g) & 1) << 4)) as i8;
            }
        }
    }
}

impl KDecode for k_quants::BlockQ6K {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), 0.0);
        o.mn = [0; 16];
        for (s, v) in o.sc.iter_mut().zip(&self.scales) {
            *s = *v as i32;
        }
        for g in 0..8 {
            let (n, k) = (g / 4, g % 4);
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            for l in 0..32 {
                let low = match k {
                    0 => ql[l] & 15,
                    1 => ql[l + 32] & 15,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                let high = (qh[l] >> (2 * k)) & 3;
                o.codes[32 * g + l] = (low | (high << 4)) as i8 - 32;
            }
        }
    }
}

impl KDecode for k_quants::BlockQ2K {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), f16(self.dmin));
        for (j, &s) in self.scales.iter().enumerate() {
            o.sc[j] = (s & 15) as i32;
            o.mn[j] = (s >> 4) as i32;
        }
        for g in 0..8 {
            let (n, j) = (g / 4, g % 4);
            let q = &self.qs[32 * n..32 * n + 32];
            for l in 0..32 {
                o.codes[32 * g + l] = ((q[l] >> (2 * j)) & 3) as i8;
            }
        }
    }
}

impl KDecode for k_quants::BlockQ3K {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), 0.0);
        o.mn = [0; 16];
        for (s, v) in o.sc.iter_mut().zip(q3k_scales(&self.scales)) {
            *s = v as i32;
        }
        for g in 0..8 {
            let (n, j) = (g / 4, g % 4);
            let q = &self.qs[32 * n..32 * n + 32];
            let m = 1u8 << g;
            for l in 0..32 {
                let low = ((q[l] >> (2 * j)) & 3) as i8;
                o.codes[32 * g + l] = low - if self.hmask[l] & m != 0 { 0 } else { 4 };
            }
        }
    }
}

impl KDecode for iq4::BlockIQ4XS {
    fn kblock(&self, o: &mut KBlock) {
        (o.d, o.dmin) = (f16(self.d), 0.0);
        o.mn = [0; 16];
        for ib in 0..QK_K / 32 {
            let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
            let hi = ((self.scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i32 - 32;
            (o.sc[2 * ib], o.sc[2 * ib + 1]) = (ls, ls);
            let qs: &[u8; 16] = self.qs[16 * ib..16 * ib + 16]
                .try_into()
                .unwrap_or(&[0; 16]);
            for (c, n) in o.codes[32 * ib..32 * ib + 32].iter_mut().zip(nibbles(qs)) {
                *c = KVALUES_IQ4NL[n as usize];
            }
        }
    }
}

/// `out[t] = dot(row, token t)` for the super-block types; `acts` holds
/// `out.len()` tokens of `row.len()` blocks. As ggml: per super-block
/// `d_y·d · Σ_j sc_j Σ code·q - d_y·dmin · Σ_j mn_j bsum_j`, in integers.
pub fn dot_k<B: KDecode>(row: &[B], acts: &[BlockQ8K], out: &mut [f32]) {
    let nb = row.len();
    let mut kb = KBlock::default();
    out.fill(0.0);
    for (bi, blk) in row.iter().enumerate() {
        blk.kblock(&mut kb);
        for (t, o) in out.iter_mut().enumerate() {
            let a = &acts[t * nb + bi];
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for j in 0..16 {
                let s: i32 = kb.codes[16 * j..16 * j + 16]
                    .iter()
                    .zip(&a.qs[16 * j..16 * j + 16])
                    .map(|(&c, &q)| c as i32 * q as i32)
                    .sum();
                sumi += kb.sc[j] * s;
                summ += kb.mn[j] * a.bsums[j] as i32;
            }
            *o += a.d * kb.d * sumi as f32 - a.d * kb.dmin * summ as f32;
        }
    }
}

/// `out[t] = dot(row, x of token t)` for the float types (`x` already in the
/// activation form of the type).
pub fn dot_float<B: Block>(row: &[B], x: &[f32], out: &mut [f32], value: impl Fn(&B) -> f32) {
    let cols = row.len();
    for (t, o) in out.iter_mut().enumerate() {
        let x = &x[t * cols..(t + 1) * cols];
        *o = row.iter().zip(x).map(|(w, v)| value(w) * v).sum();
    }
}

/// Q4_0 rows in the order of ggml's repacked kernels (x86 `ggml_gemm_q4_0_8x8_q8_0`
/// / `ggml_gemv_q4_0_8x8_q8_0`): per output one FMA chain over the blocks,
/// `acc = fma(Σ q·a as f32, d_w · d_a, acc)`.
pub fn q4_0_seq(
    row: &[crate::quants::legacy::BlockQ4_0],
    acts: &[super::BlockQ8A],
    out: &mut [f32],
) {
    nib32_seq(row, acts, out, |b| (b.d.to_f32(), &b.qs), |n| n as i32 - 8)
}

/// The shared order of [`q4_0_seq`] and [`iq4_nl_seq`]: blocks of 32 weights
/// held as (scale, 16 bytes of two nibbles), `value` maps a nibble to its weight.
fn nib32_seq<B>(
    row: &[B],
    acts: &[BlockQ8A],
    out: &mut [f32],
    parts: impl Fn(&B) -> (f32, &[u8; 16]),
    value: impl Fn(u8) -> i32,
) {
    let nb = row.len();
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, a) in row.iter().zip(&acts[t * nb..(t + 1) * nb]) {
            let (d, qs) = parts(b);
            let mut isum = 0i32;
            for j in 0..16 {
                let lo = value(qs[j] & 0x0f);
                let hi = value(qs[j] >> 4);
                isum += lo * a.qs[j] as i32 + hi * a.qs[j + 16] as i32;
            }
            acc = (isum as f32).mul_add(d * a.d, acc);
        }
        *o = acc;
    }
}

/// Q6_K in the order of `ggml_vec_dot_q6_K_q8_K`'s x86 AVX2 branch (the
/// reference of the x86 `q6_k` kernels): per super-block eight i32 lanes,
/// lane `l` = `Σ_g sc[2g + l/4] Σ_{i<4} u[32g + 4l + i]·q[..]` over the eight
/// 32-groups `g` (`u` the unsigned codes) `- 32 (sc[2l]·bsum[2l] +
/// sc[2l+1]·bsum[2l+1])`, each added to its f32 lane as
/// `fma(d_y·d, lane, acc)`; the lanes summed as `hsum_float_8` does.
pub fn q6_k_lanes_seq(row: &[k_quants::BlockQ6K], acts: &[BlockQ8K], out: &mut [f32]) {
    let nb = row.len();
    let mut kb = KBlock::default();
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 8];
        for (bi, blk) in row.iter().enumerate() {
            blk.kblock(&mut kb);
            let a = &acts[t * nb + bi];
            for (l, acc) in acc.iter_mut().enumerate() {
                let mut lane = 0i32;
                for g in 0..8 {
                    let mut s = 0i32;
                    for i in 32 * g + 4 * l..32 * g + 4 * l + 4 {
                        s += (kb.codes[i] as i32 + 32) * a.qs[i] as i32;
                    }
                    lane += kb.sc[2 * g + l / 4] * s;
                }
                lane -= 32
                    * (kb.sc[2 * l] * a.bsums[2 * l] as i32
                        + kb.sc[2 * l + 1] * a.bsums[2 * l + 1] as i32);
                *acc = (lane as f32).mul_add(a.d * kb.d, *acc);
            }
        }
        let h: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
        *o = (h[0] + h[2]) + (h[1] + h[3]);
    }
}

/// Q6_K in the order of llama.cpp's tiled K-quant matmul (ggml-cpu/tiled/,
/// from 8 tokens up; the reference of the x86 `q6_k_tiled` kernels): per
/// super-block `acc = fma(f32(sumi) · d, d_y, acc)`, `sumi = Σ_j sc_j Σ
/// (code - 32)·q`.
pub fn q6_k_tiled_seq(row: &[k_quants::BlockQ6K], acts: &[BlockQ8K], out: &mut [f32]) {
    let nb = row.len();
    let mut kb = KBlock::default();
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (bi, blk) in row.iter().enumerate() {
            blk.kblock(&mut kb);
            let a = &acts[t * nb + bi];
            let mut sumi = 0i32;
            for j in 0..16 {
                let s: i32 = (16 * j..16 * j + 16)
                    .map(|i| kb.codes[i] as i32 * a.qs[i] as i32)
                    .sum();
                sumi += kb.sc[j] * s;
            }
            acc = (sumi as f32 * kb.d).mul_add(a.d, acc);
        }
        *o = acc;
    }
}

/// One Q4_K row in the order of ggml's repacked Q4_K kernels (x86
/// `ggml_gemm_q4_K_8x8_q8_K` for the first `gemm_tokens` tokens,
/// `ggml_gemv_q4_K_8x8_q8_K` for the rest; the reference of the x86
/// `q4_k_x8` kernels): two FMA chains, `acc = fma(f32(Σ sc·code·q), d·d_y,
/// acc)` and `accm = fma(f32(Σ mn·bsum), dmin·d_y, accm)`, advanced once per
/// pair of 32-weight sub-blocks by the gemm and once per super-block by the
/// gemv; the output is `acc - accm`.
pub fn q4_k_repacked_seq(
    row: &[k_quants::BlockQ4K],
    acts: &[BlockQ8K],
    gemm_tokens: usize,
    out: &mut [f32],
) {
    let nb = row.len();
    let mut kb = KBlock::default();
    for (t, o) in out.iter_mut().enumerate() {
        let (mut acc, mut accm) = (0f32, 0f32);
        for (bi, blk) in row.iter().enumerate() {
            blk.kblock(&mut kb);
            let a = &acts[t * nb + bi];
            let (sd, sm) = (kb.d * a.d, kb.dmin * a.d);
            let mut si = [0i32; 8];
            let mut mi = [0i32; 8];
            for j in 0..8 {
                let s: i32 = (32 * j..32 * j + 32)
                    .map(|i| kb.codes[i] as i32 * a.qs[i] as i32)
                    .sum();
                si[j] = kb.sc[2 * j] * s;
                mi[j] = kb.mn[2 * j] * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
            }
            if t < gemm_tokens {
                for sb in 0..4 {
                    acc = ((si[2 * sb] + si[2 * sb + 1]) as f32).mul_add(sd, acc);
                    accm = ((mi[2 * sb] + mi[2 * sb + 1]) as f32).mul_add(sm, accm);
                }
            } else {
                acc = (si.iter().sum::<i32>() as f32).mul_add(sd, acc);
                accm = (mi.iter().sum::<i32>() as f32).mul_add(sm, accm);
            }
        }
        *o = acc - accm;
    }
}

/// IQ4_NL rows in the order of ggml's repacked kernels (those of Q4_0 with the
/// code book, `ggml_gemm/gemv_iq4_nl_8x8_q8_0`; the reference of the x86
/// `iq4_nl_x8` kernels): as [`q4_0_seq`].
pub fn iq4_nl_seq(row: &[iq4::BlockIQ4NL], acts: &[BlockQ8A], out: &mut [f32]) {
    nib32_seq(
        row,
        acts,
        out,
        |b| (b.d.to_f32(), &b.qs),
        |n| KVALUES_IQ4NL[n as usize] as i32,
    )
}
