//! K-quants: 256-weight super-blocks with 6- or 8-bit sub-block scales
//! (ggml-quants.c `quantize_row_q*_K_ref` and the imatrix-weighted variants).
//! PLACEHOLDER: layouts only; kernels are being written.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{Block, QType, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
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
placeholder!(BlockQ2K, QType::Q2_K);
placeholder!(BlockQ3K, QType::Q3_K);
placeholder!(BlockQ4K, QType::Q4_K);
placeholder!(BlockQ5K, QType::Q5_K);
placeholder!(BlockQ6K, QType::Q6_K);
