//! AVX-512 kernels for the float and legacy types (F16, BF16, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0): one 32-weight block in two registers. They do the same arithmetic,
//! in the same order, as the portable kernels in `legacy` and `float` (a multiply
//! and an add are never fused), so every path writes the same bytes; the tests run
//! all of them against ggml's scalar reference.
//!
//! The quantizers also check finiteness in the same pass: the magnitude bits of
//! every value are max-reduced as integers (an infinity's or a NaN's are the
//! largest), and a kernel returns false when the row held one.
//!
//! The 512-bit intrinsics are stable since Rust 1.89; Cargo.toml still declares
//! `rust-version = "1.80"` (raising it turns on newer lints across the crate), so
//! clippy's MSRV check is silenced for this module only.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use half::f16;

use super::float::{BlockBF16, BlockF16};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

/// Magnitude bits at or above this: infinity or NaN.
const INF_BITS: u32 = 0x7f80_0000;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn magnitude(x: __m512) -> __m512i {
    _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fff_ffff))
}

/// f32 -> f16 bits, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn to_f16(v: f32) -> f16 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
    f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn from_f16(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Load one 32-weight block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn load_block(x: &[f32]) -> (__m512, __m512) {
    debug_assert!(x.len() >= 32);
    let p = x.as_ptr();
    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
}

/// Magnitude bits of the largest magnitude, and the value of largest magnitude with
/// its sign: the first one on ties, +0.0 for a block of zeros (ggml's scan).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn signed_absmax(x: &[f32], x0: __m512, x1: __m512) -> (u32, f32) {
    let (a0, a1) = (magnitude(x0), magnitude(x1));
    let amax = _mm512_reduce_max_epu32(_mm512_max_epu32(a0, a1));
    let va = _mm512_set1_epi32(amax as i32);
    let hits =
        _mm512_cmpeq_epi32_mask(a0, va) as u32 | (_mm512_cmpeq_epi32_mask(a1, va) as u32) << 16;
    let first = *x.get_unchecked((hits.trailing_zeros() & 31) as usize);
    (amax, if amax == 0 { 0.0 } else { first })
}

/// Minimum and maximum, the first zero met when either is a zero (ggml's scan).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn min_max(x: &[f32], x0: __m512, x1: __m512) -> (f32, f32) {
    let mut min = _mm512_reduce_min_ps(_mm512_min_ps(x0, x1));
    let mut max = _mm512_reduce_max_ps(_mm512_max_ps(x0, x1));
    if min == 0.0 || max == 0.0 {
        let z = _mm512_setzero_ps();
        let hits = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x0, z) as u32
            | (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x1, z) as u32) << 16;
        let first = *x.get_unchecked((hits.trailing_zeros() & 31) as usize);
        if min == 0.0 {
            min = first;
        }
        if max == 0.0 {
            max = first;
        }
    }
    (min, max)
}

/// `trunc(clamp(v, 0, top))` as i32 lanes (`legacy::code`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn codes(v: __m512, top: __m512) -> __m512i {
    _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), top))
}

/// Byte j: code j in the low nibble, code j + 16 in the high one.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn pack_nibbles(q0: __m512i, q1: __m512i) -> __m128i {
    let lo = _mm512_and_si512(q0, _mm512_set1_epi32(0x0f));
    _mm512_cvtepi32_epi8(_mm512_or_si512(lo, _mm512_slli_epi32::<4>(q1)))
}

/// Bit j: the fifth bit of code j.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn high_bits(q0: __m512i, q1: __m512i) -> [u8; 4] {
    let b = _mm512_set1_epi32(0x10);
    let bits = _mm512_test_epi32_mask(q0, b) as u32 | (_mm512_test_epi32_mask(q1, b) as u32) << 16;
    bits.to_le_bytes()
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn store16(dst: &mut [u8; 16], v: __m128i) {
    _mm_storeu_si128(dst.as_mut_ptr().cast(), v);
}

/// Symmetric codes `trunc(x * id + offset)` clamped to `0..=top`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn symmetric(x0: __m512, x1: __m512, id: f32, offset: f32, top: f32) -> (__m512i, __m512i) {
    let (vid, off, top) = (
        _mm512_set1_ps(id),
        _mm512_set1_ps(offset),
        _mm512_set1_ps(top),
    );
    (
        codes(_mm512_add_ps(_mm512_mul_ps(x0, vid), off), top),
        codes(_mm512_add_ps(_mm512_mul_ps(x1, vid), off), top),
    )
}

