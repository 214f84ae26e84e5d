//! Float "blocks" of one weight: F32, F16 and BF16. Conversions follow numpy and
//! ggml: F16 rounds to nearest even (IEEE), BF16 rounds to nearest even with NaN
//! forced quiet (`ggml_compute_fp32_to_bf16`).

use bytemuck::{Pod, Zeroable};
use half::{f16, slice::HalfFloatSliceExt};

use super::legacy::{dispatch, plain_dequantizer, plain_quantizer};
use super::{Block, QType};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockF32 {
    pub value: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockF16 {
    pub value: f16,
}

/// BF16 stored as its raw bits: the upper half of an f32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockBF16 {
    pub bits: u16,
}

impl BlockBF16 {
    /// Branch-free, so that row loops vectorize. A NaN keeps its sign and top
    /// payload bits and gets the quiet bit; anything else rounds to nearest
    /// even (the sum cannot overflow: only NaNs have bits >= 0xffff_8000).
    #[inline(always)]
    pub fn from_f32(x: f32) -> Self {
        let n = x.to_bits();
        let nan = (n >> 16) as u16 | 0x0040;
        let rounded = (n.wrapping_add(0x7fff + ((n >> 16) & 1)) >> 16) as u16;
        Self {
            bits: if n & 0x7fff_ffff > 0x7f80_0000 {
                nan
            } else {
                rounded
            },
        }
    }

    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.bits as u32) << 16)
    }
}

dispatch! {
    fn quantize_bf16(src: &[f32], dst: &mut [BlockBF16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = BlockBF16::from_f32(*s);
        }
    }
}

dispatch! {
    fn dequantize_bf16(src: &[BlockBF16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// `half`'s slice conversions (F16C eight at a time when the CPU has it; round to
/// nearest even either way, as numpy and ggml).
fn quantize_f16(src: &[f32], dst: &mut [BlockF16]) {
    bytemuck::cast_slice_mut::<BlockF16, f16>(dst).convert_from_f32_slice(src);
}

fn dequantize_f16(src: &[BlockF16], dst: &mut [f32]) {
    bytemuck::cast_slice::<BlockF16, f16>(src).convert_to_f32_slice(dst);
}

plain_quantizer!(f16_row, BlockF16, quantize_f16, quantize_f16);
plain_quantizer!(bf16_row, BlockBF16, quantize_bf16, quantize_bf16);
plain_dequantizer!(f16_values, BlockF16, dequantize_f16, dequantize_f16);
plain_dequantizer!(bf16_values, BlockBF16, dequantize_bf16, dequantize_bf16);

impl Block for BlockF32 {
    const QTYPE: QType = QType::F32;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        bytemuck::cast_slice_mut(dst).copy_from_slice(src);
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(bytemuck::cast_slice(src));
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.value * a).sum()
    }
}

impl Block for BlockF16 {
    const QTYPE: QType = QType::F16;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        f16_row(src, dst, false);
    }

    fn quantize_row_checked(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) -> bool {
        f16_row(src, dst, true)
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        f16_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.value.to_f32() * a).sum()
    }
}

