//! The two f16 products of attention (scores `K·q` and the weighted sum of
//! the values), with ggml-cpu's order of float operations, so our attention
//! is bit-equal to llama.cpp's (x86 AVX-512 build, no flash attention).
//!
//! llama.cpp computes `kq = mul_mat(K, q)` and `kqv = mul_mat(V, softmax(kq))`
//! with the F16 cache, the F32 right-hand side first rounded to f16. In
//! `ggml_compute_forward_mul_mat` (ggml-cpu.c) these go two ways:
//!
//! - a batch of two or more tokens: `llamafile_sgemm` (llamafile/sgemm.cpp,
//!   `tinyBLAS<16, __m512, ..., ggml_fp16_t, ggml_fp16_t, float>`): each
//!   output is 16 lanes, lane `j` a chain of FMAs over the elements `≡ j`
//!   (mod 16) in order, then `_mm512_reduce_add_ps` ([`Order::TinyBlas`]);
//! - one token (sgemm refuses `n < 2`): `ggml_vec_dot_f16` (vec.cpp), four
//!   16-lane accumulators over steps of 64 elements, reduced `(x0 + x2) +
//!   (x1 + x3)` then across lanes, to f64, leftovers added in f64
//!   ([`Order::VecDot`]).
//!
//! Both reductions across 16 lanes are GCC's `_mm512_reduce_add_ps` tree:
//! `a[i] + a[i + 8]`, then `+ [i + 4]`, then `(0 + 2) + (1 + 3)`.

/// Which ggml kernel an attention product follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// llamafile's `tinyBLAS` (16 lanes, elements `≡ lane` mod 16).
    TinyBlas,
    /// `ggml_vec_dot_f16` (64 lanes in four accumulators, f64 leftovers).
    VecDot,
}

#[inline]
fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// GCC's `_mm512_reduce_add_ps` tree over 16 lanes.
#[inline]
pub fn reduce16(a: &[f32; 16]) -> f32 {
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = a[i] + a[i + 8];
    }
    let u = [t[0] + t[4], t[1] + t[5], t[2] + t[6], t[3] + t[7]];
    (u[0] + u[2]) + (u[1] + u[3])
}

/// `Σ q[i]·k[i]` (`q` already at f16 precision, `k` f16 bits) in the order
/// `order`; for [`Order::TinyBlas`] `q.len()` must be a multiple of 16.
pub fn dot_f16(order: Order, q: &[f32], k: &[u16]) -> f32 {
    assert!(k.len() >= q.len());
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2/FMA/F16C were detected; `k` is at least as long as `q`.
        return unsafe { x86::dot_f16(order, q, k) };
    }
    dot_f16_ref(order, q, k)
}

/// [`dot_f16`] in plain Rust (the reference the SIMD version is tested against).
pub fn dot_f16_ref(order: Order, q: &[f32], k: &[u16]) -> f32 {
    let n = q.len();
    match order {
        Order::TinyBlas => {
            assert!(n % 16 == 0, "tinyBLAS needs a multiple of 16 values");
            let mut acc = [0f32; 16];
            for (qc, kc) in q.chunks_exact(16).zip(k.chunks_exact(16)) {
                for j in 0..16 {
                    acc[j] = f16(kc[j]).mul_add(qc[j], acc[j]);
                }
            }
            reduce16(&acc)
        }
        Order::VecDot => {
            let np = n & !63;
            let mut acc = [[0f32; 16]; 4];
            for i in (0..np).step_by(64) {
                for (j, a) in acc.iter_mut().enumerate() {
                    for (l, v) in a.iter_mut().enumerate() {
                        let idx = i + j * 16 + l;
                        *v = f16(k[idx]).mul_add(q[idx], *v);
                    }
                }
            }
            let mut s = vec_dot_reduce(&acc);
            for i in np..n {
                s += (f16(k[i]) * q[i]) as f64;
            }
            s as f32
        }
    }
}

