//! The legacy 32-weight blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml-quants.c
//! `quantize_row_*_ref`). Quantization matches gguf-py's numpy quantizers byte
//! for byte, which in turn match ggml's reference code: a scale from the
//! block's extreme value, truncation after adding 0.5 (or rounding half away
//! from zero for Q8_0).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::search::{make_qkx3_quants, make_qx_quants};
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

/// Define `fn $name(args)` whose body is compiled twice: once for the build
/// target (portable) and once with AVX2, FMA and F16C enabled, picked at run
/// time. The kernels are plain fixed-size loops that LLVM auto-vectorizes,
/// so the wider build is the same arithmetic on wider vectors: results are
/// bit-identical between the two paths (Rust never contracts `a * b + c`
/// into an FMA on its own).
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn wide($($arg: $ty),*) $body
                if $crate::quants::legacy::has_avx2() {
                    // SAFETY: the CPU supports the features `wide` was built for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use dispatch;

/// The widest kernels the CPU can run: AVX-512 (F, BW, VL with F16C), AVX2 + FMA +
/// F16C (explicit quantizers; the auto-vectorized build of the portable loops for the
/// rest), or the portable loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Portable,
    Avx2,
    Avx512,
}

/// Detected once (std caches the CPUID result); tests may cap it lower.
#[inline]
pub(crate) fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    let detected = if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("f16c")
    {
        Level::Avx512
    } else if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        Level::Avx2
    } else {
        Level::Portable
    };
    #[cfg(not(target_arch = "x86_64"))]
    let detected = Level::Portable;
    #[cfg(test)]
    if let Some(cap) = FORCE_LEVEL.with(|c| c.get()) {
        return detected.min(cap);
    }
    detected
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    level() >= Level::Avx2
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    level() == Level::Avx512
}

/// `fn $name(src, dst, check: bool) -> bool`: the unweighted quantizer on the widest
/// path (explicit AVX-512, explicit AVX2, portable). With `check`, it returns false
/// when `src` holds a non-finite value (the SIMD kernels check in their own pass; the
/// portable one looks first).
macro_rules! plain_quantizer {
    ($name:ident, $B:ty, $avx512:ident, $fallback:path) => {
        pub(crate) fn $name(src: &[f32], dst: &mut [$B], check: bool) -> bool {
            #[cfg(target_arch = "x86_64")]
            if $crate::quants::legacy::has_avx512() {
                // SAFETY: the CPU has AVX-512 F/BW/VL and F16C.
                return unsafe { $crate::quants::avx512::$avx512(src, dst) } || !check;
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::quants::legacy::has_avx2() {
                // SAFETY: the CPU has AVX2, FMA and F16C.
                return unsafe { $crate::quants::avx2::$avx512(src, dst) } || !check;
            }
            if check && !$crate::quants::all_finite(src) {
                return false;
            }
            $fallback(src, dst);
            true
        }
    };
}
pub(crate) use plain_quantizer;

/// `fn $name(src, dst)`: the dequantizer on the widest path.
macro_rules! plain_dequantizer {
    ($name:ident, $B:ty, $avx512:ident, $fallback:path) => {
        pub(crate) fn $name(src: &[$B], dst: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if $crate::quants::legacy::has_avx512() {
                // SAFETY: the CPU has AVX-512 F/BW/VL and F16C.
                return unsafe { $crate::quants::avx512::$avx512(src, dst) };
            }
            $fallback(src, dst)
        }
    };
}
pub(crate) use plain_dequantizer;

plain_quantizer!(q4_0_row, BlockQ4_0, quantize_q4_0, quantize_q4_0);
plain_quantizer!(q4_1_row, BlockQ4_1, quantize_q4_1, quantize_q4_1);
plain_quantizer!(q5_0_row, BlockQ5_0, quantize_q5_0, quantize_q5_0);
plain_quantizer!(q5_1_row, BlockQ5_1, quantize_q5_1, quantize_q5_1);
plain_quantizer!(q8_0_row, BlockQ8_0, quantize_q8_0, quantize_q8_0);
plain_dequantizer!(q4_0_values, BlockQ4_0, dequantize_q4_0, dequantize_q4_0);
plain_dequantizer!(q4_1_values, BlockQ4_1, dequantize_q4_1, dequantize_q4_1);
plain_dequantizer!(q5_0_values, BlockQ5_0, dequantize_q5_0, dequantize_q5_0);
plain_dequantizer!(q5_1_values, BlockQ5_1, dequantize_q5_1, dequantize_q5_1);
plain_dequantizer!(q8_0_values, BlockQ8_0, dequantize_q8_0, dequantize_q8_0);

/// `quantize_row_checked` of the legacy types: the fused kernel without an imatrix.
macro_rules! checked_row {
    ($plain:ident) => {
        fn quantize_row_checked(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) -> bool {
            if imatrix.is_none() {
                return $plain(src, dst, true);
            }
            if !super::all_finite(src) {
                return false;
            }
            Self::quantize_row(src, dst, imatrix);
            true
        }
    };
}

type Weights = [f32; 32];

#[inline(always)]
fn as_block(x: &[f32]) -> &Weights {
    x.try_into().expect("32-weight chunk")
}

#[inline(always)]
fn as_block_mut(y: &mut [f32]) -> &mut Weights {
    y.try_into().expect("32-weight chunk")
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Largest magnitude, from eight lanes of partial maxima (exact in any
/// order; a plain sequential max-reduction does not vectorize).
#[inline(always)]
fn absmax(x: &Weights) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            lanes[k] = if a > lanes[k] { a } else { lanes[k] };
        }
    }
    lanes.iter().fold(0f32, |m, &a| if a > m { a } else { m })
}

