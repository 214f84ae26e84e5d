//! IQ4_NL and IQ4_XS: 4-bit codes into a fixed non-linear table of 16 levels
//! (ggml-quants.c `quantize_row_iq4_nl_impl`, `dequantize_row_iq4_{nl,xs}`).
//!
//! IQ4_NL: 32 weights, one f16 scale, `w = d * KVALUES[code]`.
//! IQ4_XS: 256 weights in eight 32-weight sub-blocks, each with a 6-bit scale
//! `ls` (low nibble in `scales_l`, two high bits in `scales_h`):
//! `w = (d * (ls - 32)) * KVALUES[code]`.
//!
//! The quantizer follows llama.cpp's search step by step and in the same f32
//! operation order, so that its output is byte-identical to `quantize_iq4_nl` /
//! `quantize_iq4_xs` (ggml-base is built without FMA contraction):
//! 1. weights `x²` (no imatrix) or `qw · sqrt(σ² + x²)`, σ² = 2·mean(x²) over
//!    the (super-)block;
//! 2. per 32-weight block: codes at `d = max/127`, the least-squares scale for
//!    those codes, then 15 more candidate inverse scales `(t - 127)/max`,
//!    t = -7..=7, keeping the scale with the largest `sumqx²/sumq2`;
//! 3. NL: codes re-chosen at the best scale; XS: a super-block scale
//!    `-max_scale/32`, 6-bit sub-block scales rounded to nearest even, and codes
//!    re-chosen at each sub-block's final scale.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::legacy::dispatch;
use super::{Block, QType, QK_K};

pub const QK4_NL: usize = 32;

/// The 16 IQ4 levels (`kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Blocks whose largest magnitude is below this get a zero scale.
const GROUP_MAX_EPS: f32 = 1e-15;
/// Candidate scales tried on each side of the first guess.
const NTRY: i32 = 7;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    /// Low nibble of byte j: weight j; high nibble: weight j + 16.
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub d: f16,
    /// Bits 2i..2i+2: the high two bits of sub-block i's scale.
    pub scales_h: u16,
    /// Low nibble of byte i: sub-block 2i; high nibble: sub-block 2i + 1.
    pub scales_l: [u8; QK_K / 64],
    /// 16 bytes per sub-block, packed as in IQ4_NL.
    pub qs: [u8; QK_K / 2],
}

/// `KVALUES_IQ4NL` as f32, and the gaps used by the branch-free search.
const KV_F32: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    t
};

