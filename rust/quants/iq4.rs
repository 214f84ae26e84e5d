//! IQ4_NL and IQ4_XS: 4-bit codes into a fixed non-linear table
//! (ggml-quants.c `quantize_row_iq4_nl_impl`).
//! PLACEHOLDER: layouts only; kernels are being written.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{Block, QType, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

macro_rules! placeholder {
    ($B:ty, $q:expr) => {
        impl Block for $B {
            const QTYPE: QType = $q;
            fn quantize_row(_src: &[f32], dst: &mut [Self], _imatrix: Option<&[f32]>) {
                dst.fill(Self::zeroed());
            }
            fn dequantize_row(_src: &[Self], dst: &mut [f32]) {
                dst.fill(0.0);
            }
        }
    };
}
placeholder!(BlockIQ4NL, QType::IQ4_NL);
placeholder!(BlockIQ4XS, QType::IQ4_XS);