/// The value of largest magnitude, sign kept; the first one on ties, and
/// +0.0 for a block of zeros (ggml's `if (amax < fabsf(v))` scan).
#[inline(always)]
fn signed_absmax(x: &Weights) -> f32 {
    let amax = absmax(x);
    // Bit j set where |x_j| reaches the maximum: the lowest set bit is the
    // first such weight (no early-exit loop).
    let mut hits = 0u32;
    for (j, &v) in x.iter().enumerate() {
        hits |= ((v.abs() == amax) as u32) << j;
    }
    let first = x[(hits.trailing_zeros() & 31) as usize];
    if amax == 0.0 {
        0.0
    } else {
        first
    }
}

/// Minimum and maximum, the first one met on ties between +0.0 and -0.0
/// (ggml's `if (v < min) min = v` scan keeps the first; lane-wise partial
/// results may hold the other zero, so a zero result is looked up again).
#[inline(always)]
fn min_max(x: &Weights) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
            hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
        }
    }
    let mut min = lo
        .iter()
        .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    let mut max = hi
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if min == 0.0 || max == 0.0 {
        let first_zero = x.iter().copied().find(|v| *v == 0.0).unwrap_or(0.0);
        if min == 0.0 {
            min = first_zero;
        }
        if max == 0.0 {
            max = first_zero;
        }
    }
    (min, max)
}

/// `trunc(v)` clamped to `0..=max_code`: what `(trunc(v) as u8).min(max_code)`
/// gives for every v (NaN gives 0), in a form that vectorizes: `f32::trunc`
/// is a libm call without SSE4.1, and a saturating `as` cast is scalarized.
/// Clamping first commutes with truncation (both are monotonic).
#[inline(always)]
fn code(v: f32, max_code: i32) -> u8 {
    let v = if v > 0.0 { v } else { 0.0 };
    let top = max_code as f32;
    let v = if v < top { v } else { top };
    // SAFETY: v is in [0, max_code], finite and representable as i32.
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

/// Symmetric codes `trunc(x / d + half_range + 0.5)`, `d = max / -half_range`.
#[inline(always)]
fn symmetric_codes(x: &Weights, half_range: f32, max_code: i32) -> (f32, [u8; 32]) {
    let d = signed_absmax(x) / -half_range;
    let id = inverse(d);
    let offset = half_range + 0.5;
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = code(v * id + offset, max_code);
    }
    (d, q)
}

