//! AVX2 + FMA + F16C kernels for the hot types (the approach of ggml-cpu's
//! `quants.c` x86 paths: unpack codes to 32 bytes, `maddubs` against the i8
//! activations, one float FMA per 32 products). Each kernel takes one weight
//! row and every token of the batch; tokens go in tiles of four so a decoded
//! block is reused four times.
//!
//! Callers must check [`super::has_avx2`] first; on other targets this module
//! only holds stubs that are never called.

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(not(target_arch = "x86_64"))]
mod imp {}

#[cfg(target_arch = "x86_64")]
mod imp {
    // The tile loops index several per-token arrays by the same token number.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::super::BlockQ8A;
    use crate::quants::float::BlockBF16;
    use crate::quants::{iq4, k_quants, legacy};

    const TILE: usize = 4;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_bits(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Unsigned bytes times signed bytes, summed in pairs then quads, to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_us8(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    /// 16 packed bytes to 32 nibbles: low nibbles then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }

    /// Byte j is 0xFF where bit j of `bits` is set (ggml `bytes_from_bits_32`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bytes_from_bits(bits: u32) -> __m256i {
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
    }

    #[inline]
    unsafe fn load_act(a: &BlockQ8A) -> __m256i {
        _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i)
    }

    /// Run `$tile::<N>` over the tokens in tiles of four, then singles.
    macro_rules! tiles {
        ($tile:ident, $row:expr, $acts:expr, $nb:expr, $out:expr) => {{
            let ntok = $out.len();
            let mut t = 0;
            while t + TILE <= ntok {
                $tile::<TILE>($row, &$acts[t * $nb..], $nb, &mut $out[t..t + TILE]);
                t += TILE;
            }
            while t < ntok {
                $tile::<1>($row, &$acts[t * $nb..], $nb, &mut $out[t..t + 1]);
                t += 1;
            }
        }};
    }

    // ---------------------------------------------------------------- Q4_0

