//! AVX2 (+ FMA, F16C) quantizers for the float and legacy types, for CPUs without
//! AVX-512: one 32-weight block in four registers. Same arithmetic, same order, as
//! the portable kernels and [`super::avx512`] (no fused multiply-add), so every path
//! writes the same bytes; the finiteness check is fused in the same way (integer
//! max of the magnitude bits). The dequantizers stay the auto-vectorized AVX2 build
//! of the portable loops (already at memory speed).

use std::arch::x86_64::*;

use half::f16;

use super::float::{BlockBF16, BlockF16};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

const INF_BITS: u32 = 0x7f80_0000;

macro_rules! avx2_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $($rest:tt)*) => {
        $(#[$m])*
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        $vis unsafe fn $($rest)*
    };
}

type Block4 = [__m256; 4];

avx2_fn! {
    unsafe fn load_block(x: &[f32]) -> Block4 {
        debug_assert!(x.len() >= 32);
        let p = x.as_ptr();
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

avx2_fn! {
    unsafe fn magnitude(x: __m256) -> __m256i {
        _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fff_ffff))
    }
}

avx2_fn! {
    unsafe fn hmax_epu32(v: __m256i) -> u32 {
        let m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b00_00_11_10>(m));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b00_00_00_01>(m));
        _mm_cvtsi128_si32(m) as u32
    }
}

avx2_fn! {
    unsafe fn hmin_ps(v: __m256) -> f32 {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }
}

avx2_fn! {
    unsafe fn hmax_ps(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }
}

/// Bit 8k + i: lane i of `masks[k]`'s sign.
#[inline(always)]
fn bits32(m: [i32; 4]) -> u32 {
    (m[0] as u32 & 0xff)
        | (m[1] as u32 & 0xff) << 8
        | (m[2] as u32 & 0xff) << 16
        | (m[3] as u32 & 0xff) << 24
}

avx2_fn! {
    unsafe fn to_f16(v: f32) -> f16 {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
        f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
    }
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

avx2_fn! {
    /// Largest magnitude's bits, and the signed value of largest magnitude (first on
    /// ties, +0.0 for zeros).
    unsafe fn signed_absmax(x: &[f32], v: &Block4) -> (u32, f32) {
        let a = v.map(|v| magnitude(v));
        let amax = hmax_epu32(_mm256_max_epu32(
            _mm256_max_epu32(a[0], a[1]),
            _mm256_max_epu32(a[2], a[3]),
        ));
        let va = _mm256_set1_epi32(amax as i32);
        let hits = bits32(a.map(|a| _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, va)))));
        let first = *x.get_unchecked((hits.trailing_zeros() & 31) as usize);
        (amax, if amax == 0 { 0.0 } else { first })
    }
}

avx2_fn! {
    unsafe fn worst_of(v: &Block4) -> __m256i {
        let a = v.map(|v| magnitude(v));
        _mm256_max_epu32(_mm256_max_epu32(a[0], a[1]), _mm256_max_epu32(a[2], a[3]))
    }
}

avx2_fn! {
    /// Minimum and maximum, the first zero met when either is a zero.
    unsafe fn min_max(x: &[f32], v: &Block4) -> (f32, f32) {
        let mut min = hmin_ps(_mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3])));
        let mut max = hmax_ps(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
        if min == 0.0 || max == 0.0 {
            let z = _mm256_setzero_ps();
            let hits = bits32(v.map(|v| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, z))));
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
}

avx2_fn! {
    unsafe fn codes(v: __m256, top: __m256) -> __m256i {
        _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), top))
    }
}

avx2_fn! {
    unsafe fn symmetric(v: &Block4, id: f32, offset: f32, top: f32) -> [__m256i; 4] {
        let (vid, off, top) = (_mm256_set1_ps(id), _mm256_set1_ps(offset), _mm256_set1_ps(top));
        v.map(|v| codes(_mm256_add_ps(_mm256_mul_ps(v, vid), off), top))
    }
}

avx2_fn! {
    unsafe fn affine(v: &Block4, min: f32, id: f32, top: f32) -> [__m256i; 4] {
        let (vmin, vid, half, top) = (
            _mm256_set1_ps(min),
            _mm256_set1_ps(id),
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(top),
        );
        v.map(|v| codes(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmin), vid), half), top))
    }
}

avx2_fn! {
    /// Dwords 0,4,1,5,2,6,3,7: undoes the per-128-bit-lane order of the packs.
    unsafe fn unlane(v: __m256i) -> __m256i {
        _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

avx2_fn! {
    /// Byte j: code j in the low nibble, code j + 16 in the high one.
    unsafe fn pack_nibbles(q: &[__m256i; 4], dst: &mut [u8; 16]) {
        let (lo, byte) = (_mm256_set1_epi32(0x0f), _mm256_set1_epi32(0xff));
        let v0 = _mm256_and_si256(_mm256_or_si256(_mm256_and_si256(q[0], lo), _mm256_slli_epi32::<4>(q[2])), byte);
        let v1 = _mm256_and_si256(_mm256_or_si256(_mm256_and_si256(q[1], lo), _mm256_slli_epi32::<4>(q[3])), byte);
        let w = _mm256_packus_epi32(v0, v1);
        let b = unlane(_mm256_packus_epi16(w, w));
        _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(b));
    }
}

avx2_fn! {
    /// Bit j: the fifth bit of code j.
    unsafe fn high_bits(q: &[__m256i; 4]) -> [u8; 4] {
        bits32(q.map(|q| _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<27>(q)))))
            .to_le_bytes()
    }
}