/// Affine codes `trunc((x - min) / d + 0.5)`, `d = (max - min) / max_code`.
#[inline(always)]
fn affine_codes(x: &Weights, max_code: i32) -> (f32, f32, [u8; 32]) {
    let (min, max) = min_max(x);
    let d = (max - min) / max_code as f32;
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = code((v - min) * id + 0.5, max_code);
    }
    (d, min, q)
}

/// Pack 32 codes of up to 4 bits: low nibbles from the first half.
#[inline(always)]
fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
    qs
}

/// Gather the lowest bit of each of 8 bytes into one byte (bit k from byte
/// k). The multiplier's partial products land on distinct bits (8k + 56 - 7i
/// never collides), so there are no carries into the top byte.
#[inline(always)]
fn byte_lsbs(w: u64) -> u32 {
    ((w & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// Bit j: the fifth bit of code j (LLVM does not turn the obvious loop into
/// a movemask; this SWAR form is four multiplies).
#[inline(always)]
fn pack_high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut bits = 0u32;
    for (c, w) in q.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        bits |= byte_lsbs(w >> 4) << (8 * c);
    }
    bits.to_le_bytes()
}

/// Codes of a 32-weight block: low nibbles, plus the fifth bit from `qh`.
#[inline(always)]
fn unpack(qs: &[u8; 16], qh: u32) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// `y = d * (code - offset)` (symmetric types).
#[inline(always)]
fn scale_codes(q: &[u8; 32], d: f32, offset: i32, y: &mut Weights) {
    for (y, &c) in y.iter_mut().zip(q) {
        *y = d * (c as i32 - offset) as f32;
    }
}

/// `y = d * code + m` (affine types; one rounding after each operation).
#[inline(always)]
fn affine_scale_codes(q: &[u8; 32], d: f32, m: f32, y: &mut Weights) {
    for (y, &c) in y.iter_mut().zip(q) {
        *y = d * c as f32 + m;
    }
}

/// `Σ code·x` with eight partial sums (a vector register's worth).
#[inline(always)]
fn dot_codes(q: &[u8; 32], x: &Weights) -> f32 {
    let mut acc = [0f32; 8];
    for (q, x) in q.chunks_exact(8).zip(x.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += q[k] as f32 * x[k];
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn sum32(x: &Weights) -> f32 {
    let mut acc = [0f32; 8];
    for x in x.chunks_exact(8) {
        for k in 0..8 {
            acc[k] += x[k];
        }
    }
    acc.iter().sum()
}

/// `v.round() as i8` (C's `roundf`, half away from zero, then a saturating
/// cast; NaN gives 0) without a libm call: after clamping, the fraction
/// `v - trunc(v)` is exact, so comparing it with ±0.5 is exact.
#[inline(always)]
fn round_half_away(v: f32) -> i8 {
    #[allow(clippy::eq_op)] // v == v: false for NaN only
    let v = if v == v { v } else { 0.0 };
    let v = if v > -128.0 { v } else { -128.0 };
    let v = if v < 127.0 { v } else { 127.0 };
    // SAFETY: v is finite and in [-128, 127].
    let t = unsafe { v.to_int_unchecked::<i32>() };
    let frac = v - t as f32;
    (t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32) as i8
}

dispatch! {
    fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, q) = symmetric_codes(as_block(x), 8.0, 15);
            block.d = f16::from_f32(d);
            block.qs = pack_nibbles(&q);
        }
    }
}

dispatch! {
    fn quantize_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, m, q) = affine_codes(as_block(x), 15);
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qs = pack_nibbles(&q);
        }
    }
}

dispatch! {
    fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, q) = symmetric_codes(as_block(x), 16.0, 31);
            block.d = f16::from_f32(d);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }
}

