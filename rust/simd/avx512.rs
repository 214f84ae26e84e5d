//! The AVX-512 tier: the kernels of [`super::avx2`] compiled with AVX-512
//! F/BW/VL/VNNI enabled, so byte products go through `vpdpbusd` (one
//! instruction for `maddubs` + `madd`) and the tiles have 32 vector
//! registers. Callers check [`super::isa_level`] first.

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(target_arch = "x86_64")]
// The tile loops index several per-token arrays by the same token number; the
// AVX-512 intrinsics are stable since Rust 1.89 (the crate's MSRV stays 1.80 for
// the other modules; building this one needs 1.89).
#[allow(clippy::needless_range_loop, clippy::incompatible_msrv)]
mod imp {
    use super::super::avx2::{rows2, tiles, x86_kernels};
    x86_kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        avx512,
        8
    );
}