/// Affine codes `trunc((x - min) * id + 0.5)` clamped to `0..=top`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn affine(x0: __m512, x1: __m512, min: f32, id: f32, top: f32) -> (__m512i, __m512i) {
    let (vmin, vid, half, top) = (
        _mm512_set1_ps(min),
        _mm512_set1_ps(id),
        _mm512_set1_ps(0.5),
        _mm512_set1_ps(top),
    );
    (
        codes(
            _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(x0, vmin), vid), half),
            top,
        ),
        codes(
            _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(x1, vmin), vid), half),
            top,
        ),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) -> bool {
    let mut worst = 0u32;
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let (x0, x1) = load_block(x);
        let (amax, max) = signed_absmax(x, x0, x1);
        worst = worst.max(amax);
        let d = max / -8.0;
        let (q0, q1) = symmetric(x0, x1, inverse(d), 8.5, 15.0);
        b.d = to_f16(d);
        store16(&mut b.qs, pack_nibbles(q0, q1));
    }
    worst < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) -> bool {
    let mut worst = 0u32;
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let (x0, x1) = load_block(x);
        let (amax, max) = signed_absmax(x, x0, x1);
        worst = worst.max(amax);
        let d = max / -16.0;
        let (q0, q1) = symmetric(x0, x1, inverse(d), 16.5, 31.0);
        b.d = to_f16(d);
        b.qh = high_bits(q0, q1);
        store16(&mut b.qs, pack_nibbles(q0, q1));
    }
    worst < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) -> bool {
    let mut worst = _mm512_setzero_si512();
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let (x0, x1) = load_block(x);
        worst = _mm512_max_epu32(worst, _mm512_max_epu32(magnitude(x0), magnitude(x1)));
        let (min, max) = min_max(x, x0, x1);
        let d = (max - min) / 15.0;
        let (q0, q1) = affine(x0, x1, min, inverse(d), 15.0);
        b.d = to_f16(d);
        b.m = to_f16(min);
        store16(&mut b.qs, pack_nibbles(q0, q1));
    }
    _mm512_reduce_max_epu32(worst) < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) -> bool {
    let mut worst = _mm512_setzero_si512();
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let (x0, x1) = load_block(x);
        worst = _mm512_max_epu32(worst, _mm512_max_epu32(magnitude(x0), magnitude(x1)));
        let (min, max) = min_max(x, x0, x1);
        let d = (max - min) / 31.0;
        let (q0, q1) = affine(x0, x1, min, inverse(d), 31.0);
        b.d = to_f16(d);
        b.m = to_f16(min);
        b.qh = high_bits(q0, q1);
        store16(&mut b.qs, pack_nibbles(q0, q1));
    }
    _mm512_reduce_max_epu32(worst) < INF_BITS
}

/// `round_half_away(v)` (C's `roundf` then a saturating i8 cast) on 16 lanes: clamp,
/// truncate, then step by one where the (exact) fraction reaches ±0.5.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn round_half_away(v: __m512) -> __m128i {
    let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
    let v = _mm512_min_ps(
        _mm512_max_ps(v, _mm512_set1_ps(-128.0)),
        _mm512_set1_ps(127.0),
    );
    let t = _mm512_cvttps_epi32(v);
    let frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(t));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, _mm512_set1_ps(-0.5));
    let one = _mm512_set1_epi32(1);
    let t = _mm512_mask_add_epi32(t, up, t, one);
    let t = _mm512_mask_sub_epi32(t, down, t, one);
    _mm512_cvtepi32_epi8(t)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) -> bool {
    let mut worst = 0u32;
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
        let (x0, x1) = load_block(x);
        let amax = _mm512_reduce_max_epu32(_mm512_max_epu32(magnitude(x0), magnitude(x1)));
        worst = worst.max(amax);
        let d = f32::from_bits(amax) / 127.0;
        let id = _mm512_set1_ps(inverse(d));
        b.d = to_f16(d);
        let p = b.qs.as_mut_ptr().cast::<__m128i>();
        _mm_storeu_si128(p, round_half_away(_mm512_mul_ps(x0, id)));
        _mm_storeu_si128(p.add(1), round_half_away(_mm512_mul_ps(x1, id)));
    }
    worst < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(32)) {
        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
        let eight = _mm512_set1_epi32(8);
        let lo = _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0x0f)), eight);
        let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(q), eight);
        let d = _mm512_set1_ps(from_f16(b.d));
        let p = y.as_mut_ptr();
        _mm512_storeu_ps(p, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)));
        _mm512_storeu_ps(p.add(16), _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)));
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn affine_values(c: __m512i, d: __m512, m: __m512) -> __m512 {
    _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(c)), m)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(32)) {
        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
        let lo = _mm512_and_si512(q, _mm512_set1_epi32(0x0f));
        let hi = _mm512_srli_epi32::<4>(q);
        let d = _mm512_set1_ps(from_f16(b.d));
        let m = _mm512_set1_ps(from_f16(b.m));
        let p = y.as_mut_ptr();
        _mm512_storeu_ps(p, affine_values(lo, d, m));
        _mm512_storeu_ps(p.add(16), affine_values(hi, d, m));
    }
}