dispatch! {
    fn quantize_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK4_0)) {
            let (d, m, q) = affine_codes(as_block(x), 31);
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }
}

dispatch! {
    fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK8_0)) {
            let x = as_block(x);
            let d = absmax(x) / 127.0;
            let id = inverse(d);
            block.d = f16::from_f32(d);
            for (q, &v) in block.qs.iter_mut().zip(x) {
                *q = round_half_away(v * id);
            }
        }
    }
}

dispatch! {
    fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            scale_codes(&unpack(&block.qs, 0), block.d.to_f32(), 8, as_block_mut(y));
        }
    }
}

dispatch! {
    fn dequantize_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let q = unpack(&block.qs, 0);
            affine_scale_codes(&q, block.d.to_f32(), block.m.to_f32(), as_block_mut(y));
        }
    }
}

dispatch! {
    fn dequantize_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let q = unpack(&block.qs, u32::from_le_bytes(block.qh));
            scale_codes(&q, block.d.to_f32(), 16, as_block_mut(y));
        }
    }
}

dispatch! {
    fn dequantize_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let q = unpack(&block.qs, u32::from_le_bytes(block.qh));
            affine_scale_codes(&q, block.d.to_f32(), block.m.to_f32(), as_block_mut(y));
        }
    }
}

dispatch! {
    fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
            let d = block.d.to_f32();
            for (y, &q) in y.iter_mut().zip(&block.qs) {
                *y = q as f32 * d;
            }
        }
    }
}

/// llama.cpp's importance-weighted legacy quantizers (`quantize_row_q4_0_impl` and
/// siblings in ggml-quants.c), used when an imatrix is given: each weight counts
/// `qw·sqrt(σ² + x²)`, σ² the row's mean square; the scale (and minimum) come from
/// the weighted least-squares searches shared with the K-quants.
fn row_sigma2(src: &[f32]) -> f32 {
    let mut sum = 0f32;
    for v in src {
        sum += v * v;
    }
    sum / src.len() as f32
}

fn importance(qw: &[f32], x: &Weights, sigma2: f32) -> Weights {
    std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt())
}

/// Weighted symmetric codes (0..2·nmax) and scale of every block of a row.
fn weighted_symmetric<'a>(
    src: &'a [f32],
    imatrix: &'a [f32],
    nmax: i32,
) -> impl Iterator<Item = (f32, [u8; 32])> + 'a {
    let sigma2 = row_sigma2(src);
    src.chunks_exact(32)
        .zip(imatrix.chunks_exact(32))
        .map(move |(x, qw)| {
            let x = as_block(x);
            let mut l = [0i8; 32];
            let d = make_qx_quants::<32>(nmax, x, &mut l, 1, Some(&importance(qw, x, sigma2)));
            (d, l.map(|v| v as u8))
        })
}

/// Weighted affine codes (0..=nmax), scale and minimum of every block of a row.
fn weighted_affine<'a>(
    src: &'a [f32],
    imatrix: &'a [f32],
    nmax: i32,
) -> impl Iterator<Item = (f32, f32, [u8; 32])> + 'a {
    let sigma2 = row_sigma2(src);
    src.chunks_exact(32)
        .zip(imatrix.chunks_exact(32))
        .map(move |(x, qw)| {
            let x = as_block(x);
            let mut l = [0u8; 32];
            let w = importance(qw, x, sigma2);
            let (d, the_min) = make_qkx3_quants::<32>(nmax, x, &w, &mut l, -0.9, 0.05, 36, false);
            (d, -the_min, l)
        })
}

impl Block for BlockQ4_0 {
    const QTYPE: QType = QType::Q4_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        let Some(qw) = imatrix else {
            q4_0_row(src, dst, false);
            return;
        };
        for (block, (d, q)) in dst.iter_mut().zip(weighted_symmetric(src, qw, 8)) {
            block.d = f16::from_f32(d);
            block.qs = pack_nibbles(&q);
        }
    }

    checked_row!(q4_0_row);

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        q4_0_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let xs = as_block(xs);
                b.d.to_f32() * (dot_codes(&unpack(&b.qs, 0), xs) - 8.0 * sum32(xs))
            })
            .sum()
    }
}

