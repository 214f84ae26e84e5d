//! AVX2 + FMA + F16C kernels (the approach of ggml-cpu's x86 `quants.c`:
//! unpack codes to 32 bytes, multiply them with the i8 activations in
//! integers, one float FMA per block). Each kernel takes one weight row and
//! every token of the batch; tokens go in tiles of four so a decoded block is
//! reused four times.
//!
//! The kernel bodies are written once, in [`x86_kernels!`], and expanded
//! twice: here for AVX2 (`maddubs` + `madd` products) and in
//! [`super::avx512`] with AVX-512 VNNI enabled (`vpdpbusd` products, 32
//! vector registers). Callers check [`super::isa_level`] first; on other
//! targets this module is empty.

/// Run `$tile::<$n>` over the tokens in tiles of `$n`, then singles.
macro_rules! tiles {
    ($n:literal; $tile:ident, $row:expr, $acts:expr, $nb:expr, $out:expr) => {{
        let ntok = $out.len();
        let mut t = 0;
        while t + $n <= ntok {
            $tile::<$n>($row, &$acts[t * $nb..], $nb, &mut $out[t..t + $n]);
            t += $n;
        }
        if t + 4 <= ntok && $n > 4 {
            $tile::<4>($row, &$acts[t * $nb..], $nb, &mut $out[t..t + 4]);
            t += 4;
        }
        while t < ntok {
            $tile::<1>($row, &$acts[t * $nb..], $nb, &mut $out[t..t + 1]);
            t += 1;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use tiles;

/// Run the two-row `$tile2::<$n>` over the tokens in tiles of `$n`, then singles.
macro_rules! rows2 {
    ($n:literal; $tile2:ident, $rows:expr, $acts:expr, $out:expr) => {{
        let nb = $rows.len() / 2;
        let ntok = $out.len() / 2;
        let mut t = 0;
        while t + $n <= ntok {
            $tile2::<$n>($rows, nb, &$acts[t * nb..], &mut $out[2 * t..2 * (t + $n)]);
            t += $n;
        }
        while t < ntok {
            $tile2::<1>($rows, nb, &$acts[t * nb..], &mut $out[2 * t..2 * t + 2]);
            t += 1;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use rows2;

/// Every x86 kernel, for the target features `$feat`; `$tier` (`avx2` or
/// `avx512`) picks how unsigned × signed bytes are summed, `$tile` the tokens per tile.
macro_rules! x86_kernels {
    ($feat:literal, $tier:ident, $tile:literal) => {
        use std::arch::x86_64::*;

        use crate::quants::float::BlockBF16;
        use crate::quants::{iq4, k_quants, legacy};
        use crate::simd::portable::{q3k_scales, scale_min_k4, KVALUES_IQ4NL};
        use crate::simd::{BlockQ8A, BlockQ8K};

        #[inline]
        #[target_feature(enable = $feat)]
        fn f16_bits(bits: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum(v: __m256) -> f32 {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        }

        /// Unsigned bytes (at most 128) times signed bytes, summed by fours, as i32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_i32(ax: __m256i, sy: __m256i) -> __m256i {
            x86_kernels!(@dot $tier, ax, sy)
        }

        /// [`dot_i32`] as f32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_us8(ax: __m256i, sy: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(dot_i32(ax, sy))
        }

        /// Unsigned codes (below 64) times signed bytes, summed by pairs, times
        /// the 16-bit scales `s`, summed by pairs again: i32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_scaled(u: __m256i, y: __m256i, s: __m256i) -> __m256i {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), s)
        }

        /// 16 packed bytes to 32 nibbles: low nibbles then high nibbles.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles32(p: *const u8) -> __m256i {
            let tmp = _mm_loadu_si128(p as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }

        /// Byte j is 0xFF where bit j of `bits` is set (ggml `bytes_from_bits_32`).
        #[inline]
        #[target_feature(enable = $feat)]
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

        /// Two 16-bit scales: `lo` for the low 16 bytes, `hi` for the high 16.
        #[inline]
        #[target_feature(enable = $feat)]
        fn scales2(lo: i16, hi: i16) -> __m256i {
            _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
        }

        #[inline]
        unsafe fn load_act(a: &BlockQ8A) -> __m256i {
            _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i)
        }

        #[inline]
        unsafe fn load_k(a: &BlockQ8K, g: usize) -> __m256i {
            _mm256_loadu_si256(a.qs.as_ptr().add(32 * g) as *const __m256i)
        }

        /// Signed codes times signed activations (ggml's sign trick).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_ss(qx: __m256i, y: __m256i) -> __m256 {
            dot_us8(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(y, qx))
        }

        // ------------------------------------------------------------ Q4_0

        /// # Safety
        /// The tier's features must be present; `acts` holds `out.len()` tokens of
        /// `row.len()` blocks.
        #[target_feature(enable = $feat)]
        pub unsafe fn q4_0(row: &[legacy::BlockQ4_0], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; q4_0_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
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
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_ss(qx, load_act(a)), acc[t]);
                }
            }
            for t in 0..N {
                out[t] = hsum(acc[t]);
            }
        }

        /// Lane k of the result: the sum of the lanes of `p[k]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum8x8_i32(p: &[__m256i; 8]) -> __m256i {
            let h01 = _mm256_hadd_epi32(p[0], p[1]);
            let h23 = _mm256_hadd_epi32(p[2], p[3]);
            let h45 = _mm256_hadd_epi32(p[4], p[5]);
            let h67 = _mm256_hadd_epi32(p[6], p[7]);
            let a = _mm256_hadd_epi32(h01, h23);
            let b = _mm256_hadd_epi32(h45, h67);
            _mm256_add_epi32(
                _mm256_permute2x128_si256(a, b, 0x20),
                _mm256_permute2x128_si256(a, b, 0x31),
            )
        }

        /// Eight Q4_0 weight rows (`rows`: row k's blocks at `k * nb..`) against
        /// every token of `acts`, in the order of ggml's repacked Q4_0 kernels
        /// (`ggml_gemm_q4_0_8x8_q8_0` / `ggml_gemv_q4_0_8x8_q8_0`,
        /// arch/x86/repack.cpp): per output one FMA chain over the blocks,
        /// `acc = fma(Σ q·a as f32, d_w · d_a, acc)`. The lanes are the rows, so
        /// the eight chains of a token advance in one vector FMA per block.
        /// `out[8 t + k]` is row k against token t.
        ///
        /// # Safety
        /// The tier's features must be present; `rows` holds 8 rows of `nb`
        /// blocks and `acts` `out.len() / 8` tokens of `nb` blocks.
        #[target_feature(enable = $feat)]
        pub unsafe fn q4_0_x8(rows: &[legacy::BlockQ4_0], acts: &[BlockQ8A], out: &mut [f32]) {
            nib32_x8(rows, acts, out)
        }

        /// [`q4_0_x8`] for IQ4_NL, which ggml repacks to `block_iq4_nlx8` and
        /// multiplies with the same kernels (`gemm/gemv_q4_b32_8x8_q8_0_lut_avx`,
        /// the code book as the lookup table): the same order of float operations.
        ///
        /// # Safety
        /// As [`q4_0_x8`].
        #[target_feature(enable = $feat)]
        pub unsafe fn iq4_nl_x8(rows: &[iq4::BlockIQ4NL], acts: &[BlockQ8A], out: &mut [f32]) {
            nib32_x8(rows, acts, out)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nib32_x8<B: crate::simd::Nib32Block>(rows: &[B], acts: &[BlockQ8A], out: &mut [f32]) {
            let nb = rows.len() / 8;
            let ntok = out.len() / 8;
            debug_assert!(rows.len() == 8 * nb && out.len() == 8 * ntok && acts.len() >= ntok * nb);
            let mut t = 0;
            while t + $tile <= ntok {
                nib32_x8_tile::<B, $tile>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + $tile)]);
                t += $tile;
            }
            if $tile > 4 && t + 4 <= ntok {
                nib32_x8_tile::<B, 4>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + 4)]);
                t += 4;
            }
            while t < ntok {
                nib32_x8_tile::<B, 1>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + 1)]);
                t += 1;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn nib32_x8_tile<B: crate::simd::Nib32Block, const N: usize>(
            rows: &[B],
            nb: usize,
            acts: &[BlockQ8A],
            out: &mut [f32],
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            let table = _mm256_set_m128i(table, table);
            // The eight rows are read as eight interleaved streams, which the
            // hardware prefetcher follows poorly: fetch the next eight rows
            // (the bytes just past these) evenly over the blocks.
            let next = rows.as_ptr().wrapping_add(rows.len()) as *const i8;
            for b in 0..nb {
                let p = next.wrapping_add(144 * b);
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
                // Q4_0: codes as unsigned nibbles, Σ (q - 8)·a = Σ q·a - 8 Σ a.
                // IQ4_NL: the code book's signed values, ggml's sign trick.
                let mut qx = [_mm256_setzero_si256(); 8];
                let mut ax = [_mm256_setzero_si256(); 8];
                let mut bits = [0u16; 8];
                for k in 0..8 {
                    let blk = rows.get_unchecked(k * nb + b);
                    qx[k] = nibbles32(blk.qs().as_ptr());
                    if B::CODE_BOOK {
                        qx[k] = _mm256_shuffle_epi8(table, qx[k]);
                        ax[k] = _mm256_sign_epi8(qx[k], qx[k]);
                    }
                    bits[k] = blk.d_bits();
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i));
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + b);
                    let y = load_act(a);
                    let mut p = [_mm256_setzero_si256(); 8];
                    for k in 0..8 {
                        p[k] = if B::CODE_BOOK {
                            dot_i32(ax[k], _mm256_sign_epi8(y, qx[k]))
                        } else {
                            dot_i32(qx[k], y)
                        };
                    }
                    let suma = if B::CODE_BOOK { 0 } else { 8 * (a.sum[0] as i32 + a.sum[1] as i32) };
                    let isum = _mm256_sub_epi32(hsum8x8_i32(&p), _mm256_set1_epi32(suma));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * t), acc[t]);
            }
        }

        // ------------------------------------------------------------ Q4_1

        /// # Safety
        /// As [`q4_0`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q4_1(row: &[legacy::BlockQ4_1], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; q4_1_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
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

        // ------------------------------------------------------------ Q5_0

        /// # Safety
        /// As [`q4_0`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q5_0(row: &[legacy::BlockQ5_0], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; q5_0_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
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
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_ss(qx, load_act(a)), acc[t]);
                }
            }
            for t in 0..N {
                out[t] = hsum(acc[t]);
            }
        }

        // ------------------------------------------------------------ Q5_1

        /// # Safety
        /// As [`q4_0`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q5_1(row: &[legacy::BlockQ5_1], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; q5_1_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
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

        // ------------------------------------------------------------ Q8_0

        /// # Safety
        /// As [`q4_0`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q8_0(row: &[legacy::BlockQ8_0], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; q8_0_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
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
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_ss(qx, load_act(a)), acc[t]);
                }
            }
            for t in 0..N {
                out[t] = hsum(acc[t]);
            }
        }

        // ------------------------------------ Q8_0 / Q5_0, two rows at once

        /// Two weight rows (`rows`: row 0's `nb` blocks, then row 1's) times
        /// the `out.len() / 2` tokens, `out[2 t + k]` = row k, token t. Each
        /// output is the same FMA chain as the one-row kernel's (so the same
        /// bits); one activation load serves both rows, which halves the loads
        /// per FMA when a batch is multiplied.
        ///
        /// # Safety
        /// The tier's features must be present; `acts` holds the tokens' `nb` blocks each.
        #[target_feature(enable = $feat)]
        pub unsafe fn q8_0_x2(rows: &[legacy::BlockQ8_0], acts: &[BlockQ8A], out: &mut [f32]) {
            rows2!($tile; q8_0_tile2, rows, acts, out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q8_0_tile2<const N: usize>(
            rows: &[legacy::BlockQ8_0],
            nb: usize,
            acts: &[BlockQ8A],
            out: &mut [f32],
        ) {
            let decode = |b: &legacy::BlockQ8_0| {
                (f16_bits(b.d.to_bits()), _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i))
            };
            pair_tile::<N, _>(nb, acts, out, |i| {
                (decode(rows.get_unchecked(i)), decode(rows.get_unchecked(nb + i)))
            })
        }

        /// As [`q8_0_x2`].
        ///
        /// # Safety
        /// As [`q8_0_x2`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q5_0_x2(rows: &[legacy::BlockQ5_0], acts: &[BlockQ8A], out: &mut [f32]) {
            rows2!($tile; q5_0_tile2, rows, acts, out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q5_0_tile2<const N: usize>(
            rows: &[legacy::BlockQ5_0],
            nb: usize,
            acts: &[BlockQ8A],
            out: &mut [f32],
        ) {
            let bit4 = _mm256_set1_epi8(0x10);
            let sixteen = _mm256_set1_epi8(16);
            let decode = |b: &legacy::BlockQ5_0| {
                let high = _mm256_and_si256(bytes_from_bits(u32::from_le_bytes(b.qh)), bit4);
                let qx = _mm256_sub_epi8(_mm256_or_si256(nibbles32(b.qs.as_ptr()), high), sixteen);
                (f16_bits(b.d.to_bits()), qx)
            };
            pair_tile::<N, _>(nb, acts, out, |i| {
                (decode(rows.get_unchecked(i)), decode(rows.get_unchecked(nb + i)))
            })
        }

        /// The shared loop of the two-row kernels: `block(i)` decodes block i
        /// of both rows to (scale, signed bytes).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn pair_tile<const N: usize, F>(nb: usize, acts: &[BlockQ8A], out: &mut [f32], block: F)
        where
            F: Fn(usize) -> ((f32, __m256i), (f32, __m256i)),
        {
            let mut a0 = [_mm256_setzero_ps(); N];
            let mut a1 = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                let ((d0, q0), (d1, q1)) = block(i);
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let y = load_act(a);
                    a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a.d), dot_ss(q0, y), a0[t]);
                    a1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a.d), dot_ss(q1, y), a1[t]);
                }
            }
            for t in 0..N {
                out[2 * t] = hsum(a0[t]);
                out[2 * t + 1] = hsum(a1[t]);
            }
        }

        // ---------------------------------------------------------- IQ4_NL

        /// # Safety
        /// As [`q4_0`].
        #[target_feature(enable = $feat)]
        pub unsafe fn iq4_nl(row: &[iq4::BlockIQ4NL], acts: &[BlockQ8A], out: &mut [f32]) {
            tiles!($tile; iq4_nl_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn iq4_nl_tile<const N: usize>(
            row: &[iq4::BlockIQ4NL],
            acts: &[BlockQ8A],
            nb: usize,
            out: &mut [f32],
        ) {
            let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            let table = _mm256_set_m128i(table, table);
            let mut acc = [_mm256_setzero_ps(); N];
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let qx = _mm256_shuffle_epi8(table, nibbles32(b.qs.as_ptr()));
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_ss(qx, load_act(a)), acc[t]);
                }
            }
            for t in 0..N {
                out[t] = hsum(acc[t]);
            }
        }

        // ------------------------------------------- super-blocks (Q8_K acts)
        //
        // Per super-block and token: the integer sum Σ_j sc_j Σ code·q (and the
        // minimum term Σ_j mn_j bsum_j), then `d_y·d·sumi - d_y·dmin·summ` in f32,
        // exactly the portable kernel's arithmetic.

        /// `Σ_j mn[j] · (bsums[2j] + bsums[2j+1])` for the 8 mins of Q4_K / Q5_K.
        #[inline]
        fn mins8(mn: &[i32; 8], a: &BlockQ8K) -> i32 {
            let mut s = 0;
            for j in 0..8 {
                s += mn[j] * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
            }
            s
        }

        /// # Safety
        /// The tier's features must be present; `acts` holds `out.len()` tokens of
        /// `row.len()` super-blocks.
        #[target_feature(enable = $feat)]
        pub unsafe fn q4_k(row: &[k_quants::BlockQ4K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q4_k_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q4_k_tile<const N: usize>(
            row: &[k_quants::BlockQ4K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let mut acc = [0f32; N];
            let m4 = _mm256_set1_epi8(0x0f);
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let dmin = f16_bits(b.dmin.to_bits());
                let mut sc = [_mm256_setzero_si256(); 8];
                let mut mn = [0i32; 8];
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, &b.scales);
                    sc[j] = _mm256_set1_epi16(s as i16);
                    mn[j] = m as i32;
                }
                let mut codes = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * c) as *const __m256i);
                    codes[2 * c] = _mm256_and_si256(q, m4);
                    codes[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        s = _mm256_add_epi32(s, dot_scaled(codes[g], load_k(a, g), sc[g]));
                    }
                    acc[t] += a.d * d * hsum_i32(s) as f32 - a.d * dmin * mins8(&mn, a) as f32;
                }
            }
            out.copy_from_slice(&acc);
        }

        /// Eight Q4_K weight rows (`rows`: row k's super-blocks at `k * nb..`)
        /// against every token of `acts`, in the order of ggml's repacked Q4_K
        /// kernels (arch/x86/repack.cpp): per output two FMA chains,
        /// `acc = fma(f32(Σ sc·code·q), d·d_y, acc)` and
        /// `accm = fma(f32(Σ mn·bsum), dmin·d_y, accm)`, and `acc - accm` at
        /// the end. The tokens of whole groups of four (the first
        /// `ntok - ntok % 4`) go through `ggml_gemm_q4_K_8x8_q8_K`, which
        /// advances the chains once per pair of sub-blocks (four times per
        /// super-block), the rest through `ggml_gemv_q4_K_8x8_q8_K`, once per
        /// super-block. The lanes are the rows. `out[8 t + k]` is row k
        /// against token t; `acts` as [`crate::simd::Acts::q8k_x4`] makes them.
        ///
        /// # Safety
        /// The tier's features must be present; `rows` holds 8 rows of `nb`
        /// super-blocks and `acts` `out.len() / 8` tokens of `nb` super-blocks.
        #[target_feature(enable = $feat)]
        pub unsafe fn q4_k_x8(rows: &[k_quants::BlockQ4K], acts: &[BlockQ8K], out: &mut [f32]) {
            let nb = rows.len() / 8;
            let ntok = out.len() / 8;
            debug_assert!(rows.len() == 8 * nb && out.len() == 8 * ntok && acts.len() >= ntok * nb);
            let ngemm = ntok - ntok % 4;
            let mut t = 0;
            while t + $tile <= ngemm {
                q4_k_x8_tile::<$tile, true>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + $tile)]);
                t += $tile;
            }
            if $tile > 4 && t + 4 <= ngemm {
                q4_k_x8_tile::<4, true>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + 4)]);
                t += 4;
            }
            while t < ntok {
                q4_k_x8_tile::<1, false>(rows, nb, &acts[t * nb..], &mut out[8 * t..8 * (t + 1)]);
                t += 1;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q4_k_x8_tile<const N: usize, const GEMM: bool>(
            rows: &[k_quants::BlockQ4K],
            nb: usize,
            acts: &[BlockQ8K],
            out: &mut [f32],
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut accm = [_mm256_setzero_ps(); N];
            let m4 = _mm256_set1_epi8(0x0f);
            // Eight interleaved streams, as in `nib32_x8_tile`: fetch the next
            // eight rows (the bytes just past these) evenly over the super-blocks.
            let next = rows.as_ptr().wrapping_add(rows.len()) as *const i8;
            for b in 0..nb {
                let pf = next.wrapping_add(8 * 144 * b);
                for line in 0..18 {
                    _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * line));
                }
                // p[t][sb][k]: row k's Σ sc·code·q over sub-blocks 2sb, 2sb+1
                // (8 lanes to be summed), against token t. Without GEMM all
                // four pairs go into p[t][0].
                let mut p = [[[_mm256_setzero_si256(); 8]; 4]; N];
                let mut mn = [[0i32; 8]; 8];
                let mut dbits = [0u16; 8];
                let mut mbits = [0u16; 8];
                for k in 0..8 {
                    let blk = rows.get_unchecked(k * nb + b);
                    dbits[k] = blk.d.to_bits();
                    mbits[k] = blk.dmin.to_bits();
                    let mut sc = [_mm256_setzero_si256(); 8];
                    for j in 0..8 {
                        let (s, m) = scale_min_k4(j, &blk.scales);
                        sc[j] = _mm256_set1_epi16(s as i16);
                        mn[j][k] = m as i32;
                    }
                    let mut codes = [_mm256_setzero_si256(); 8];
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(blk.qs.as_ptr().add(32 * c) as *const __m256i);
                        codes[2 * c] = _mm256_and_si256(q, m4);
                        codes[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    }
                    for t in 0..N {
                        let a = acts.get_unchecked(t * nb + b);
                        for sb in 0..4 {
                            let v = _mm256_add_epi32(
                                dot_scaled(codes[2 * sb], load_k(a, 2 * sb), sc[2 * sb]),
                                dot_scaled(codes[2 * sb + 1], load_k(a, 2 * sb + 1), sc[2 * sb + 1]),
                            );
                            let slot = if GEMM { sb } else { 0 };
                            p[t][slot][k] = _mm256_add_epi32(p[t][slot][k], v);
                        }
                    }
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(dbits.as_ptr() as *const __m128i));
                let dm = _mm256_cvtph_ps(_mm_loadu_si128(mbits.as_ptr() as *const __m128i));
                let mut mnv = [_mm256_setzero_si256(); 8];
                for j in 0..8 {
                    mnv[j] = _mm256_loadu_si256(mn[j].as_ptr() as *const __m256i);
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + b);
                    let da = _mm256_set1_ps(a.d);
                    let sd = _mm256_mul_ps(dw, da);
                    let sm = _mm256_mul_ps(dm, da);
                    let mut imin = [_mm256_setzero_si256(); 4];
                    for j in 0..8 {
                        let bs = _mm256_set1_epi32(a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
                        let slot = if GEMM { j / 2 } else { 0 };
                        imin[slot] = _mm256_add_epi32(imin[slot], _mm256_mullo_epi32(mnv[j], bs));
                    }
                    for sb in 0..(if GEMM { 4 } else { 1 }) {
                        let isum = hsum8x8_i32(&p[t][sb]);
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sd, acc[t]);
                        accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin[sb]), sm, accm[t]);
                    }
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * t), _mm256_sub_ps(acc[t], accm[t]));
            }
        }

        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q5_k(row: &[k_quants::BlockQ5K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q5_k_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q5_k_tile<const N: usize>(
            row: &[k_quants::BlockQ5K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let mut acc = [0f32; N];
            let m4 = _mm256_set1_epi8(0x0f);
            let one = _mm256_set1_epi8(0x01);
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let dmin = f16_bits(b.dmin.to_bits());
                let mut sc = [_mm256_setzero_si256(); 8];
                let mut mn = [0i32; 8];
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, &b.scales);
                    sc[j] = _mm256_set1_epi16(s as i16);
                    mn[j] = m as i32;
                }
                let hb = _mm256_loadu_si256(b.qh.as_ptr() as *const __m256i);
                let mut codes = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * c) as *const __m256i);
                    // Bit g of every qh byte is the fifth bit of group g.
                    let h_lo = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32)), one);
                    let h_hi =
                        _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32 + 1)), one);
                    codes[2 * c] = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h_lo, 4));
                    codes[2 * c + 1] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                        _mm256_slli_epi16(h_hi, 4),
                    );
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        s = _mm256_add_epi32(s, dot_scaled(codes[g], load_k(a, g), sc[g]));
                    }
                    acc[t] += a.d * d * hsum_i32(s) as f32 - a.d * dmin * mins8(&mn, a) as f32;
                }
            }
            out.copy_from_slice(&acc);
        }

        /// Q6_K in the order of `ggml_vec_dot_q6_K_q8_K` (x86 AVX2 branch):
        /// per super-block the eight i32 lanes of `Σ sc·code·q - 32 Σ sc·bsum`
        /// (codes unsigned, lane l holding bytes `4l..4l+4` of each 32 and
        /// bsums `2l, 2l+1`) go into eight f32 lanes by
        /// `fma(d_y·d, lane, acc)`, summed across lanes at the end.
        ///
        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q6_k(row: &[k_quants::BlockQ6K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q6_k_lanes_tile, row, acts, row.len(), out)
        }

        /// Q6_K in the order of llama.cpp's tiled K-quant matmul (taken from
        /// 8 tokens up): per super-block `acc = fma(f32(sumi) · d, d_y, acc)`
        /// with `sumi = Σ_j sc_j Σ (code - 32)·q` exact.
        ///
        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q6_k_tiled(row: &[k_quants::BlockQ6K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q6_k_tiled_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q6_k_lanes_tile<const N: usize>(
            row: &[k_quants::BlockQ6K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            q6_k_tile::<N, false>(row, acts, nb, out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q6_k_tiled_tile<const N: usize>(
            row: &[k_quants::BlockQ6K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            q6_k_tile::<N, true>(row, acts, nb, out)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_k_tile<const N: usize, const TILED: bool>(
            row: &[k_quants::BlockQ6K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut acc1 = [_mm_setzero_ps(); N];
            let m4 = _mm256_set1_epi8(0x0f);
            let m3 = _mm256_set1_epi8(0x03);
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let mut codes = [_mm256_setzero_si256(); 8];
                let mut sc = [_mm256_setzero_si256(); 8];
                for n in 0..2 {
                    let ql0 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * n) as *const __m256i);
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
                    let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
                    let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
                    let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
                    codes[4 * n] = _mm256_or_si256(_mm256_and_si256(ql0, m4), h0);
                    codes[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), h1);
                    codes[4 * n + 2] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2);
                    codes[4 * n + 3] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3);
                }
                for g in 0..8 {
                    sc[g] = scales2(b.scales[2 * g] as i16, b.scales[2 * g + 1] as i16);
                }
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr() as *const __m128i));
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        s = _mm256_add_epi32(s, dot_scaled(codes[g], load_k(a, g), sc[g]));
                    }
                    // The -32 offset of the codes: lane l takes 32 (sc·bsum) of sums 2l, 2l+1.
                    let q8s = _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i);
                    let s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_madd_epi16(q8s, scales16), 5));
                    if TILED {
                        let v = _mm_set_ss(hsum_i32(s) as f32 * d);
                        acc1[t] = _mm_fmadd_ss(v, _mm_set_ss(a.d), acc1[t]);
                    } else {
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a.d * d), _mm256_cvtepi32_ps(s), acc[t]);
                    }
                }
            }
            for t in 0..N {
                out[t] = if TILED { _mm_cvtss_f32(acc1[t]) } else { hsum(acc[t]) };
            }
        }

        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q2_k(row: &[k_quants::BlockQ2K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q2_k_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q2_k_tile<const N: usize>(
            row: &[k_quants::BlockQ2K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let mut acc = [0f32; N];
            let m3 = _mm256_set1_epi8(0x03);
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let dmin = f16_bits(b.dmin.to_bits());
                let mut codes = [_mm256_setzero_si256(); 8];
                let mut sc = [_mm256_setzero_si256(); 8];
                let mut mn = [0i32; 16];
                for j in 0..16 {
                    mn[j] = (b.scales[j] >> 4) as i32;
                }
                for n in 0..2 {
                    let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * n) as *const __m256i);
                    for j in 0..4 {
                        codes[4 * n + j] =
                            _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
                    }
                }
                for g in 0..8 {
                    sc[g] = scales2((b.scales[2 * g] & 15) as i16, (b.scales[2 * g + 1] & 15) as i16);
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        s = _mm256_add_epi32(s, dot_scaled(codes[g], load_k(a, g), sc[g]));
                    }
                    let mut summ = 0i32;
                    for j in 0..16 {
                        summ += mn[j] * a.bsums[j] as i32;
                    }
                    acc[t] += a.d * d * hsum_i32(s) as f32 - a.d * dmin * summ as f32;
                }
            }
            out.copy_from_slice(&acc);
        }

        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn q3_k(row: &[k_quants::BlockQ3K], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; q3_k_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q3_k_tile<const N: usize>(
            row: &[k_quants::BlockQ3K],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let mut acc = [0f32; N];
            let m3 = _mm256_set1_epi8(0x03);
            let one = _mm256_set1_epi8(0x01);
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let scales = q3k_scales(&b.scales);
                let hm = _mm256_loadu_si256(b.hmask.as_ptr() as *const __m256i);
                // Low two bits (unsigned) and 4 where the high bit is clear.
                let mut low = [_mm256_setzero_si256(); 8];
                let mut neg = [_mm256_setzero_si256(); 8];
                let mut sc = [_mm256_setzero_si256(); 8];
                for n in 0..2 {
                    let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * n) as *const __m256i);
                    for j in 0..4 {
                        let g = 4 * n + j;
                        low[g] =
                            _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
                        let h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(g as i32)), one);
                        neg[g] = _mm256_slli_epi16(_mm256_xor_si256(h, one), 2);
                    }
                }
                for g in 0..8 {
                    sc[g] = scales2(scales[2 * g] as i16, scales[2 * g + 1] as i16);
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        let y = load_k(a, g);
                        let p = _mm256_sub_epi16(
                            _mm256_maddubs_epi16(low[g], y),
                            _mm256_maddubs_epi16(neg[g], y),
                        );
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, sc[g]));
                    }
                    acc[t] += a.d * d * hsum_i32(s) as f32;
                }
            }
            out.copy_from_slice(&acc);
        }

        /// # Safety
        /// As [`q4_k`].
        #[target_feature(enable = $feat)]
        pub unsafe fn iq4_xs(row: &[iq4::BlockIQ4XS], acts: &[BlockQ8K], out: &mut [f32]) {
            tiles!($tile; iq4_xs_tile, row, acts, row.len(), out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn iq4_xs_tile<const N: usize>(
            row: &[iq4::BlockIQ4XS],
            acts: &[BlockQ8K],
            nb: usize,
            out: &mut [f32],
        ) {
            let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            let table = _mm256_set_m128i(table, table);
            let mut acc = [0f32; N];
            for (i, b) in row.iter().enumerate() {
                let d = f16_bits(b.d.to_bits());
                let mut ax = [_mm256_setzero_si256(); 8];
                let mut qx = [_mm256_setzero_si256(); 8];
                let mut ls = [0i32; 8];
                for g in 0..8 {
                    let lo = (b.scales_l[g / 2] >> (4 * (g % 2))) & 0xf;
                    let hi = ((b.scales_h >> (2 * g)) & 3) as u8;
                    ls[g] = (lo | (hi << 4)) as i32 - 32;
                    qx[g] = _mm256_shuffle_epi8(table, nibbles32(b.qs.as_ptr().add(16 * g)));
                    ax[g] = _mm256_sign_epi8(qx[g], qx[g]);
                }
                for t in 0..N {
                    let a = acts.get_unchecked(t * nb + i);
                    let mut sumi = 0i32;
                    for g in 0..8 {
                        let sy = _mm256_sign_epi8(load_k(a, g), qx[g]);
                        sumi += ls[g] * hsum_i32(dot_i32(ax[g], sy));
                    }
                    acc[t] += a.d * d * sumi as f32;
                }
            }
            out.copy_from_slice(&acc);
        }

        // ---------------------------------------------------- float weights

        /// Weights `j..j+8` of a float row as f32: `KIND` 0 = f32, 1 = f16, 2 = bf16.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load8<const KIND: u8>(p: *const u8, j: usize) -> __m256 {
            match KIND {
                0 => _mm256_loadu_ps((p as *const f32).add(j)),
                1 => _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(j) as *const __m128i)),
                _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((p as *const u16).add(j) as *const __m128i)),
                    16,
                )),
            }
        }

        #[inline]
        unsafe fn scalar<const KIND: u8>(p: *const u8, j: usize) -> f32 {
            match KIND {
                0 => *(p as *const f32).add(j),
                1 => half::f16::from_bits(*(p as *const u16).add(j)).to_f32(),
                _ => BlockBF16 { bits: *(p as *const u16).add(j) }.to_f32(),
            }
        }

        /// llama.cpp's order for F32 and F16 weights (x86 AVX-512 build), so the
        /// products are bit-equal to ggml-cpu's (see `simd::attn` for the same two
        /// orders on the f16 KV cache): two or more tokens with `cols % 16 == 0`
        /// go through llamafile's tinyBLAS (16 lanes, lane `j` an FMA chain over
        /// the columns `≡ j` mod 16, then `_mm512_reduce_add_ps`); otherwise each
        /// token is a `ggml_vec_dot_f32` / `ggml_vec_dot_f16` (four 16-lane
        /// accumulators over steps of 64, reduced `(0 + 2) + (1 + 3)`, then the
        /// leftovers: f32 FMA for F32, f64 for F16). F16 activations arrive
        /// already rounded to f16 (ggml's `vec_dot_type`).
        #[target_feature(enable = $feat)]
        unsafe fn ggml_float_rows<const KIND: u8>(row: *const u8, cols: usize, x: &[f32], out: &mut [f32]) {
            if out.len() >= 2 && cols % 16 == 0 {
                let mut t = 0;
                while t < out.len() {
                    let n = (out.len() - t).min(4);
                    let mut lo = [_mm256_setzero_ps(); 4];
                    let mut hi = [_mm256_setzero_ps(); 4];
                    let mut j = 0;
                    while j < cols {
                        let (wl, wh) = (load8::<KIND>(row, j), load8::<KIND>(row, j + 8));
                        for k in 0..n {
                            let xp = x.as_ptr().add((t + k) * cols + j);
                            lo[k] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xp), lo[k]);
                            hi[k] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xp.add(8)), hi[k]);
                        }
                        j += 16;
                    }
                    for k in 0..n {
                        out[t + k] = hsum(_mm256_add_ps(lo[k], hi[k]));
                    }
                    t += n;
                }
                return;
            }
            let np = cols & !63;
            for (k, o) in out.iter_mut().enumerate() {
                let xs = &x[k * cols..(k + 1) * cols];
                // a[2a] / a[2a + 1]: accumulator a, lanes 0..8 / 8..16.
                let mut a = [_mm256_setzero_ps(); 8];
                let mut j = 0;
                while j < np {
                    for (h, v) in a.iter_mut().enumerate() {
                        let w = load8::<KIND>(row, j + h * 8);
                        *v = _mm256_fmadd_ps(w, _mm256_loadu_ps(xs.as_ptr().add(j + h * 8)), *v);
                    }
                    j += 64;
                }
                let l = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
                let h = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
                let r = hsum(_mm256_add_ps(l, h));
                *o = if KIND == 0 {
                    let mut s = r;
                    for j in np..cols {
                        s = scalar::<KIND>(row, j).mul_add(xs[j], s);
                    }
                    s
                } else {
                    let mut s = r as f64;
                    for j in np..cols {
                        s += (scalar::<KIND>(row, j) * xs[j]) as f64;
                    }
                    s as f32
                };
            }
        }

        /// Two weight rows (`row`: row 0's `cols` values, then row 1's) times
        /// a batch of `out.len() / 2` tokens in tinyBLAS's order (see
        /// [`ggml_float_rows`]; needs `cols % 16 == 0`), `out[2 t + k]` = row
        /// k, token t: one activation load serves both rows.
        #[target_feature(enable = $feat)]
        unsafe fn ggml_float_rows2<const KIND: u8>(row: *const u8, cols: usize, x: &[f32], out: &mut [f32]) {
            const T: usize = $tile / 2;
            let esz = if KIND == 0 { 4 } else { 2 };
            let row1 = row.add(cols * esz);
            let ntok = out.len() / 2;
            let mut t = 0;
            while t < ntok {
                let n = (ntok - t).min(T);
                let mut acc = [[_mm256_setzero_ps(); 4]; T]; // [token][row0 lo, row0 hi, row1 lo, row1 hi]
                let mut j = 0;
                while j < cols {
                    let w = [
                        load8::<KIND>(row, j),
                        load8::<KIND>(row, j + 8),
                        load8::<KIND>(row1, j),
                        load8::<KIND>(row1, j + 8),
                    ];
                    for k in 0..n {
                        let xp = x.as_ptr().add((t + k) * cols + j);
                        let (xl, xh) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                        let a = &mut acc[k];
                        a[0] = _mm256_fmadd_ps(w[0], xl, a[0]);
                        a[1] = _mm256_fmadd_ps(w[1], xh, a[1]);
                        a[2] = _mm256_fmadd_ps(w[2], xl, a[2]);
                        a[3] = _mm256_fmadd_ps(w[3], xh, a[3]);
                    }
                    j += 16;
                }
                for k in 0..n {
                    out[2 * (t + k)] = hsum(_mm256_add_ps(acc[k][0], acc[k][1]));
                    out[2 * (t + k) + 1] = hsum(_mm256_add_ps(acc[k][2], acc[k][3]));
                }
                t += n;
            }
        }

        /// # Safety
        /// The tier's features must be present; `rows` holds two rows of
        /// `cols` (a multiple of 16) and `x` `out.len() / 2` tokens of `cols`.
        #[target_feature(enable = $feat)]
        pub unsafe fn f32_rows2(rows: &[f32], x: &[f32], out: &mut [f32]) {
            ggml_float_rows2::<0>(rows.as_ptr() as *const u8, rows.len() / 2, x, out)
        }

        /// # Safety
        /// As [`f32_rows2`].
        #[target_feature(enable = $feat)]
        pub unsafe fn f16_rows2(rows: &[u16], x: &[f32], out: &mut [f32]) {
            ggml_float_rows2::<1>(rows.as_ptr() as *const u8, rows.len() / 2, x, out)
        }

        #[target_feature(enable = $feat)]
        unsafe fn float_rows<const KIND: u8>(row: *const u8, cols: usize, x: &[f32], out: &mut [f32]) {
            if KIND < 2 {
                ggml_float_rows::<KIND>(row, cols, x, out);
                return;
            }
            let full = cols / 8 * 8;
            if out.len() == 1 {
                // One token: four independent accumulators hide the FMA latency.
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut j = 0;
                while j + 32 <= full {
                    for (k, a) in acc.iter_mut().enumerate() {
                        let w = load8::<KIND>(row, j + 8 * k);
                        *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(j + 8 * k)), *a);
                    }
                    j += 32;
                }
                while j < full {
                    let w = load8::<KIND>(row, j);
                    acc[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(j)), acc[0]);
                    j += 8;
                }
                let mut tail = 0f32;
                for j in full..cols {
                    tail += scalar::<KIND>(row, j) * x[j];
                }
                let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                out[0] = hsum(s) + tail;
                return;
            }
            let mut t = 0;
            while t < out.len() {
                let n = (out.len() - t).min(4);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut j = 0;
                while j < full {
                    let w = load8::<KIND>(row, j);
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
                        tail += scalar::<KIND>(row, j) * xs[j];
                    }
                    out[t + k] = hsum(*a) + tail;
                }
                t += n;
            }
        }

        /// # Safety
        /// The tier's features must be present; `x` holds `out.len()` rows of `row.len()`.
        #[target_feature(enable = $feat)]
        pub unsafe fn f32_rows(row: &[f32], x: &[f32], out: &mut [f32]) {
            float_rows::<0>(row.as_ptr() as *const u8, row.len(), x, out)
        }

        /// # Safety
        /// As [`f32_rows`].
        #[target_feature(enable = $feat)]
        pub unsafe fn f16_rows(row: &[u16], x: &[f32], out: &mut [f32]) {
            float_rows::<1>(row.as_ptr() as *const u8, row.len(), x, out)
        }

        /// # Safety
        /// As [`f32_rows`].
        #[target_feature(enable = $feat)]
        pub unsafe fn bf16_rows(row: &[u16], x: &[f32], out: &mut [f32]) {
            float_rows::<2>(row.as_ptr() as *const u8, row.len(), x, out)
        }

        // ------------------------------------------------- attention pieces

        /// `Σ q[i] · k[i]` for f32 queries and f16 keys.
        ///
        /// # Safety
        /// The tier's features must be present; `k.len() >= q.len()`.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_f32_f16(q: &[f32], k: &[u16]) -> f32 {
            let n = q.len();
            let full = n / 8 * 8;
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j < full {
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(j) as *const __m128i));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(j)), kv, acc);
                j += 8;
            }
            let mut s = hsum(acc);
            for j in full..n {
                s += q[j] * half::f16::from_bits(k[j]).to_f32();
            }
            s
        }

        /// `o[i] += w · v[i]` for f16 values.
        ///
        /// # Safety
        /// As [`dot_f32_f16`], with `v.len() >= o.len()`.
        #[target_feature(enable = $feat)]
        pub unsafe fn axpy_f16(o: &mut [f32], w: f32, v: &[u16]) {
            let n = o.len();
            let full = n / 8 * 8;
            let wv = _mm256_set1_ps(w);
            let mut j = 0;
            while j < full {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(j) as *const __m128i));
                let p = o.as_mut_ptr().add(j);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(wv, vv, _mm256_loadu_ps(p)));
                j += 8;
            }
            for j in full..n {
                o[j] += w * half::f16::from_bits(v[j]).to_f32();
            }
        }
    };
    (@dot avx2, $ax:ident, $sy:ident) => {
        _mm256_madd_epi16(_mm256_maddubs_epi16($ax, $sy), _mm256_set1_epi16(1))
    };
    (@dot avx512, $ax:ident, $sy:ident) => {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), $ax, $sy)
    };
}
#[allow(unused_imports)]
pub(crate) use x86_kernels;

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(target_arch = "x86_64")]
// The tile loops index several per-token arrays by the same token number.
#[allow(clippy::needless_range_loop)]
mod imp {
    super::x86_kernels!("avx2,fma,f16c", avx2, 4);
}