/// Codes of a 5-bit block: low nibbles, fifth bit j from bit j of `qh`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn five_bit_codes(qs: &[u8; 16], qh: [u8; 4]) -> (__m512i, __m512i) {
    let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs.as_ptr().cast()));
    let qh = u32::from_le_bytes(qh);
    let b = _mm512_set1_epi32(0x10);
    let lo = _mm512_and_si512(q, _mm512_set1_epi32(0x0f));
    let hi = _mm512_srli_epi32::<4>(q);
    (
        _mm512_mask_or_epi32(lo, qh as u16, lo, b),
        _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, b),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(32)) {
        let (lo, hi) = five_bit_codes(&b.qs, b.qh);
        let sixteen = _mm512_set1_epi32(16);
        let d = _mm512_set1_ps(from_f16(b.d));
        let p = y.as_mut_ptr();
        _mm512_storeu_ps(
            p,
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, sixteen))),
        );
        _mm512_storeu_ps(
            p.add(16),
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, sixteen))),
        );
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(32)) {
        let (lo, hi) = five_bit_codes(&b.qs, b.qh);
        let d = _mm512_set1_ps(from_f16(b.d));
        let m = _mm512_set1_ps(from_f16(b.m));
        let p = y.as_mut_ptr();
        _mm512_storeu_ps(p, affine_values(lo, d, m));
        _mm512_storeu_ps(p.add(16), affine_values(hi, d, m));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(32)) {
        let q = b.qs.as_ptr().cast::<__m128i>();
        let d = _mm512_set1_ps(from_f16(b.d));
        let p = y.as_mut_ptr();
        let (q0, q1) = (_mm_loadu_si128(q), _mm_loadu_si128(q.add(1)));
        _mm512_storeu_ps(
            p,
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d),
        );
        _mm512_storeu_ps(
            p.add(16),
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d),
        );
    }
}

/// Lanes of a row tail: the low `n` of 16.
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_f16(src: &[f32], dst: &mut [BlockF16]) -> bool {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
    let mut worst = _mm512_setzero_si512();
    let mut i = 0;
    while i + 16 <= n {
        let x = _mm512_loadu_ps(s.add(i));
        worst = _mm512_max_epu32(worst, magnitude(x));
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        _mm256_storeu_si256(d.add(i).cast(), h);
        i += 16;
    }
    if i < n {
        let k = tail_mask(n - i);
        let x = _mm512_maskz_loadu_ps(k, s.add(i));
        worst = _mm512_max_epu32(worst, magnitude(x));
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        _mm256_mask_storeu_epi16(d.add(i).cast(), k, h);
    }
    _mm512_reduce_max_epu32(worst) < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_f16(src: &[BlockF16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm256_loadu_si256(s.add(i).cast());
        _mm512_storeu_ps(d.add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    if i < n {
        let k = tail_mask(n - i);
        let h = _mm256_maskz_loadu_epi16(k, s.add(i).cast());
        _mm512_mask_storeu_ps(d.add(i), k, _mm512_cvtph_ps(h));
    }
}

/// BF16 bits as `BlockBF16::from_f32`: round to nearest even, a NaN keeps its top bits
/// and gets the quiet bit.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn bf16_bits(x: __m512) -> __m256i {
    let n = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(n), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(n, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    let nan = _mm512_cmpgt_epu32_mask(magnitude(x), _mm512_set1_epi32(INF_BITS as i32));
    let quiet = _mm512_or_si512(n, _mm512_set1_epi32(0x0040_0000));
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_mask_mov_epi32(
        r, nan, quiet,
    )))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn quantize_bf16(src: &[f32], dst: &mut [BlockBF16]) -> bool {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
    let mut worst = _mm512_setzero_si512();
    let mut i = 0;
    while i + 16 <= n {
        let x = _mm512_loadu_ps(s.add(i));
        worst = _mm512_max_epu32(worst, magnitude(x));
        _mm256_storeu_si256(d.add(i).cast(), bf16_bits(x));
        i += 16;
    }
    if i < n {
        let k = tail_mask(n - i);
        let x = _mm512_maskz_loadu_ps(k, s.add(i));
        worst = _mm512_max_epu32(worst, magnitude(x));
        _mm256_mask_storeu_epi16(d.add(i).cast(), k, bf16_bits(x));
    }
    _mm512_reduce_max_epu32(worst) < INF_BITS
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn dequantize_bf16(src: &[BlockBF16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.add(i).cast()));
        _mm512_storeu_ps(d.add(i), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)));
        i += 16;
    }
    if i < n {
        let k = tail_mask(n - i);
        let h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, s.add(i).cast()));
        _mm512_mask_storeu_ps(d.add(i), k, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)));
    }
}
