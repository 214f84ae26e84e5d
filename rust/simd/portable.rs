//! Portable kernels. Every 32-weight piece of every block type is viewed as a
//! [`Group`]: i8 codes with, per half of 16, a scale and a bias, so that
//! `w[j] = scale[j / 16] * code[j] + bias[j / 16]`. One generic kernel then
//! multiplies any type with 8-bit activations; the decoders follow the
//! dequantization loops of ggml-quants.c (`dequantize_row_*`).

use super::{Acts, BlockQ8A};
use crate::quants::{iq4, k_quants, legacy, Block, QK_K};

/// One 32-weight piece of a block in scale/bias form.
#[derive(Clone, Copy, Debug, Default)]
pub struct Group {
    pub codes: [i8; 32],
    pub scale: [f32; 2],
    pub bias: [f32; 2],
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
    Group {
        codes,
        scale: [scale; 2],
        bias: [bias; 2],
    }
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

impl Groups for iq4::BlockIQ4XS {
    fn groups(&self, out: &mut [Group]) {
        let d = f16(self.d);
        for (ib, g) in out.iter_mut().enumerate().take(QK_K / 32) {
            let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
            let hi = ((self.scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i32 - 32;
            let qs: &[u8; 16] = self.qs[16 * ib..16 * ib + 16]
                .try_into()
                .unwrap_or(&[0; 16]);
            let n = nibbles(qs);
            *g = group(
                std::array::from_fn(|j| KVALUES_IQ4NL[n[j] as usize]),
                d * ls as f32,
                0.0,
            );
        }
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

impl Groups for k_quants::BlockQ4K {
    fn groups(&self, out: &mut [Group]) {
        let (d, dmin) = (f16(self.d), f16(self.dmin));
        for (g, o) in out.iter_mut().enumerate().take(8) {
            let (sc, m) = scale_min_k4(g, &self.scales);
            let q = &self.qs[32 * (g / 2)..32 * (g / 2) + 32];
            let shift = 4 * (g % 2);
            *o = group(
                std::array::from_fn(|l| ((q[l] >> shift) & 15) as i8),
                d * sc as f32,
                -dmin * m as f32,
            );
        }
    }
}

impl Groups for k_quants::BlockQ5K {
    fn groups(&self, out: &mut [Group]) {
        let (d, dmin) = (f16(self.d), f16(self.dmin));
        for (g, o) in out.iter_mut().enumerate().take(8) {
            let (sc, m) = scale_min_k4(g, &self.scales);
            let q = &self.qs[32 * (g / 2)..32 * (g / 2) + 32];
            let shift = 4 * (g % 2);
            *o = group(
                std::array::from_fn(|l| {
                    (((q[l] >> shift) & 15) | (((self.qh[l] >> g) & 1) << 4)) as i8
                }),
                d * sc as f32,
                -dmin * m as f32,
            );
        }
    }
}

impl Groups for k_quants::BlockQ6K {
    fn groups(&self, out: &mut [Group]) {
        let d = f16(self.d);
        for (g, o) in out.iter_mut().enumerate().take(8) {
            let (n, k) = (g / 4, g % 4);
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            let sc = &self.scales[8 * n..8 * n + 8];
            let codes = std::array::from_fn(|l| {
                let low = match k {
                    0 => ql[l] & 15,
                    1 => ql[l + 32] & 15,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                let high = (qh[l] >> (2 * k)) & 3;
                (low | (high << 4)) as i8 - 32
            });
            *o = Group {
                codes,
                scale: [d * sc[2 * k] as f32, d * sc[2 * k + 1] as f32],
                bias: [0.0; 2],
            };
        }
    }
}

impl Groups for k_quants::BlockQ2K {
    fn groups(&self, out: &mut [Group]) {
        let (d, dmin) = (f16(self.d), f16(self.dmin));
        for (g, o) in out.iter_mut().enumerate().take(8) {
            let (n, j) = (g / 4, g % 4);
            let q = &self.qs[32 * n..32 * n + 32];
            let s0 = self.scales[8 * n + 2 * j];
            let s1 = self.scales[8 * n + 2 * j + 1];
            *o = Group {
                codes: std::array::from_fn(|l| ((q[l] >> (2 * j)) & 3) as i8),
                scale: [d * (s0 & 15) as f32, d * (s1 & 15) as f32],
                bias: [-dmin * (s0 >> 4) as f32, -dmin * (s1 >> 4) as f32],
            };
        }
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

impl Groups for k_quants::BlockQ3K {
    fn groups(&self, out: &mut [Group]) {
        let d = f16(self.d);
        let scales = q3k_scales(&self.scales);
        for (g, o) in out.iter_mut().enumerate().take(8) {
            let (n, j) = (g / 4, g % 4);
            let q = &self.qs[32 * n..32 * n + 32];
            let m = 1u8 << g;
            *o = Group {
                codes: std::array::from_fn(|l| {
                    let low = ((q[l] >> (2 * j)) & 3) as i8;
                    low - if self.hmask[l] & m != 0 { 0 } else { 4 }
                }),
                scale: [
                    d * scales[8 * n + 2 * j] as f32,
                    d * scales[8 * n + 2 * j + 1] as f32,
                ],
                bias: [0.0; 2],
            };
        }
    }
}

/// Integer dot products of the two halves of a group with one activation block.
#[inline]
fn half_dots(codes: &[i8; 32], a: &BlockQ8A) -> [i32; 2] {
    let mut s = [0i32; 2];
    for (h, sh) in s.iter_mut().enumerate() {
        *sh = codes[16 * h..16 * h + 16]
            .iter()
            .zip(&a.qs[16 * h..16 * h + 16])
            .map(|(&c, &q)| c as i32 * q as i32)
            .sum();
    }
    s
}

/// `out[t] = dot(row, token t)` for any grouped type; `acts` holds
/// `out.len()` tokens of `row.len() * BLOCK_SIZE / 32` blocks each.
pub fn dot_groups<B: Groups>(row: &[B], acts: &[BlockQ8A], out: &mut [f32]) {
    let gpb = B::BLOCK_SIZE / 32;
    let nb = row.len() * gpb;
    let mut groups = [Group::default(); QK_K / 32];
    out.fill(0.0);
    for (bi, blk) in row.iter().enumerate() {
        blk.groups(&mut groups[..gpb]);
        for (t, o) in out.iter_mut().enumerate() {
            let tok = &acts[t * nb + bi * gpb..t * nb + bi * gpb + gpb];
            let mut s = 0f32;
            for (g, a) in groups[..gpb].iter().zip(tok) {
                let [lo, hi] = half_dots(&g.codes, a);
                s += a.d
                    * (g.scale[0] * lo as f32
                        + g.scale[1] * hi as f32
                        + g.bias[0] * a.sum[0] as f32
                        + g.bias[1] * a.sum[1] as f32);
            }
            *o += s;
        }
    }
}

/// `out[t] = dot(row, x of token t)` for the float types.
pub fn dot_float<B: Block>(row: &[B], acts: &Acts, out: &mut [f32], value: impl Fn(&B) -> f32) {
    let cols = row.len();
    for (t, o) in out.iter_mut().enumerate() {
        let x = &acts.x[t * cols..(t + 1) * cols];
        *o = row.iter().zip(x).map(|(w, v)| value(w) * v).sum();
    }
}