/// `ggml_vec_dot_f16`'s reduction of its four accumulators, as f64.
#[inline]
fn vec_dot_reduce(acc: &[[f32; 16]; 4]) -> f64 {
    let mut x = [0f32; 16];
    for l in 0..16 {
        x[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    reduce16(&x) as f64
}

/// `out[d] = Σ_p w[p]·v_p[d]` over the positions `p < w.len()`, where `v_p`
/// is `v[p * stride..][..out.len()]` (f16 bits) and `w` is at f16 precision,
/// in the order `order` of a product over `n_kv ≥ w.len()` positions (ggml's
/// padded cache length; the positions past `w.len()` have weight 0).
pub fn weighted_sum_f16(
    order: Order,
    w: &[f32],
    v: &[u16],
    stride: usize,
    n_kv: usize,
    out: &mut [f32],
) {
    let hd = out.len();
    assert!(w.len() <= n_kv);
    assert!(w.is_empty() || v.len() >= (w.len() - 1) * stride + hd);
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() && hd % 8 == 0 {
        // SAFETY: AVX2/FMA/F16C were detected; the lengths were checked above.
        unsafe { x86::weighted_sum_f16(order, w, v, stride, n_kv, out) };
        return;
    }
    weighted_sum_f16_ref(order, w, v, stride, n_kv, out)
}

/// [`weighted_sum_f16`] in plain Rust.
pub fn weighted_sum_f16_ref(
    order: Order,
    w: &[f32],
    v: &[u16],
    stride: usize,
    n_kv: usize,
    out: &mut [f32],
) {
    let hd = out.len();
    let lanes = match order {
        Order::TinyBlas => 16,
        Order::VecDot => 64,
    };
    // The positions the SIMD loop covers; VecDot adds the rest in f64.
    let np = match order {
        Order::TinyBlas => w.len(),
        Order::VecDot => (n_kv & !63).min(w.len()),
    };
    let mut acc = vec![0f32; lanes * hd];
    for (p, &wp) in w[..np].iter().enumerate() {
        let row = &v[p * stride..p * stride + hd];
        let a = &mut acc[(p % lanes) * hd..(p % lanes + 1) * hd];
        for (x, &b) in a.iter_mut().zip(row) {
            *x = f16(b).mul_add(wp, *x);
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        match order {
            Order::TinyBlas => {
                let mut l = [0f32; 16];
                for (j, x) in l.iter_mut().enumerate() {
                    *x = acc[j * hd + d];
                }
                *o = reduce16(&l);
            }
            Order::VecDot => {
                let mut a = [[0f32; 16]; 4];
                for (j, aj) in a.iter_mut().enumerate() {
                    for (l, x) in aj.iter_mut().enumerate() {
                        *x = acc[(j * 16 + l) * hd + d];
                    }
                }
                let mut s = vec_dot_reduce(&a);
                for (p, &wp) in w.iter().enumerate().skip(np) {
                    s += (f16(v[p * stride + d]) * wp) as f64;
                }
                *o = s as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Order;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8(k: &[u16], i: usize) -> __m256 {
        let b = &k[i..i + 8];
        // SAFETY: `b` holds 8 u16 (16 bytes).
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn loadf(q: &[f32], i: usize) -> __m256 {
        let b = &q[i..i + 8];
        // SAFETY: `b` holds 8 f32.
        unsafe { _mm256_loadu_ps(b.as_ptr()) }
    }

    /// The 8-lane part of [`super::reduce16`]: `(t[i] + t[i + 4])`, then
    /// `(0 + 2) + (1 + 3)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 16 lanes held as (lanes 0..8, lanes 8..16), reduced as GCC's
    /// `_mm512_reduce_add_ps`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce16(lo: __m256, hi: __m256) -> f32 {
        hsum8(_mm256_add_ps(lo, hi))
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `k.len() >= q.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(order: Order, q: &[f32], k: &[u16]) -> f32 {
        let n = q.len();
        match order {
            Order::TinyBlas => {
                assert!(n % 16 == 0, "tinyBLAS needs a multiple of 16 values");
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for i in (0..n).step_by(16) {
                    lo = _mm256_fmadd_ps(load8(k, i), loadf(q, i), lo);
                    hi = _mm256_fmadd_ps(load8(k, i + 8), loadf(q, i + 8), hi);
                }
                reduce16(lo, hi)
            }
            Order::VecDot => {
                let np = n & !63;
                let mut a = [_mm256_setzero_ps(); 8];
                for i in (0..np).step_by(64) {
                    for (h, x) in a.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(load8(k, i + h * 8), loadf(q, i + h * 8), *x);
                    }
                }
                // a[2j] / a[2j + 1]: accumulator j, lanes 0..8 / 8..16.
                let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
                let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
                let mut s = reduce16(lo, hi) as f64;
                for i in np..n {
                    s += (half::f16::from_bits(k[i]).to_f32() * q[i]) as f64;
                }
                s as f32
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `out.len()` a multiple of 8;
    /// `v` long enough for `w.len()` rows of `stride`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum_f16(
        order: Order,
        w: &[f32],
        v: &[u16],
        stride: usize,
        n_kv: usize,
        out: &mut [f32],
    ) {
        let hd = out.len();
        let nv = hd / 8;
        let lanes = match order {
            Order::TinyBlas => 16,
            Order::VecDot => 64,
        };
        let np = match order {
            Order::TinyBlas => w.len(),
            Order::VecDot => (n_kv & !63).min(w.len()),
        };
        let mut acc = vec![_mm256_setzero_ps(); lanes * nv];
        for (p, &wp) in w[..np].iter().enumerate() {
            let wv = _mm256_set1_ps(wp);
            let a = &mut acc[(p % lanes) * nv..(p % lanes + 1) * nv];
            for (c, x) in a.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(load8(v, p * stride + c * 8), wv, *x);
            }
        }
        let at = |lane: usize, c: usize| acc[lane * nv + c];
        for c in 0..nv {
            let r = match order {
                Order::TinyBlas => {
                    // reduce16 across the lanes, 8 outputs at a time.
                    let mut t = [_mm256_setzero_ps(); 8];
                    for (i, x) in t.iter_mut().enumerate() {
                        *x = _mm256_add_ps(at(i, c), at(i + 8, c));
                    }
                    let u: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t[i], t[i + 4]));
                    _mm256_add_ps(_mm256_add_ps(u[0], u[2]), _mm256_add_ps(u[1], u[3]))
                }
                Order::VecDot => {
                    // Lane l of accumulator j is position j * 16 + l (mod 64).
                    let mut x = [_mm256_setzero_ps(); 16];
                    for (l, xl) in x.iter_mut().enumerate() {
                        *xl = _mm256_add_ps(
                            _mm256_add_ps(at(l, c), at(32 + l, c)),
                            _mm256_add_ps(at(16 + l, c), at(48 + l, c)),
                        );
                    }
                    let mut t = [_mm256_setzero_ps(); 8];
                    for (i, y) in t.iter_mut().enumerate() {
                        *y = _mm256_add_ps(x[i], x[i + 8]);
                    }
                    let u: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t[i], t[i + 4]));
                    _mm256_add_ps(_mm256_add_ps(u[0], u[2]), _mm256_add_ps(u[1], u[3]))
                }
            };
            let o = &mut out[c * 8..c * 8 + 8];
            _mm256_storeu_ps(o.as_mut_ptr(), r);
            if order == Order::VecDot {
                for (d, od) in o.iter_mut().enumerate() {
                    let mut s = *od as f64;
                    for (p, &wp) in w.iter().enumerate().skip(np) {
                        let b = half::f16::from_bits(v[p * stride + c * 8 + d]).to_f32();
                        s += (b * wp) as f64;
                    }
                    *od = s as f32;
                }
            }
        }
    }
}