/// llama.cpp's `best_index_int8` (the binary-search version shipped with the
/// peer): the interval `val[m] <= x < val[m+1]` found by search, then the
/// nearer end by comparing `x - val[m] < val[m+1] - x` in f32 (ties go up).
/// This is the plain reference; [`codes`] is the branch-free twin.
pub fn best_index_ref(x: f32) -> usize {
    let val = &KVALUES_IQ4NL;
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// Codes and levels of `id * x` for a 32-weight block. Branch-free form of
/// [`best_index_ref`]: the interval index is the count of inner levels
/// `<= v`, and both interval ends are built from the gaps by selects, so
/// the loop vectorizes (no table gather). Values outside the table fall in
/// the first or last interval and pick the end level, as the reference does.
#[inline(always)]
fn codes(xb: &[f32; 32], id: f32, l: &mut [u8; 32], q: &mut [f32; 32]) {
    for j in 0..32 {
        (l[j], q[j]) = level(id * xb[j]);
    }
}

/// Code and level of one value (see [`codes`]).
#[inline(always)]
fn level(v: f32) -> (u8, f32) {
    let mut m = 0u8;
    let mut lo = KV_F32[0];
    let mut hi = KV_F32[1];
    for k in 1..15 {
        let ge = v >= KV_F32[k];
        m += ge as u8;
        lo += if ge { KV_F32[k] - KV_F32[k - 1] } else { 0.0 };
        hi += if ge { KV_F32[k + 1] - KV_F32[k] } else { 0.0 };
    }
    let take_lo = v - lo < hi - v;
    (m + (!take_lo) as u8, if take_lo { lo } else { hi })
}

/// Importance of each weight of a 32-weight block.
#[inline(always)]
fn block_weights(xb: &[f32; 32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 32] {
    let mut w = [0f32; 32];
    match qw {
        Some(qw) => {
            for ((w, &x), &q) in w.iter_mut().zip(xb).zip(qw) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in w.iter_mut().zip(xb) {
                *w = x * x;
            }
        }
    }
    w
}

/// `σ² = 2·Σx²/n`, summed in order.
#[inline(always)]
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Candidate inverse scales of one block: the first guess `1/d`, then the
/// 2·NTRY + 1 tries.
const CANDIDATES: usize = 2 * NTRY as usize + 2;

/// Best scale of one 32-weight block (step 2 of the module notes); 0 for a
/// block of (near) zeros.
///
/// All 16 candidates are evaluated together, one candidate per vector lane:
/// each candidate's sums still run over j = 0..32 in order, so every sum is
/// the same f32 value as in llama.cpp's one-candidate-at-a-time loop, but the
/// 16 dependency chains overlap instead of running back to back. The choice
/// among them is then made in llama.cpp's order.
#[inline(always)]
fn block_scale(xb: &[f32; 32], w: &[f32; 32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KV_F32[0];
    let mut ids = [0f32; CANDIDATES];
    ids[0] = 1.0 / (-max / v0);
    for (t, id) in ids.iter_mut().enumerate().skip(1) {
        let itry = t as i32 - 1 - NTRY;
        *id = (itry as f32 + v0) / max;
    }
    let mut sumqx = [0f32; CANDIDATES];
    let mut sumq2 = [0f32; CANDIDATES];
    for (&x, &wj) in xb.iter().zip(w) {
        for t in 0..CANDIDATES {
            let q = level(ids[t] * x).1;
            let wq = wj * q;
            sumqx[t] += wq * x;
            sumq2[t] += wq * q;
        }
    }
    let mut d = if sumq2[0] > 0.0 {
        sumqx[0] / sumq2[0]
    } else {
        0.0
    };
    let mut best = d * sumqx[0];
    for t in 1..CANDIDATES {
        if sumq2[t] > 0.0 && sumqx[t] * sumqx[t] > best * sumq2[t] {
            d = sumqx[t] / sumq2[t];
            best = d * sumqx[t];
        }
    }
    d
}

/// Pack 32 codes: low nibbles from the first half.
#[inline(always)]
fn pack(l: &[u8; 32]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
    qs
}

#[inline(always)]
fn as_block(x: &[f32]) -> &[f32; 32] {
    x.try_into().expect("32-weight chunk")
}

/// C's `d ? 1/d : 0`.
#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// llama.cpp's `nearest_int`: round half to even (|v| is far below 2^22 here).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

impl BlockIQ4NL {
    #[inline(always)]
    fn quantize(x: &[f32; 32], qw: Option<&[f32]>) -> Self {
        let w = block_weights(x, qw, sigma2(x));
        let scale = block_scale(x, &w);
        let mut l = [0u8; 32];
        let mut q = [0f32; 32];
        codes(x, inverse(scale), &mut l, &mut q);
        Self {
            d: f16::from_f32(scale),
            qs: pack(&l),
        }
    }
}

impl BlockIQ4XS {
    #[inline(always)]
    fn quantize(x: &[f32], qw: Option<&[f32]>) -> Self {
        let sigma2 = sigma2(x);
        let mut scales = [0f32; QK_K / 32];
        let (mut amax_scale, mut max_scale) = (0f32, 0f32);
        for (ib, xb) in x.chunks_exact(32).enumerate() {
            let w = block_weights(as_block(xb), qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
            let s = block_scale(as_block(xb), &w);
            scales[ib] = s;
            if s.abs() > amax_scale {
                amax_scale = s.abs();
                max_scale = s;
            }
        }
        // An all-zero super-block stores d = -0.0, as llama.cpp does.
        let d = -max_scale / 32.0;
        let id = inverse(d);
        let mut block = Self {
            d: f16::from_f32(d),
            scales_h: 0,
            scales_l: [0; QK_K / 64],
            qs: [0; QK_K / 2],
        };
        let mut l = [0u8; 32];
        let mut q = [0f32; 32];
        for (ib, xb) in x.chunks_exact(32).enumerate() {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            codes(as_block(xb), inverse(dl), &mut l, &mut q);
            block.qs[16 * ib..16 * ib + 16].copy_from_slice(&pack(&l));
            let ls = (ls + 32) as u8;
            block.scales_l[ib / 2] |= (ls & 0x0f) << (4 * (ib % 2));
            block.scales_h |= ((ls >> 4) as u16) << (2 * ib);
        }
        block
    }

    /// Scale of sub-block `ib`: `d * (ls - 32)`.
    #[inline(always)]
    fn sub_scale(&self, d: f32, ib: usize) -> f32 {
        let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let hi = ((self.scales_h >> (2 * ib)) & 3) as u8;
        d * ((lo | (hi << 4)) as i32 - 32) as f32
    }
}

/// Dequantize 16 packed bytes of codes at scale `d` into 32 weights.
#[inline(always)]
fn dequant32(qs: &[u8], d: f32, y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((&b, a), c) in qs.iter().zip(lo).zip(hi) {
        *a = d * KV_F32[(b & 0x0f) as usize];
        *c = d * KV_F32[(b >> 4) as usize];
    }
}

/// `Σ KVALUES[code_j] · x_j` over one 32-weight block.
#[inline(always)]
fn dot32(qs: &[u8], x: &[f32]) -> f32 {
    let (lo, hi) = x.split_at(16);
    let mut acc = [0f32; 16];
    for (((a, &b), &u), &v) in acc.iter_mut().zip(qs).zip(lo).zip(hi) {
        *a = KV_F32[(b & 0x0f) as usize] * u + KV_F32[(b >> 4) as usize] * v;
    }
    acc.iter().sum()
}

dispatch! {
    fn quantize_nl_row(src: &[f32], dst: &mut [BlockIQ4NL], imatrix: Option<&[f32]>) {
        for (i, (block, x)) in dst.iter_mut().zip(src.chunks_exact(QK4_NL)).enumerate() {
            let qw = imatrix.map(|w| &w[QK4_NL * i..QK4_NL * (i + 1)]);
            *block = BlockIQ4NL::quantize(as_block(x), qw);
        }
    }
}

dispatch! {
    fn quantize_xs_row(src: &[f32], dst: &mut [BlockIQ4XS], imatrix: Option<&[f32]>) {
        for (i, (block, x)) in dst.iter_mut().zip(src.chunks_exact(QK_K)).enumerate() {
            let qw = imatrix.map(|w| &w[QK_K * i..QK_K * (i + 1)]);
            *block = BlockIQ4XS::quantize(x, qw);
        }
    }
}

impl Block for BlockIQ4NL {
    const QTYPE: QType = QType::IQ4_NL;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        quantize_nl_row(src, dst, imatrix);
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_NL)) {
            dequant32(&block.qs, block.d.to_f32(), y);
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_NL))
            .map(|(b, xs)| b.d.to_f32() * dot32(&b.qs, xs))
            .sum()
    }
}