impl Block for BlockQ4_1 {
    const QTYPE: QType = QType::Q4_1;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        let Some(qw) = imatrix else {
            q4_1_row(src, dst, false);
            return;
        };
        for (block, (d, m, q)) in dst.iter_mut().zip(weighted_affine(src, qw, 15)) {
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qs = pack_nibbles(&q);
        }
    }

    checked_row!(q4_1_row);

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        q4_1_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let xs = as_block(xs);
                let q = unpack(&b.qs, 0);
                b.d.to_f32() * dot_codes(&q, xs) + b.m.to_f32() * sum32(xs)
            })
            .sum()
    }
}

impl Block for BlockQ5_0 {
    const QTYPE: QType = QType::Q5_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        let Some(qw) = imatrix else {
            q5_0_row(src, dst, false);
            return;
        };
        for (block, (d, q)) in dst.iter_mut().zip(weighted_symmetric(src, qw, 16)) {
            block.d = f16::from_f32(d);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }

    checked_row!(q5_0_row);

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        q5_0_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let xs = as_block(xs);
                let q = unpack(&b.qs, u32::from_le_bytes(b.qh));
                b.d.to_f32() * (dot_codes(&q, xs) - 16.0 * sum32(xs))
            })
            .sum()
    }
}

impl Block for BlockQ5_1 {
    const QTYPE: QType = QType::Q5_1;

    fn quantize_row(src: &[f32], dst: &mut [Self], imatrix: Option<&[f32]>) {
        let Some(qw) = imatrix else {
            q5_1_row(src, dst, false);
            return;
        };
        for (block, (d, m, q)) in dst.iter_mut().zip(weighted_affine(src, qw, 31)) {
            block.d = f16::from_f32(d);
            block.m = f16::from_f32(m);
            block.qh = pack_high_bits(&q);
            block.qs = pack_nibbles(&q);
        }
    }

    checked_row!(q5_1_row);

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        q5_1_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK4_0))
            .map(|(b, xs)| {
                let xs = as_block(xs);
                let q = unpack(&b.qs, u32::from_le_bytes(b.qh));
                b.d.to_f32() * dot_codes(&q, xs) + b.m.to_f32() * sum32(xs)
            })
            .sum()
    }
}

impl Block for BlockQ8_0 {
    const QTYPE: QType = QType::Q8_0;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        q8_0_row(src, dst, false);
    }

    checked_row!(q8_0_row);

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        q8_0_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter()
            .zip(x.chunks_exact(QK8_0))
            .map(|(b, xs)| {
                let mut acc = [0f32; 8];
                for (q, x) in b.qs.chunks_exact(8).zip(xs.chunks_exact(8)) {
                    for k in 0..8 {
                        acc[k] += q[k] as f32 * x[k];
                    }
                }
                b.d.to_f32() * acc.iter().sum::<f32>()
            })
            .sum()
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to run the narrower paths on a machine with wider ones.
    pub(crate) static FORCE_LEVEL: std::cell::Cell<Option<Level>> =
        const { std::cell::Cell::new(None) };
}