impl Block for BlockBF16 {
    const QTYPE: QType = QType::BF16;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        bf16_row(src, dst, false);
    }

    fn quantize_row_checked(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) -> bool {
        bf16_row(src, dst, true)
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        bf16_values(src, dst);
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.to_f32() * a).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::legacy::FORCE_LEVEL;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
        assert_eq!(BlockBF16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(
            BlockBF16::from_f32(1.0 + 3.0 / 256.0).to_f32(),
            1.0 + 4.0 / 256.0
        );
        let nan = BlockBF16::from_f32(f32::from_bits(0x7f80_0001));
        assert!(nan.to_f32().is_nan());
        assert_eq!(nan.bits & 0x0040, 0x0040);
    }

    /// numpy's / ggml's BF16 rounding written with a branch, as in gguf-py.
    fn bf16_reference(x: f32) -> u16 {
        let mut n = x.to_bits();
        if n & 0x7fff_ffff > 0x7f80_0000 {
            n = (n & 0xffff_0000) | (64 << 16);
            return (n >> 16) as u16;
        }
        ((n as u64 + (0x7fff + ((n as u64 >> 16) & 1))) >> 16) as u16
    }

    /// Bit patterns over every exponent, with low-bit halfway cases and NaNs.
    fn bit_patterns() -> Vec<f32> {
        let mut v = Vec::new();
        let mut s = 0x1234_5678_9abc_def1u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let bits = (s >> 32) as u32;
            v.push(f32::from_bits(bits));
            v.push(f32::from_bits((bits & 0xffff_0000) | 0x8000)); // bf16 tie
            v.push(f32::from_bits((bits & 0xffff_e000) | 0x1000)); // f16 tie
        }
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
        ]);
        v.extend([65504.0, 65520.0, 65519.99, 6.0e-8, 2.9e-8, 3.0e-8, -5.96e-8]);
        v.extend([f32::from_bits(0x7f7f_ffff), f32::from_bits(0xffff_ffff)]);
        v.resize(v.len().next_multiple_of(8) + 5, 1.0); // a ragged tail
        v
    }

    #[test]
    fn bf16_rows_match_the_reference_on_both_paths() {
        let x = bit_patterns();
        for path in crate::quants::legacy::all_levels() {
            FORCE_LEVEL.with(|c| c.set(Some(path)));
            let mut q = vec![BlockBF16::zeroed(); x.len()];
            BlockBF16::quantize_row(&x, &mut q, None);
            let mut y = vec![0f32; x.len()];
            BlockBF16::dequantize_row(&q, &mut y);
            FORCE_LEVEL.with(|c| c.set(None));
            for ((v, b), y) in x.iter().zip(&q).zip(&y) {
                assert_eq!(
                    b.bits,
                    bf16_reference(*v),
                    "{v:e} ({:#x}) {path:?}",
                    v.to_bits()
                );
                assert_eq!(y.to_bits(), (b.bits as u32) << 16);
            }
        }
    }

    #[test]
    fn f16_rows_match_scalar_conversion() {
        let x = bit_patterns();
        for path in crate::quants::legacy::all_levels() {
            FORCE_LEVEL.with(|c| c.set(Some(path)));
            let mut q = vec![BlockF16::zeroed(); x.len()];
            BlockF16::quantize_row(&x, &mut q, None);
            let mut y = vec![0f32; x.len()];
            BlockF16::dequantize_row(&q, &mut y);
            FORCE_LEVEL.with(|c| c.set(None));
            for ((v, b), y) in x.iter().zip(&q).zip(&y) {
                let want = f16::from_f32(*v);
                if v.is_nan() {
                    assert!(b.value.is_nan() && y.is_nan());
                    continue;
                }
                assert_eq!(
                    b.value.to_bits(),
                    want.to_bits(),
                    "{v:e} ({:#x}) {path:?}",
                    v.to_bits()
                );
                assert_eq!(y.to_bits(), want.to_f32().to_bits());
            }
        }
    }

    /// The checked quantizers flag a NaN or an infinity anywhere in a row (the tail
    /// lanes too) and accept the largest finite values.
    #[test]
    fn checked_rows_flag_non_finite_values() {
        for path in crate::quants::legacy::all_levels() {
            FORCE_LEVEL.with(|c| c.set(Some(path)));
            for n in [1usize, 15, 16, 17, 40] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [0, n / 2, n - 1] {
                        let mut x = vec![f32::MAX; n];
                        x[0] = f32::MIN;
                        let (mut h, mut b) =
                            (vec![BlockF16::zeroed(); n], vec![BlockBF16::zeroed(); n]);
                        assert!(BlockF16::quantize_row_checked(&x, &mut h, None));
                        assert!(BlockBF16::quantize_row_checked(&x, &mut b, None));
                        x[at] = bad;
                        assert!(
                            !BlockF16::quantize_row_checked(&x, &mut h, None),
                            "{path:?} {n} {at}"
                        );
                        assert!(
                            !BlockBF16::quantize_row_checked(&x, &mut b, None),
                            "{path:?} {n} {at}"
                        );
                    }
                }
            }
            FORCE_LEVEL.with(|c| c.set(None));
        }
    }
}
