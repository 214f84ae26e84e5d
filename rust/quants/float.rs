//! Float "blocks" of one weight: F32, F16 and BF16. Conversions follow numpy and
//! ggml: F16 rounds to nearest even (IEEE), BF16 rounds to nearest even with NaN
//! forced quiet (`ggml_compute_fp32_to_bf16`).

use bytemuck::{Pod, Zeroable};
use half::f16;

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
    pub fn from_f32(x: f32) -> Self {
        let mut n = x.to_bits();
        if n & 0x7fff_ffff > 0x7f80_0000 {
            // NaN: keep the sign and payload top, force the quiet bit.
            n = (n & 0xffff_0000) | (64 << 16);
            return Self {
                bits: (n >> 16) as u16,
            };
        }
        let rounded = (n as u64 + (0x7fff + ((n as u64 >> 16) & 1))) >> 16;
        Self {
            bits: rounded as u16,
        }
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.bits as u32) << 16)
    }
}

impl Block for BlockF32 {
    const QTYPE: QType = QType::F32;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.value = *s;
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.value;
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.value * a).sum()
    }
}

impl Block for BlockF16 {
    const QTYPE: QType = QType::F16;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.value = f16::from_f32(*s);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.value.to_f32();
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.value.to_f32() * a).sum()
    }
}

impl Block for BlockBF16 {
    const QTYPE: QType = QType::BF16;

    fn quantize_row(src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(*s);
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    fn vec_dot(src: &[Self], x: &[f32]) -> f32 {
        src.iter().zip(x).map(|(w, a)| w.to_f32() * a).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
