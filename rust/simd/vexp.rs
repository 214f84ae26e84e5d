//! ggml's vector `expf` (`ggml_v_expf`, AVX-512 variant, from ARM's optimized
//! routines) and the two places llama.cpp uses it on our path: SwiGLU
//! (`ggml_vec_swiglu_f32`) and the softmax exponentials
//! (`ggml_vec_soft_max_f32`). Within 1.5 ulp of `expf` but not bit-equal to
//! it, so our activations match llama.cpp's only through this exact sequence
//! of FMAs. The AVX-512 version runs 16 lanes at once with ggml's intrinsics;
//! the scalar one is its per-lane reference (and the fallback).

/// ggml's vector width for `ggml_v_expf` (its AVX-512 build): whole chunks of
/// this many values go through the approximation, the tail through `expf`.
pub const GGML_VEC: usize = 16;

const R: u32 = 0x4b40_0000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const C: [u32; 5] = [
    0x3c07_2010, // 0x1.0e4020p-7
    0x3d2b_9f17, // 0x1.573e2ep-5
    0x3e2a_af33, // 0x1.555e66p-3
    0x3eff_fedb, // 0x1.fffdb6p-2
    0x3f7f_fff6, // 0x1.ffffecp-1
];

#[inline]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// One lane of `ggml_v_expf`.
#[inline]
pub fn v_expf_ref(x: f32) -> f32 {
    let r = c(R);
    let z = x.mul_add(c(LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(C[0])
        .mul_add(b, c(C[1]))
        .mul_add(u, c(C[2]).mul_add(b, c(C[3])))
        .mul_add(u, c(C[4]).mul_add(b, 1.0));
    // _mm512_scalef_ps(j, n): j · 2^n rounded once; |n| <= 192 here, so 2^n is
    // an exact f64 and the product of two f64s rounds to the same f32.
    let e = n as i32;
    (j as f64 * f64::from_bits(((e + 1023) as u64) << 52)) as f32
}

/// `g = silu(g) · u` as `ggml_vec_swiglu_f32`: `x / (1 + v_expf(0 - x))` in
/// whole chunks of 16, `x / (1 + expf(-x))` for the tail.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F/DQ detected; the slices have equal lengths.
        unsafe { x86::swiglu_body(g, u) };
        swiglu_tail(g, u);
        return;
    }
    swiglu_ref(g, u);
}

/// [`swiglu`] lane by lane (the reference the vector version is tested against).
pub fn swiglu_ref(g: &mut [f32], u: &[f32]) {
    let body = g.len() / GGML_VEC * GGML_VEC;
    for (g, u) in g[..body].iter_mut().zip(u) {
        *g = *g / (1.0 + v_expf_ref(0.0 - *g)) * u;
    }
    swiglu_tail(g, u);
}