/// Every path this machine can run, widest first (for the tests).
#[cfg(test)]
pub(crate) fn all_levels() -> Vec<Level> {
    FORCE_LEVEL.with(|c| c.set(None));
    let top = level();
    [Level::Avx512, Level::Avx2, Level::Portable]
        .into_iter()
        .filter(|l| *l <= top)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain scalar kernels (ggml's `quantize_row_*_ref` written out
    /// directly): the fast kernels above must agree with them bit for bit.
    mod reference {
        use super::super::*;

        fn signed_absmax(x: &[f32]) -> f32 {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            max
        }

        fn min_max(x: &[f32]) -> (f32, f32) {
            let (mut lo, mut hi) = (f32::MAX, -f32::MAX);
            for &v in x {
                if v < lo {
                    lo = v;
                }
                if v > hi {
                    hi = v;
                }
            }
            (lo, hi)
        }

        fn pack(q: &[u8], with_high: bool) -> ([u8; 16], [u8; 4]) {
            let mut qs = [0u8; 16];
            let mut qh = 0u32;
            for j in 0..16 {
                qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
            }
            if with_high {
                for (j, &v) in q.iter().enumerate() {
                    qh |= ((v as u32 >> 4) & 1) << j;
                }
            }
            (qs, qh.to_le_bytes())
        }

        fn symmetric(x: &[f32], half: f32, max_code: u8) -> (f16, [u8; 16], [u8; 4]) {
            let d = signed_absmax(x) / -half;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let q: Vec<u8> = x
                .iter()
                .map(|v| ((v * id + half + 0.5).trunc() as u8).min(max_code))
                .collect();
            let (qs, qh) = pack(&q, max_code > 15);
            (f16::from_f32(d), qs, qh)
        }

        fn affine(x: &[f32], max_code: u8) -> (f16, f16, [u8; 16], [u8; 4]) {
            let (min, max) = min_max(x);
            let d = (max - min) / max_code as f32;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let q: Vec<u8> = x
                .iter()
                .map(|v| (((v - min) * id + 0.5).trunc() as u8).min(max_code))
                .collect();
            let (qs, qh) = pack(&q, max_code > 15);
            (f16::from_f32(d), f16::from_f32(min), qs, qh)
        }

        /// Quantize one block of `qtype` to its bytes.
        pub fn quantize(qtype: QType, x: &[f32]) -> Vec<u8> {
            let mut out = Vec::new();
            match qtype {
                QType::Q4_0 => {
                    let (d, qs, _) = symmetric(x, 8.0, 15);
                    out.extend(d.to_le_bytes());
                    out.extend(qs);
                }
                QType::Q5_0 => {
                    let (d, qs, qh) = symmetric(x, 16.0, 31);
                    out.extend(d.to_le_bytes());
                    out.extend(qh);
                    out.extend(qs);
                }
                QType::Q4_1 | QType::Q5_1 => {
                    let five = qtype == QType::Q5_1;
                    let (d, m, qs, qh) = affine(x, if five { 31 } else { 15 });
                    out.extend(d.to_le_bytes());
                    out.extend(m.to_le_bytes());
                    if five {
                        out.extend(qh);
                    }
                    out.extend(qs);
                }
                QType::Q8_0 => {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
                }
                _ => unreachable!(),
            }
            out
        }

        /// Dequantize one block's bytes (ggml's `dequantize_row_*`).
        pub fn dequantize(qtype: QType, b: &[u8]) -> Vec<f32> {
            let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
            let code = |qs: &[u8], qh: u32, j: usize| -> i32 {
                let nib = if j < 16 {
                    qs[j] & 0x0f
                } else {
                    qs[j - 16] >> 4
                };
                (nib as u32 | (((qh >> j) & 1) << 4)) as i32
            };
            let qh_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            (0..32)
                .map(|j| match qtype {
                    QType::Q4_0 => (code(&b[2..], 0, j) - 8) as f32 * h(0),
                    QType::Q4_1 => code(&b[4..], 0, j) as f32 * h(0) + h(2),
                    QType::Q5_0 => (code(&b[6..], qh_at(2), j) - 16) as f32 * h(0),
                    QType::Q5_1 => code(&b[8..], qh_at(4), j) as f32 * h(0) + h(2),
                    QType::Q8_0 => b[2 + j] as i8 as f32 * h(0),
                    _ => unreachable!(),
                })
                .collect()
        }
    }

    const LEGACY: [QType; 5] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
    ];

    /// Blocks that probe the edges: ties for the largest magnitude, signed
    /// zeros, constant blocks, subnormals, huge and tiny scales, halfway codes.
    fn test_blocks() -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x = Vec::new();
        for scale in [1.0f32, 0.02, 1e-3, 3e4, 1e-30, 1e-41] {
            for _ in 0..64 {
                x.extend((0..32).map(|_| next() * scale));
            }
        }
        let edge: [[f32; 4]; 8] = [
            [0.0, 0.0, 0.0, 0.0],
            [-0.0, 0.0, -0.0, 0.0],
            [-2.0, 2.0, 1.0, -1.0],
            [2.0, -2.0, 1.0, -1.0],
            [0.5, 0.5, 0.5, 0.5],
            [-0.75, -0.75, -0.75, -0.75],
            [1.0, 0.0625, -0.0625, 0.53125],
            [127.0, 63.5, -63.5, 0.5],
        ];
        for e in edge {
            x.extend(e.iter().cycle().take(32));
        }
        // Integer grids: every code sits exactly on a rounding boundary.
        for k in [8, 15, 16, 31, 127] {
            x.extend((0..32).map(|j| (j as f32 - 16.0) / k as f32 + 0.5 / k as f32));
        }
        x
    }

    fn quantize_bytes(qtype: QType, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; qtype.row_bytes(x.len()).unwrap()];
        super::super::quantize(qtype, x, x.len(), None, &mut out).unwrap();
        out
    }

    fn with_path<T>(level: Level, f: impl FnOnce() -> T) -> T {
        FORCE_LEVEL.with(|c| c.set(Some(level)));
        let out = f();
        FORCE_LEVEL.with(|c| c.set(None));
        out
    }

    fn kernel_quantize(qtype: QType, x: &[f32]) -> Vec<u8> {
        macro_rules! run {
            ($B:ty) => {{
                let mut blocks = vec![<$B>::zeroed(); x.len() / 32];
                <$B>::quantize_row(x, &mut blocks, None);
                bytemuck::cast_slice(&blocks).to_vec()
            }};
        }
        match qtype {
            QType::Q4_0 => run!(BlockQ4_0),
            QType::Q4_1 => run!(BlockQ4_1),
            QType::Q5_0 => run!(BlockQ5_0),
            QType::Q5_1 => run!(BlockQ5_1),
            _ => run!(BlockQ8_0),
        }
    }

    fn kernel_dequantize(qtype: QType, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / qtype.type_size() * 32;
        let mut y = vec![0f32; n];
        macro_rules! run {
            ($B:ty) => {{
                let blocks: Vec<$B> = bytemuck::pod_collect_to_vec(bytes);
                <$B>::dequantize_row(&blocks, &mut y);
            }};
        }
        match qtype {
            QType::Q4_0 => run!(BlockQ4_0),
            QType::Q4_1 => run!(BlockQ4_1),
            QType::Q5_0 => run!(BlockQ5_0),
            QType::Q5_1 => run!(BlockQ5_1),
            _ => run!(BlockQ8_0),
        }
        y
    }

    #[test]
    fn fast_kernels_match_the_reference_on_both_paths() {
        let x = test_blocks();
        for qtype in LEGACY {
            let want: Vec<u8> = x
                .chunks_exact(32)
                .flat_map(|b| reference::quantize(qtype, b))
                .collect();
            for portable in all_levels() {
                let got = with_path(portable, || kernel_quantize(qtype, &x));
                for (i, (g, w)) in got
                    .chunks_exact(qtype.type_size())
                    .zip(want.chunks_exact(qtype.type_size()))
                    .enumerate()
                {
                    assert_eq!(g, w, "{} block {i} path={portable:?}", qtype.name());
                }
                let want_y: Vec<u32> = want
                    .chunks_exact(qtype.type_size())
                    .flat_map(|b| reference::dequantize(qtype, b))
                    .map(f32::to_bits)
                    .collect();
                let got_y: Vec<u32> = with_path(portable, || kernel_dequantize(qtype, &want))
                    .into_iter()
                    .map(f32::to_bits)
                    .collect();
                assert_eq!(
                    got_y,
                    want_y,
                    "{} dequantize path={portable:?}",
                    qtype.name()
                );
            }
        }
    }

    /// The checked quantizers give the unchecked bytes on finite rows and flag a NaN
    /// or an infinity in any block and lane, on every path.
    #[test]
    fn checked_rows_flag_non_finite_values() {
        fn run<B: Block>(x: &[f32]) -> (bool, Vec<u8>) {
            let mut blocks = vec![B::zeroed(); x.len() / 32];
            let ok = B::quantize_row_checked(x, &mut blocks, None);
            (ok, bytemuck::cast_slice(&blocks).to_vec())
        }
        fn check(qtype: QType, x: &[f32]) -> (bool, Vec<u8>) {
            match qtype {
                QType::Q4_0 => run::<BlockQ4_0>(x),
                QType::Q4_1 => run::<BlockQ4_1>(x),
                QType::Q5_0 => run::<BlockQ5_0>(x),
                QType::Q5_1 => run::<BlockQ5_1>(x),
                _ => run::<BlockQ8_0>(x),
            }
        }
        let x: Vec<f32> = test_blocks().into_iter().take(32 * 8).collect();
        for qtype in LEGACY {
            for path in all_levels() {
                let (ok, got) = with_path(path, || check(qtype, &x));
                assert!(ok, "{} {path:?}", qtype.name());
                assert_eq!(got, with_path(path, || kernel_quantize(qtype, &x)));
                for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [0, 5, 16, 31, 32 * 7 + 17, 32 * 8 - 1] {
                        let mut y = x.clone();
                        y[at] = bad;
                        let (ok, _) = with_path(path, || check(qtype, &y));
                        assert!(!ok, "{} {path:?} {bad} at {at}", qtype.name());
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_of_random_bytes_matches_the_reference() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..34 * 256)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 56) as u8
            })
            .collect();
        for qtype in LEGACY {
            let n = bytes.len() / qtype.type_size() * qtype.type_size();
            let want: Vec<u32> = bytes[..n]
                .chunks_exact(qtype.type_size())
                .flat_map(|b| reference::dequantize(qtype, b))
                .map(f32::to_bits)
                .collect();
            for portable in all_levels() {
                let got: Vec<u32> = with_path(portable, || kernel_dequantize(qtype, &bytes[..n]))
                    .into_iter()
                    .map(f32::to_bits)
                    .collect();
                // NaN scales: compare NaN-ness only.
                for (g, w) in got.iter().zip(&want) {
                    let (gf, wf) = (f32::from_bits(*g), f32::from_bits(*w));
                    assert!(g == w || (gf.is_nan() && wf.is_nan()), "{}", qtype.name());
                }
            }
        }
    }

    #[test]
    fn fused_dot_matches_the_dequantized_dot() {
        let x: Vec<f32> = test_blocks().into_iter().take(32 * 64).collect();
        let a: Vec<f32> = (0..x.len())
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
            .collect();
        for qtype in LEGACY {
            let q = quantize_bytes(qtype, &x);
            let y = kernel_dequantize(qtype, &q);
            let want: f64 = y.iter().zip(&a).map(|(p, q)| *p as f64 * *q as f64).sum();
            let got = super::super::vec_dot(qtype, &q, &a).unwrap() as f64;
            let scale: f64 = y
                .iter()
                .zip(&a)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            assert!(
                (got - want).abs() <= 1e-5 * scale,
                "{}: {got} vs {want}",
                qtype.name()
            );
        }
    }

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
        // ggml's scan keeps max = +0.0, so d = 0 / -8 = -0.0.
        let mut b = [BlockQ4_0::zeroed()];
        BlockQ4_0::quantize_row(&[-0.0; 32], &mut b, None);
        assert_eq!(b[0].d.to_bits(), 0x8000);
    }
}