avx2_fn! {
    pub unsafe fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) -> bool {
        let mut worst = 0u32;
        for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
            let v = load_block(x);
            let (amax, max) = signed_absmax(x, &v);
            worst = worst.max(amax);
            let d = max / -8.0;
            let q = symmetric(&v, inverse(d), 8.5, 15.0);
            b.d = to_f16(d);
            pack_nibbles(&q, &mut b.qs);
        }
        worst < INF_BITS
    }
}

avx2_fn! {
    pub unsafe fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) -> bool {
        let mut worst = 0u32;
        for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
            let v = load_block(x);
            let (amax, max) = signed_absmax(x, &v);
            worst = worst.max(amax);
            let d = max / -16.0;
            let q = symmetric(&v, inverse(d), 16.5, 31.0);
            b.d = to_f16(d);
            b.qh = high_bits(&q);
            pack_nibbles(&q, &mut b.qs);
        }
        worst < INF_BITS
    }
}

avx2_fn! {
    pub unsafe fn quantize_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) -> bool {
        let mut worst = _mm256_setzero_si256();
        for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
            let v = load_block(x);
            worst = _mm256_max_epu32(worst, worst_of(&v));
            let (min, max) = min_max(x, &v);
            let d = (max - min) / 15.0;
            let q = affine(&v, min, inverse(d), 15.0);
            b.d = to_f16(d);
            b.m = to_f16(min);
            pack_nibbles(&q, &mut b.qs);
        }
        hmax_epu32(worst) < INF_BITS
    }
}

avx2_fn! {
    pub unsafe fn quantize_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) -> bool {
        let mut worst = _mm256_setzero_si256();
        for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
            let v = load_block(x);
            worst = _mm256_max_epu32(worst, worst_of(&v));
            let (min, max) = min_max(x, &v);
            let d = (max - min) / 31.0;
            let q = affine(&v, min, inverse(d), 31.0);
            b.d = to_f16(d);
            b.m = to_f16(min);
            b.qh = high_bits(&q);
            pack_nibbles(&q, &mut b.qs);
        }
        hmax_epu32(worst) < INF_BITS
    }
}

avx2_fn! {
    /// `round_half_away` on 8 lanes: NaN to 0, clamp, truncate, step where the exact
    /// fraction reaches ±0.5.
    unsafe fn round_half_away(v: __m256) -> __m256i {
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-128.0)), _mm256_set1_ps(127.0));
        let t = _mm256_cvttps_epi32(v);
        let frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5)));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)));
        // Compare masks are -1 where true.
        _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
    }
}

avx2_fn! {
    pub unsafe fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) -> bool {
        let mut worst = 0u32;
        for (b, x) in dst.iter_mut().zip(src.chunks_exact(32)) {
            let v = load_block(x);
            let amax = hmax_epu32(worst_of(&v));
            worst = worst.max(amax);
            let d = f32::from_bits(amax) / 127.0;
            let id = _mm256_set1_ps(inverse(d));
            b.d = to_f16(d);
            let t = v.map(|v| round_half_away(_mm256_mul_ps(v, id)));
            let w = _mm256_packs_epi16(_mm256_packs_epi32(t[0], t[1]), _mm256_packs_epi32(t[2], t[3]));
            _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), unlane(w));
        }
        worst < INF_BITS
    }
}

avx2_fn! {
    pub unsafe fn quantize_f16(src: &[f32], dst: &mut [BlockF16]) -> bool {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
        let mut worst = _mm256_setzero_si256();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(s.add(i));
            worst = _mm256_max_epu32(worst, magnitude(x));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(d.add(i).cast(), h);
            i += 8;
        }
        let mut ok = hmax_epu32(worst) < INF_BITS;
        for (v, h) in src[i..n].iter().zip(&mut dst[i..n]) {
            ok &= v.is_finite();
            h.value = f16::from_f32(*v);
        }
        ok
    }
}

avx2_fn! {
    pub unsafe fn quantize_bf16(src: &[f32], dst: &mut [BlockBF16]) -> bool {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
        let mut worst = _mm256_setzero_si256();
        let mut i = 0;
        let inf = _mm256_set1_epi32(INF_BITS as i32);
        while i + 8 <= n {
            let x = _mm256_loadu_ps(s.add(i));
            let a = magnitude(x);
            worst = _mm256_max_epu32(worst, a);
            let bits = _mm256_castps_si256(x);
            let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
            let r = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
            // Magnitudes are below 2^31, so the signed compare is exact.
            let nan = _mm256_cmpgt_epi32(a, inf);
            let quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000));
            let h = _mm256_srli_epi32::<16>(_mm256_blendv_epi8(r, quiet, nan));
            let p = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(h, h));
            _mm_storeu_si128(d.add(i).cast(), _mm256_castsi256_si128(p));
            i += 8;
        }
        let mut ok = hmax_epu32(worst) < INF_BITS;
        for (v, h) in src[i..n].iter().zip(&mut dst[i..n]) {
            ok &= v.is_finite();
            *h = BlockBF16::from_f32(*v);
        }
        ok
    }
}
