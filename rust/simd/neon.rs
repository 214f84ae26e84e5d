//! aarch64 NEON kernels for the most common legacy types (Q4_0, Q4_1, Q8_0),
//! written with the baseline widening multiplies (`smull`/`smlal2` +
//! pairwise adds) so they need no extension beyond NEON. The integer sums
//! equal the portable kernels'; the other types use the portable kernels.
//! Callers check [`super::isa_level`] first; on other targets this module
//! is empty.

#[cfg(target_arch = "aarch64")]
pub use imp::*;

#[cfg(target_arch = "aarch64")]
mod imp {
    use std::arch::aarch64::*;

    use crate::quants::legacy;
    use crate::simd::BlockQ8A;

    /// `Σ x[j] · q[j]` over 32 codes (two 16-byte halves) and one activation block.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot32(x0: int8x16_t, x1: int8x16_t, a: &BlockQ8A) -> i32 {
        let y0 = vld1q_s8(a.qs.as_ptr());
        let y1 = vld1q_s8(a.qs.as_ptr().add(16));
        let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(y0)), x0, y0);
        let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(x1), vget_low_s8(y1)), x1, y1);
        vaddvq_s32(vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
    }

    /// Low nibbles (weights 0..16) and high nibbles (16..32) of a legacy block.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
        let v = vld1q_u8(qs.as_ptr());
        (
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8(v, 4)),
        )
    }

    /// # Safety
    /// NEON must be present; `acts` holds `out.len()` tokens of `row.len()` blocks.
    #[target_feature(enable = "neon")]
    pub unsafe fn q4_0(row: &[legacy::BlockQ4_0], acts: &[BlockQ8A], out: &mut [f32]) {
        let nb = row.len();
        let eight = vdupq_n_s8(8);
        for (t, o) in out.iter_mut().enumerate() {
            let mut s = 0f32;
            for (i, b) in row.iter().enumerate() {
                let a = acts.get_unchecked(t * nb + i);
                let (lo, hi) = nibbles(&b.qs);
                let isum = dot32(vsubq_s8(lo, eight), vsubq_s8(hi, eight), a);
                s += b.d.to_f32() * a.d * isum as f32;
            }
            *o = s;
        }
    }

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "neon")]
    pub unsafe fn q4_1(row: &[legacy::BlockQ4_1], acts: &[BlockQ8A], out: &mut [f32]) {
        let nb = row.len();
        for (t, o) in out.iter_mut().enumerate() {
            let mut s = 0f32;
            for (i, b) in row.iter().enumerate() {
                let a = acts.get_unchecked(t * nb + i);
                let (lo, hi) = nibbles(&b.qs);
                let isum = dot32(lo, hi, a);
                s += b.d.to_f32() * a.d * isum as f32 + b.m.to_f32() * a.dsum;
            }
            *o = s;
        }
    }

    /// # Safety
    /// As [`q4_0`].
    #[target_feature(enable = "neon")]
    pub unsafe fn q8_0(row: &[legacy::BlockQ8_0], acts: &[BlockQ8A], out: &mut [f32]) {
        let nb = row.len();
        for (t, o) in out.iter_mut().enumerate() {
            let mut s = 0f32;
            for (i, b) in row.iter().enumerate() {
                let a = acts.get_unchecked(t * nb + i);
                let x0 = vld1q_s8(b.qs.as_ptr());
                let x1 = vld1q_s8(b.qs.as_ptr().add(16));
                s += b.d.to_f32() * a.d * dot32(x0, x1, a) as f32;
            }
            *o = s;
        }
    }
}