fn swiglu_tail(g: &mut [f32], u: &[f32]) {
    let body = g.len() / GGML_VEC * GGML_VEC;
    for (g, u) in g[body..].iter_mut().zip(&u[body..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x = exp(x - max)` and the sum, as `ggml_vec_soft_max_f32`: whole chunks
/// of 16 through `ggml_v_expf`, each chunk summed by `_mm512_reduce_add_ps`'s
/// tree then added in f64; the tail through `expf`, added in f64.
pub fn soft_max_exp(x: &mut [f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F/DQ detected.
        let sum = unsafe { x86::soft_max_body(x, max) };
        return soft_max_tail(x, max, sum);
    }
    soft_max_exp_ref(x, max)
}

/// [`soft_max_exp`] lane by lane.
pub fn soft_max_exp_ref(x: &mut [f32], max: f32) -> f64 {
    let body = x.len() / GGML_VEC * GGML_VEC;
    let mut sum = 0f64;
    for ch in x[..body].chunks_exact_mut(GGML_VEC) {
        let mut t = [0f32; GGML_VEC];
        for (v, t) in ch.iter_mut().zip(t.iter_mut()) {
            *v = v_expf_ref(*v - max);
            *t = *v;
        }
        sum += super::attn::reduce16(&t) as f64;
    }
    soft_max_tail(x, max, sum)
}

fn soft_max_tail(x: &mut [f32], max: f32, mut sum: f64) -> f64 {
    let body = x.len() / GGML_VEC * GGML_VEC;
    for v in x[body..].iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq"))
}

// The AVX-512 intrinsics are stable since Rust 1.89; the crate's MSRV (1.80)
// is for the other tiers, and this module only runs where they compile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{c, C, GGML_VEC, LN2_HI, LN2_LO, LOG2E, R};

    /// ggml's `ggml_v_expf`, intrinsic for intrinsic.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn v_expf(x: __m512) -> __m512 {
        let r = _mm512_set1_ps(c(R));
        let z = _mm512_fmadd_ps(x, _mm512_set1_ps(c(LOG2E)), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(
            n,
            _mm512_set1_ps(c(LN2_LO)),
            _mm512_fnmadd_ps(n, _mm512_set1_ps(c(LN2_HI)), x),
        );
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(_mm512_set1_ps(c(C[0])), b, _mm512_set1_ps(c(C[1]))),
                u,
                _mm512_fmadd_ps(_mm512_set1_ps(c(C[2])), b, _mm512_set1_ps(c(C[3]))),
            ),
            u,
            _mm512_fmadd_ps(_mm512_set1_ps(c(C[4])), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero);
        let alt = _mm512_mask_blend_ps(le, _mm512_set1_ps(f32::INFINITY), zero);
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// The whole chunks of 16 of `super::swiglu`.
    ///
    /// # Safety
    /// AVX-512F and DQ must be available; `g.len() == u.len()`.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn swiglu_body(g: &mut [f32], u: &[f32]) {
        let body = g.len() / GGML_VEC * GGML_VEC;
        let one = _mm512_set1_ps(1.0);
        for i in (0..body).step_by(GGML_VEC) {
            let x = _mm512_loadu_ps(g.as_ptr().add(i));
            let e = v_expf(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
            let y = _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr().add(i)));
            _mm512_storeu_ps(g.as_mut_ptr().add(i), y);
        }
    }

    /// The whole chunks of 16 of `super::soft_max_exp`; returns their sum.
    ///
    /// # Safety
    /// AVX-512F and DQ must be available.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn soft_max_body(x: &mut [f32], max: f32) -> f64 {
        let body = x.len() / GGML_VEC * GGML_VEC;
        let m = _mm512_set1_ps(max);
        let mut sum = 0f64;
        for i in (0..body).step_by(GGML_VEC) {
            let v = v_expf(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), m));
            _mm512_storeu_ps(x.as_mut_ptr().add(i), v);
            sum += _mm512_reduce_add_ps(v) as f64;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0;
                // edges: large magnitudes (0 / inf branches), zeros, tiny values
                match i % 97 {
                    0 => 120.0,
                    1 => -150.0,
                    2 => 0.0,
                    3 => -0.0,
                    4 => 1e-30,
                    _ => v,
                }
            })
            .collect()
    }

    #[test]
    fn vector_swiglu_and_softmax_are_bit_equal_to_the_lane_reference() {
        for n in [0usize, 5, 16, 37, 1536, 1543] {
            let g0 = values(n, 7 + n as u64);
            let u = values(n, 99 + n as u64);
            let (mut a, mut b) = (g0.clone(), g0.clone());
            swiglu(&mut a, &u);
            swiglu_ref(&mut b, &u);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "swiglu n {n} at {i}: {x} vs {y}");
            }
            let (mut a, mut b) = (g0.clone(), g0.clone());
            let max = g0.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let (sa, sb) = (soft_max_exp(&mut a, max), soft_max_exp_ref(&mut b, max));
            assert_eq!(sa.to_bits(), sb.to_bits(), "softmax sum n {n}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.to_bits(), y.to_bits());
            }
        }
    }

    #[test]
    fn v_expf_is_close_to_expf_and_saturates() {
        for &x in &[-10.0f32, -1.0, -0.5, 0.0, 0.3, 1.0, 5.0, 80.0] {
            let (got, want) = (v_expf_ref(x), x.exp());
            assert!(((got - want) / want).abs() < 4e-7, "{x}: {got} vs {want}");
        }
        assert_eq!(v_expf_ref(-200.0), 0.0);
        assert_eq!(v_expf_ref(200.0), f32::INFINITY);
    }
}