    /// # Safety
    /// AVX2/FMA/F16C must be present; `acts` holds `out.len()` tokens of `row.len()` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_0(row: &[legacy::BlockQ4_0], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q4_0_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_tile<const N: usize>(
        row: &[legacy::BlockQ4_0],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let eight = _mm256_set1_epi8(8);
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let qx = _mm256_sub_epi8(nibbles32(b.qs.as_ptr()), eight);
            let ax = _mm256_sign_epi8(qx, qx);
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                let sy = _mm256_sign_epi8(load_act(a), qx);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(ax, sy), acc[t]);
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
    }

    // ---------------------------------------------------------------- Q4_1

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1(row: &[legacy::BlockQ4_1], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q4_1_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_tile<const N: usize>(
        row: &[legacy::BlockQ4_1],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let m = f16_bits(b.m.to_bits());
            let qx = nibbles32(b.qs.as_ptr());
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(qx, load_act(a)), acc[t]);
                off[t] += m * a.dsum;
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]) + off[t];
        }
    }

    // ---------------------------------------------------------------- Q5_0

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_0(row: &[legacy::BlockQ5_0], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q5_0_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0_tile<const N: usize>(
        row: &[legacy::BlockQ5_0],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let bit4 = _mm256_set1_epi8(0x10);
        let sixteen = _mm256_set1_epi8(16);
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let high = _mm256_and_si256(bytes_from_bits(u32::from_le_bytes(b.qh)), bit4);
            let qx = _mm256_sub_epi8(_mm256_or_si256(nibbles32(b.qs.as_ptr()), high), sixteen);
            let ax = _mm256_sign_epi8(qx, qx);
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                let sy = _mm256_sign_epi8(load_act(a), qx);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(ax, sy), acc[t]);
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
    }

    // ---------------------------------------------------------------- Q8_0

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0(row: &[legacy::BlockQ8_0], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q8_0_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_tile<const N: usize>(
        row: &[legacy::BlockQ8_0],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let qx = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
            // Signed × signed through maddubs: |x| times y carrying x's sign.
            let ax = _mm256_sign_epi8(qx, qx);
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                let sy = _mm256_sign_epi8(load_act(a), qx);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(ax, sy), acc[t]);
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
    }

    // -------------------------------------------------------------- IQ4_NL

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn iq4_nl(row: &[iq4::BlockIQ4NL], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(iq4_nl_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_nl_tile<const N: usize>(
        row: &[iq4::BlockIQ4NL],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let table =
            _mm_loadu_si128(super::super::portable::KVALUES_IQ4NL.as_ptr() as *const __m128i);
        let table = _mm256_set_m128i(table, table);
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let qx = _mm256_shuffle_epi8(table, nibbles32(b.qs.as_ptr()));
            let ax = _mm256_sign_epi8(qx, qx);
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                let sy = _mm256_sign_epi8(load_act(a), qx);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(ax, sy), acc[t]);
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
    }

    // ---------------------------------------------------------------- Q4_K

    /// # Safety
    /// AVX2/FMA/F16C must be present; `acts` holds `out.len()` tokens of
    /// `row.len() * 8` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_k(row: &[k_quants::BlockQ4K], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q4_k_tile, row, acts, row.len() * 8, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_tile<const N: usize>(
        row: &[k_quants::BlockQ4K],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        let m4 = _mm256_set1_epi8(0x0f);
        for (s, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let dmin = f16_bits(b.dmin.to_bits());
            let mut sc = [0i16; 8];
            let mut mn = [0f32; 8];
            for (j, (c, m)) in sc.iter_mut().zip(mn.iter_mut()).enumerate() {
                let (a, bb) = super::super::portable::scale_min_k4(j, &b.scales);
                *c = a as i16;
                *m = dmin * bb as f32;
            }
            for c in 0..4 {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                let s_lo = _mm256_set1_epi16(sc[2 * c]);
                let s_hi = _mm256_set1_epi16(sc[2 * c + 1]);
                for t in 0..N {
                    let a0 = acts.get_unchecked(t * nb + 8 * s + 2 * c);
                    let a1 = acts.get_unchecked(t * nb + 8 * s + 2 * c + 1);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load_act(a0)), s_lo);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load_act(a1)), s_hi);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a0.d), _mm256_cvtepi32_ps(p0), acc[t]);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a1.d), _mm256_cvtepi32_ps(p1), acc[t]);
                    off[t] += mn[2 * c] * a0.dsum + mn[2 * c + 1] * a1.dsum;
                }
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]) - off[t];
        }
    }

    // ---------------------------------------------------------------- Q6_K

    /// # Safety
    /// As [`q4_k`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6_k(row: &[k_quants::BlockQ6K], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q6_k_tile, row, acts, row.len() * 8, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_tile<const N: usize>(
        row: &[k_quants::BlockQ6K],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        let m4 = _mm256_set1_epi8(0x0f);
        let m3 = _mm256_set1_epi8(0x03);
        for (s, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            for n in 0..2 {
                let ql0 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n) as *const __m256i);
                let ql1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * n) as *const __m256i);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
                let codes = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
                ];
                for (k, qx) in codes.iter().enumerate() {
                    let s0 = b.scales[8 * n + 2 * k] as i16;
                    let s1 = b.scales[8 * n + 2 * k + 1] as i16;
                    let sv = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                    for t in 0..N {
                        let a = acts.get_unchecked(t * nb + 8 * s + 4 * n + k);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qx, load_act(a)), sv);
                        let dd = d * a.d;
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(p), acc[t]);
                        off[t] +=
                            dd * (s0 as i32 * a.sum[0] as i32 + s1 as i32 * a.sum[1] as i32) as f32;
                    }
                }
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]) - 32.0 * off[t];
        }
    }

    // ---------------------------------------------------------------- Q5_1

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_1(row: &[legacy::BlockQ5_1], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q5_1_tile, row, acts, row.len(), out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_1_tile<const N: usize>(
        row: &[legacy::BlockQ5_1],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        let bit4 = _mm256_set1_epi8(0x10);
        for (i, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let m = f16_bits(b.m.to_bits());
            let high = _mm256_and_si256(bytes_from_bits(u32::from_le_bytes(b.qh)), bit4);
            let qx = _mm256_or_si256(nibbles32(b.qs.as_ptr()), high);
            for t in 0..N {
                let a = acts.get_unchecked(t * nb + i);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_us8(qx, load_act(a)), acc[t]);
                off[t] += m * a.dsum;
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]) + off[t];
        }
    }

    // ---------------------------------------------------------------- Q5_K

    /// # Safety
    /// As [`q4_k`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_k(row: &[k_quants::BlockQ5K], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(q5_k_tile, row, acts, row.len() * 8, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_k_tile<const N: usize>(
        row: &[k_quants::BlockQ5K],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(0x01);
        for (s, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            let dmin = f16_bits(b.dmin.to_bits());
            let mut sc = [0i16; 8];
            let mut mn = [0f32; 8];
            for (j, (c, m)) in sc.iter_mut().zip(mn.iter_mut()).enumerate() {
                let (a, bb) = super::super::portable::scale_min_k4(j, &b.scales);
                *c = a as i16;
                *m = dmin * bb as f32;
            }
            let hb = _mm256_loadu_si256(b.qh.as_ptr() as *const __m256i);
            for c in 0..4 {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * c) as *const __m256i);
                // Bit g of every qh byte is the fifth bit of group g (16-bit shifts
                // keep each byte's own bit in place once masked to bit 0).
                let h_lo =
                    _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32)), one);
                let h_hi = _mm256_and_si256(
                    _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                    one,
                );
                let lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h_lo, 4));
                let hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    _mm256_slli_epi16(h_hi, 4),
                );
                let s_lo = _mm256_set1_epi16(sc[2 * c]);
                let s_hi = _mm256_set1_epi16(sc[2 * c + 1]);
                for t in 0..N {
                    let a0 = acts.get_unchecked(t * nb + 8 * s + 2 * c);
                    let a1 = acts.get_unchecked(t * nb + 8 * s + 2 * c + 1);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load_act(a0)), s_lo);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load_act(a1)), s_hi);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a0.d), _mm256_cvtepi32_ps(p0), acc[t]);
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a1.d), _mm256_cvtepi32_ps(p1), acc[t]);
                    off[t] += mn[2 * c] * a0.dsum + mn[2 * c + 1] * a1.dsum;
                }
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]) - off[t];
        }
    }

    // -------------------------------------------------------------- IQ4_XS

    /// # Safety
    /// As [`q4_k`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn iq4_xs(row: &[iq4::BlockIQ4XS], acts: &[BlockQ8A], out: &mut [f32]) {
        tiles!(iq4_xs_tile, row, acts, row.len() * 8, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_xs_tile<const N: usize>(
        row: &[iq4::BlockIQ4XS],
        acts: &[BlockQ8A],
        nb: usize,
        out: &mut [f32],
    ) {
        let table =
            _mm_loadu_si128(super::super::portable::KVALUES_IQ4NL.as_ptr() as *const __m128i);
        let table = _mm256_set_m128i(table, table);
        let mut acc = [_mm256_setzero_ps(); N];
        for (s, b) in row.iter().enumerate() {
            let d = f16_bits(b.d.to_bits());
            for g in 0..8 {
                let lo = (b.scales_l[g / 2] >> (4 * (g % 2))) & 0xf;
                let hi = ((b.scales_h >> (2 * g)) & 3) as u8;
                let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
                let qx = _mm256_shuffle_epi8(table, nibbles32(b.qs.as_ptr().add(16 * g)));
                let ax = _mm256_sign_epi8(qx, qx);
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + 8 * s + g);
                    let sy = _mm256_sign_epi8(load_act(a), qx);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dl * a.d), dot_us8(ax, sy), acc[t]);
                }
            }
        }
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
    }

    // -------------------------------------------------------- float weights

    /// Generic float row kernel: `load8(j)` gives weights j..j+8 as f32.
    macro_rules! float_rows {
        ($name:ident, $T:ty, |$p:ident| $load8:expr, |$v:ident| $scalar:expr) => {
            /// # Safety
            /// AVX2/FMA/F16C must be present; `x` holds `out.len()` rows of `row.len()`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(row: &[$T], x: &[f32], out: &mut [f32]) {
                let cols = row.len();
                let full = cols / 8 * 8;
                let mut t = 0;
                while t < out.len() {
                    let n = (out.len() - t).min(TILE);
                    let mut acc = [_mm256_setzero_ps(); TILE];
                    let mut j = 0;
                    while j < full {
                        let $p = row.as_ptr().add(j);
                        let w = $load8;
                        for (k, a) in acc.iter_mut().enumerate().take(n) {
                            let xv = _mm256_loadu_ps(x.as_ptr().add((t + k) * cols + j));
                            *a = _mm256_fmadd_ps(w, xv, *a);
                        }
                        j += 8;
                    }
                    for (k, a) in acc.iter().enumerate().take(n) {
                        let xs = &x[(t + k) * cols..(t + k + 1) * cols];
                        let mut tail = 0f32;
                        for j in full..cols {
                            let $v = &row[j];
                            tail += $scalar * xs[j];
                        }
                        out[t + k] = hsum(*a) + tail;
                    }
                    t += n;
                }
            }
        };
    }

    float_rows!(f32_rows, f32, |p| _mm256_loadu_ps(p), |v| *v);
    float_rows!(
        f16_rows,
        u16,
        |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        |v| half::f16::from_bits(*v).to_f32()
    );
    float_rows!(
        bf16_rows,
        u16,
        |p| _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
            16
        )),
        |v| BlockBF16 { bits: *v }.to_f32()
    );
}