impl Block for BlockIQ4XS {
    const QTYPE: QType = QType::IQ4_XS;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        quantize_xs_row(src, dst, imatrix);
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, (qs, y)) in block
                .qs
                .chunks_exact(16)
                .zip(y.chunks_exact_mut(32))
                .enumerate()
            {
                dequant32(qs, block.sub_scale(d, ib), y);
            }
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (block, xs) in src.iter().zip(x.chunks_exact(QK_K)) {
            let d = block.d.to_f32();
            for (ib, (qs, xs)) in block
                .qs
                .chunks_exact(16)
                .zip(xs.chunks_exact(32))
                .enumerate()
            {
                sum += block.sub_scale(d, ib) * dot32(qs, xs);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers (xorshift), roughly N(0, 1)-ish.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc
            })
            .collect()
    }

    /// llama.cpp's search written as in ggml-quants.c: one candidate at a time.
    fn block_scale_ref(xb: &[f32; 32], w: &[f32; 32]) -> f32 {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            return 0.0;
        }
        let sums = |id: f32| {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..32 {
                let q = KV_F32[best_index_ref(id * xb[j])];
                sumqx += w[j] * q * xb[j];
                sumq2 += w[j] * q * q;
            }
            (sumqx, sumq2)
        };
        let v0 = KVALUES_IQ4NL[0] as f32;
        let d = -max / v0;
        let (sumqx, sumq2) = sums(1.0 / d);
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            let (sumqx, sumq2) = sums((itry as f32 + v0) / max);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    }

    #[test]
    fn lane_parallel_search_matches_the_reference_search() {
        let x = noise(32 * 2000, 21);
        let qw = noise(32 * 2000, 22);
        for (i, (xb, qb)) in x.chunks_exact(32).zip(qw.chunks_exact(32)).enumerate() {
            let scale = [1.0f32, 1e-3, 1e-14, 3e4][i % 4];
            let xb: Vec<f32> = xb.iter().map(|v| v * scale).collect();
            let xb = as_block(&xb);
            let qb: Vec<f32> = qb.iter().map(|v| v.abs()).collect();
            for weights in [None, Some(&qb[..])] {
                let w = block_weights(xb, weights, sigma2(xb));
                let (got, want) = (block_scale(xb, &w), block_scale_ref(xb, &w));
                assert_eq!(got.to_bits(), want.to_bits(), "block {i}");
            }
        }
    }

    #[test]
    fn branch_free_codes_match_the_reference_search() {
        let mut vals: Vec<f32> = noise(4096, 1).iter().map(|v| v * 200.0).collect();
        // Midpoints, levels and their neighbours, the ends and beyond.
        for w in KVALUES_IQ4NL.windows(2) {
            let m = (w[0] as f32 + w[1] as f32) / 2.0;
            let (up, down) = (
                f32::from_bits(m.to_bits() + 1),
                f32::from_bits(m.to_bits() - 1),
            );
            vals.extend([m, up, down, w[0] as f32, w[1] as f32]);
        }
        vals.extend([-1e30, 1e30, -127.5, 113.5, 0.0, -0.0]);
        vals.resize(vals.len().next_multiple_of(32), 0.5);
        for chunk in vals.chunks_exact(32) {
            let (mut l, mut q) = ([0u8; 32], [0f32; 32]);
            codes(as_block(chunk), 1.0, &mut l, &mut q);
            for j in 0..32 {
                let r = best_index_ref(chunk[j]);
                assert_eq!(l[j] as usize, r, "x = {}", chunk[j]);
                assert_eq!(q[j], KV_F32[r]);
            }
        }
    }

    fn round_trip_rmse<B: Block>(x: &[f32], imatrix: Option<&[f32]>) -> f32 {
        let mut blocks = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
        B::quantize_row(x, &mut blocks, imatrix);
        let mut y = vec![0f32; x.len()];
        B::dequantize_row(&blocks, &mut y);
        let se: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        (se / x.len() as f32).sqrt()
    }

    #[test]
    fn round_trip_error_is_small_and_search_beats_plain_absmax() {
        let x = noise(4096, 7);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let nl = round_trip_rmse::<BlockIQ4NL>(&x, None);
        let xs = round_trip_rmse::<BlockIQ4XS>(&x, None);
        // 4-bit non-linear codes on Gaussian-like data: roughly 10% relative error.
        assert!(nl < 0.13 * rms, "IQ4_NL rmse {nl} vs rms {rms}");
        assert!(xs < 0.14 * rms, "IQ4_XS rmse {xs} vs rms {rms}");

        // The plain absmax scale with nearest codes, no search.
        let mut se = 0f32;
        for xb in x.chunks_exact(32) {
            let max = xb
                .iter()
                .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
            let d = max / -127.0;
            for &v in xb {
                let e = v - d * KV_F32[best_index_ref(v / d)];
                se += e * e;
            }
        }
        let plain = (se / x.len() as f32).sqrt();
        assert!(nl < plain, "search {nl} vs absmax {plain}");
    }

    #[test]
    fn imatrix_weights_steer_the_error() {
        let x = noise(2048, 3);
        // Heavy weight on the even columns: their error must drop.
        let qw: Vec<f32> = (0..x.len())
            .map(|i| if i % 2 == 0 { 100.0 } else { 0.01 })
            .collect();
        let err_even = |imatrix: Option<&[f32]>| {
            let mut blocks = vec![BlockIQ4NL::zeroed(); x.len() / 32];
            BlockIQ4NL::quantize_row(&x, &mut blocks, imatrix);
            let mut y = vec![0f32; x.len()];
            BlockIQ4NL::dequantize_row(&blocks, &mut y);
            x.iter()
                .zip(&y)
                .step_by(2)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        };
        assert!(err_even(Some(&qw)) < err_even(None));
    }

    #[test]
    fn zero_blocks_match_llama_cpp() {
        let mut nl = [BlockIQ4NL::zeroed()];
        BlockIQ4NL::quantize_row(&[0.0; 32], &mut nl, None);
        assert_eq!(nl[0].d.to_bits(), 0);
        // Code of 0.0 is level 8 (value 1): nearer than -10.
        assert!(nl[0].qs.iter().all(|&b| b == 0x88));
        let mut xs = [BlockIQ4XS::zeroed()];
        BlockIQ4XS::quantize_row(&[0.0; QK_K], &mut xs, None);
        assert_eq!(xs[0].d.to_bits(), 0x8000);
        assert!(xs[0].qs.iter().all(|&b| b == 0x88));
        assert!(xs[0].scales_l.iter().all(|&b| b == 0));
        assert_eq!(xs[0].scales_h, 0xaaaa);
    }

    #[test]
    fn dequantize_reads_the_layout() {
        let mut nl = BlockIQ4NL::zeroed();
        nl.d = f16::from_f32(0.5);
        nl.qs[0] = 0xf0; // weight 0: code 0; weight 16: code 15
        let mut y = [0f32; 32];
        BlockIQ4NL::dequantize_row(&[nl], &mut y);
        assert_eq!(y[0], -63.5);
        assert_eq!(y[16], 56.5);
        assert_eq!(y[1], -63.5);

        let mut xs = BlockIQ4XS::zeroed();
        xs.d = f16::from_f32(0.25);
        // Sub-block 3: ls = 0b10_0101 = 37 -> scale 5 * 0.25.
        xs.scales_l[1] = 0x50;
        xs.scales_h = 0b10 << 6;
        xs.qs[16 * 3] = 0x0f;
        let mut y = vec![0f32; QK_K];
        BlockIQ4XS::dequantize_row(&[xs], &mut y);
        assert_eq!(y[96], 1.25 * 113.0);
        assert_eq!(y[96 + 16], 1.25 * -127.0);
        // Sub-block 0: ls = 0 -> scale -32 * 0.25.
        assert_eq!(y[0], -8.0 * -127.0);
    }

    #[test]
    fn fused_dot_matches_dequantized_dot() {
        let x = noise(1024, 11);
        let a = noise(1024, 12);
        let mut nl = vec![BlockIQ4NL::zeroed(); 1024 / 32];
        BlockIQ4NL::quantize_row(&x, &mut nl, None);
        let mut xs = vec![BlockIQ4XS::zeroed(); 1024 / QK_K];
        BlockIQ4XS::quantize_row(&x, &mut xs, None);
        let mut y = vec![0f32; 1024];
        BlockIQ4NL::dequantize_row(&nl, &mut y);
        let want: f64 = y.iter().zip(&a).map(|(p, q)| *p as f64 * *q as f64).sum();
        let got = BlockIQ4NL::vec_dot(&nl, &a) as f64;
        assert!(
            (got - want).abs() < 1e-3 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        BlockIQ4XS::dequantize_row(&xs, &mut y);
        let want: f64 = y.iter().zip(&a).map(|(p, q)| *p as f64 * *q as f64).sum();
        let got = BlockIQ4XS::vec_dot(&xs, &a) as f64;
        assert!(
            (got - want).abs() < 1e-3 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}
