//! Scale searches shared by the K-quants: our own Rust rendering of the helper
//! routines of ggml-quants.c (`nearest_int`, `make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `make_qkx3_quants`, `make_qp_quants`).
//!
//! The files ggml writes are defined by these searches, so every float
//! operation here keeps ggml's order and precision (f32, no fused
//! multiply-add, sums accumulated in index order). Integer conversions keep
//! C's truncating stores (`as u8` / `as i8`) so that even odd inputs give the
//! same bytes. Group sizes are const generics.
//!
//! The scalar functions are the plain twins; the K-quant kernels call the
//! `*_lanes` versions further down, which run the independent searches of all
//! sub-blocks of a super-block side by side in SIMD lanes (each lane still
//! summing in ggml's order), and a unit test holds the two equal bit for bit.

// Index loops mirror ggml's, which keeps the float order easy to check against it.
#![allow(clippy::needless_range_loop)]

/// Groups whose largest magnitude is below this are treated as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adding 1.5 * 2^23 moves the integer part into the
/// low mantissa bits, so this rounds half to even. Exact for |v| <= 4194303;
/// larger values give the same (meaningless) result as ggml.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// C's `x ? a : b` on a float: NaN counts as true.
#[inline(always)]
fn nonzero(v: f32) -> bool {
    v != 0.0
}

/// The value of largest magnitude (first one on ties) and that magnitude.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric codes with a least-squares scale (`make_qx_quants`). Codes land
/// in `l` offset by `nmax` (0..2*nmax). `rmse_type` 0 takes the absmax scale;
/// 1..4 weight the fit by x², 1, |x|, sqrt|x| unless `qw` is given; a negative
/// type returns after the first fit. Returns the scale.
pub fn make_qx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l: &mut [i8; N],
    rmse_type: i32,
    qw: Option<&[f32; N]>,
) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let codes = |iscale: f32, out: &mut [f32; N]| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = nearest_int(iscale * v).max(-nmax).min(nmax - 1) as f32;
        }
    };
    let store = |codes: &[f32; N], l: &mut [i8; N]| {
        for (o, &c) in l.iter_mut().zip(codes) {
            *o = (nmax + c as i32) as i8;
        }
    };
    let mut lf = [0f32; N];
    if rmse_type == 0 {
        codes(iscale, &mut lf);
        store(&lf, l);
        return 1.0 / iscale;
    }
    let return_early = rmse_type < 0;
    let rmse_type = rmse_type.abs();
    let w: [f32; N] = std::array::from_fn(|i| match qw {
        Some(q) => q[i],
        None => match rmse_type {
            1 => x[i] * x[i],
            2 => 1.0,
            3 => x[i].abs(),
            _ => x[i].abs().sqrt(),
        },
    });
    let wx: [f32; N] = std::array::from_fn(|i| w[i] * x[i]);
    let sums = |lf: &[f32; N]| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..N {
            sumlx += wx[i] * lf[i];
            suml2 += w[i] * lf[i] * lf[i];
        }
        (sumlx, suml2)
    };
    codes(iscale, &mut lf);
    store(&lf, l);
    let (sumlx, suml2) = sums(&lf);
    let mut scale = if nonzero(suml2) { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        codes(iscale, &mut lf);
        let (sumlx, suml2) = sums(&lf);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(&lf, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric codes refined one weight at a time (`make_q3_quants`), weights
/// x². Codes land in `l` offset by `nmax`. Returns the scale.
pub fn make_q3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l: &mut [i8; N],
    do_rmse: bool,
) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if !do_rmse {
        for (o, &v) in l.iter_mut().zip(x) {
            *o = (nearest_int(iscale * v).max(-nmax).min(nmax - 1) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).max(-nmax).min(nmax - 1);
        *o = q as i8;
        let w = v * v;
        let q = q as f32;
        sumlx += w * v * q;
        suml2 += w * q * q;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = *li as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).max(-nmax).min(nmax - 1);
                if new_l != *li as i32 {
                    let q = new_l as f32;
                    slx += w * v * q;
                    sl2 += w * q * q;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for o in l.iter_mut() {
        *o = (*o as i32 + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Affine codes 0..=nmax with a weighted least-squares scale and min
/// (`make_qkx2_quants` for `Min::Fixed`, `make_qkx3_quants` for
/// `Min::Tracked`). Returns `(scale, -min)`.
///
/// The two ggml routines differ only in the search step: qkx2 clamps the
/// rounded code, qkx3 clamps before rounding and maps non-positive (and NaN)
/// arguments to 0, which is the same on all finite in-range inputs.
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants<const N: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = if QKX3 { max <= min } else { max == min };
    if degenerate {
        l.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        l[i] = nearest_int(iscale * (x[i] - min)).max(0).min(nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0f32; N];
    let mut wl = [0f32; N];
    let mut err = [0f32; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        for i in 0..N {
            let v = iscale * (x[i] - min);
            let q = if QKX3 {
                if v > 0.0 {
                    nearest_int(v.min(nmaxf))
                } else {
                    0
                }
            } else {
                nearest_int(v).max(0).min(nmax)
            };
            laux[i] = q as f32;
            wl[i] = weights[i] * laux[i];
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..N {
            sum_l += wl[i];
            sum_l2 += wl[i] * laux[i];
            sum_xl += wl[i] * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            for i in 0..N {
                let diff = this_scale * laux[i] + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                err[i] = weights[i] * diff;
            }
            let mut cur_error = 0f32;
            for &e in &err {
                cur_error += e;
            }
            if cur_error < best_error {
                for (o, &q) in l.iter_mut().zip(&laux) {
                    *o = q as u8;
                }
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx2_quants`: see [`make_qkx_quants`].
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants::<N, false>(nmax, x, weights, l, rmin, rdelta, nstep, use_mad)
}

/// `make_qkx3_quants` with explicit weights: see [`make_qkx_quants`].
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants::<N, true>(nmax, x, weights, l, rmin, rdelta, nstep, use_mad)
}

/// Codes 0..=nmax for non-negative values (sub-block scales or mins) with a
/// weighted fit (`make_qp_quants`). Returns the scale.
pub fn make_qp_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l: &mut [u8; N],
    quant_weights: &[f32; N],
) -> f32 {
    let mut max = 0f32;
    for &v in x {
        // C's MAX(max, v): NaN-free inputs make the operand order immaterial.
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..N {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..N {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..N {
        let q = nearest_int(iscale * x[i]).min(nmax);
        // Stored as uint8_t (a negative code wraps), summed as the int.
        l[i] = q as u8;
        let w = quant_weights[i];
        let q = q as f32;
        sumlx += w * x[i] * q;
        suml2 += w * q * q;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = quant_weights[i];
            let cur = l[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    let q = new_l as f32;
                    slx += w * x[i] * q;
                    sl2 += w * q * q;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ------------------------------------------------------------ lane-parallel
//
// A super-block holds G independent groups (sub-blocks) of N values, and
// ggml searches each group on its own. The versions below run the G searches
// in lock-step, group g in lane g: the data is transposed so that the inner
// loops run over lanes, where every lane still adds its terms in ggml's index
// order. The compiler vectorizes across lanes, the results stay bit-identical
// to the scalar searches above (a test holds them equal), and per-group
// branches become per-lane selects.

/// `t[i][g] = x[N * g + i]`: group-major values to lane-major.
#[inline(always)]
fn transpose<const N: usize, const G: usize>(x: &[f32]) -> [[f32; G]; N] {
    let mut t = [[0f32; G]; N];
    for g in 0..G {
        for i in 0..N {
            t[i][g] = x[N * g + i];
        }
    }
    t
}

#[inline(always)]
fn select<const G: usize>(mask: &[bool; G], new: &[f32; G], old: &mut [f32; G]) {
    for g in 0..G {
        old[g] = if mask[g] { new[g] } else { old[g] };
    }
}

/// Codes and the two weighted sums of [`make_qx_quants_lanes`] for one inverse scale
/// per lane (a function, not a closure, so that it inlines into AVX2 builds).
#[inline(always)]
fn lanes_search<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    w: &[[f32; G]; N],
    wx: &[[f32; G]; N],
    iscale: &[f32; G],
    lf: &mut [[f32; G]; N],
) -> ([f32; G], [f32; G]) {
    for i in 0..N {
        for g in 0..G {
            lf[i][g] = nearest_int(iscale[g] * xt[i][g]).max(-nmax).min(nmax - 1) as f32;
        }
    }
    let (mut sumlx, mut suml2) = ([0f32; G], [0f32; G]);
    for i in 0..N {
        for g in 0..G {
            sumlx[g] += wx[i][g] * lf[i][g];
            suml2[g] += w[i][g] * lf[i][g] * lf[i][g];
        }
    }
    (sumlx, suml2)
}

/// The signed absmax and the absmax of every lane (first one on ties).
#[inline(always)]
fn lanes_signed_absmax<const N: usize, const G: usize>(xt: &[[f32; G]; N]) -> ([f32; G], [f32; G]) {
    let (mut max, mut amax) = ([0f32; G], [0f32; G]);
    for row in xt {
        for g in 0..G {
            let ax = row[g].abs();
            let take = ax > amax[g];
            amax[g] = if take { ax } else { amax[g] };
            max[g] = if take { row[g] } else { max[g] };
        }
    }
    (max, amax)
}

/// [`make_qx_quants`] with `rmse_type == 1` on G groups of N values
/// (`x[N * g + i]`), weights `qw` laid out the same way (x² when `None`).
/// Writes the codes of group g to `l[g]` and returns the scales. Inlined, so that
/// the callers' AVX2 builds (`dispatch!`) vectorize it 8 lanes wide.
#[inline(always)]
pub fn make_qx_quants_lanes<const N: usize, const G: usize>(
    nmax: i32,
    x: &[f32],
    l: &mut [[i8; N]; G],
    qw: Option<&[f32]>,
) -> [f32; G] {
    let xt = transpose::<N, G>(x);
    let w: [[f32; G]; N] = match qw {
        Some(q) => transpose::<N, G>(q),
        None => std::array::from_fn(|i| std::array::from_fn(|g| xt[i][g] * xt[i][g])),
    };
    let wx: [[f32; G]; N] = std::array::from_fn(|i| std::array::from_fn(|g| w[i][g] * xt[i][g]));
    let (max, amax) = lanes_signed_absmax(&xt);
    let nmaxf = nmax as f32;
    let search =
        |iscale: &[f32; G], lf: &mut [[f32; G]; N]| lanes_search(nmax, &xt, &w, &wx, iscale, lf);
    let iscale: [f32; G] = std::array::from_fn(|g| -nmaxf / max[g]);
    let mut best_l = [[0f32; G]; N];
    let (sumlx, suml2) = search(&iscale, &mut best_l);
    let mut scale: [f32; G] = std::array::from_fn(|g| {
        if nonzero(suml2[g]) {
            sumlx[g] / suml2[g]
        } else {
            0.0
        }
    });
    let mut best: [f32; G] = std::array::from_fn(|g| scale[g] * sumlx[g]);
    let mut lf = [[0f32; G]; N];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale: [f32; G] = std::array::from_fn(|g| -(nmaxf + 0.1 * is as f32) / max[g]);
        let (sumlx, suml2) = search(&iscale, &mut lf);
        let better: [bool; G] =
            std::array::from_fn(|g| (suml2[g] > 0.0) & (sumlx[g] * sumlx[g] > best[g] * suml2[g]));
        let new_scale: [f32; G] = std::array::from_fn(|g| sumlx[g] / suml2[g]);
        let new_best: [f32; G] = std::array::from_fn(|g| new_scale[g] * sumlx[g]);
        for i in 0..N {
            select(&better, &lf[i], &mut best_l[i]);
        }
        select(&better, &new_scale, &mut scale);
        select(&better, &new_best, &mut best);
    }
    for g in 0..G {
        let zero = amax[g] < GROUP_MAX_EPS;
        for i in 0..N {
            l[g][i] = if zero {
                0
            } else {
                (nmax + best_l[i][g] as i32) as i8
            };
        }
        if zero {
            scale[g] = 0.0;
        }
    }
    scale
}

/// [`make_q3_quants`] with `do_rmse` on G groups of N values.
pub fn make_q3_quants_lanes<const N: usize, const G: usize>(
    nmax: i32,
    x: &[f32],
    l: &mut [[i8; N]; G],
) -> [f32; G] {
    let xt = transpose::<N, G>(x);
    let (max, amax) = lanes_signed_absmax(&xt);
    let iscale: [f32; G] = std::array::from_fn(|g| -(nmax as f32) / max[g]);
    let w: [[f32; G]; N] = std::array::from_fn(|i| std::array::from_fn(|g| xt[i][g] * xt[i][g]));
    let mut lt = [[0f32; G]; N];
    let (mut sumlx, mut suml2) = ([0f32; G], [0f32; G]);
    for i in 0..N {
        for g in 0..G {
            let q = nearest_int(iscale[g] * xt[i][g]).max(-nmax).min(nmax - 1) as f32;
            lt[i][g] = q;
            sumlx[g] += w[i][g] * xt[i][g] * q;
            suml2[g] += w[i][g] * q * q;
        }
    }
    q3_refine(nmax, &xt, &w, &mut lt, &mut sumlx, &mut suml2);
    std::array::from_fn(|g| {
        let zero = amax[g] < GROUP_MAX_EPS;
        for i in 0..N {
            l[g][i] = if zero {
                0
            } else {
                (lt[i][g] as i32 + nmax) as i8
            };
        }
        if zero || suml2[g] <= 0.0 || suml2[g].is_nan() {
            0.0
        } else {
            sumlx[g] / suml2[g]
        }
    })
}

/// [`make_qkx2_quants`] (`QKX3 = false`) or [`make_qkx3_quants`] on G groups
/// of N values; `weights` laid out as `x`. Returns the scales and the
/// (negated) mins.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx_quants_lanes<const N: usize, const G: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [[u8; N]; G],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> ([f32; G], [f32; G]) {
    let xt = transpose::<N, G>(x);
    let w = transpose::<N, G>(weights);
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = w[0];
    let mut sum_x: [f32; G] = std::array::from_fn(|g| sum_w[g] * xt[0][g]);
    for i in 1..N {
        for g in 0..G {
            let v = xt[i][g];
            min[g] = if v < min[g] { v } else { min[g] };
            max[g] = if v > max[g] { v } else { max[g] };
            sum_w[g] += w[i][g];
            sum_x[g] += w[i][g] * v;
        }
    }
    for m in &mut min {
        *m = if *m > 0.0 { 0.0 } else { *m };
    }
    let degenerate: [bool; G] = std::array::from_fn(|g| {
        if QKX3 {
            max[g] <= min[g]
        } else {
            max[g] == min[g]
        }
    });
    let min0 = min;
    let nmaxf = nmax as f32;
    let iscale: [f32; G] = std::array::from_fn(|g| nmaxf / (max[g] - min[g]));
    let mut scale: [f32; G] = std::array::from_fn(|g| 1.0 / iscale[g]);
    let mut best_l = [[0f32; G]; N];
    let mut best_error = [0f32; G];
    let error_term = |diff: f32, w: f32| {
        let diff = if use_mad { diff.abs() } else { diff * diff };
        w * diff
    };
    for i in 0..N {
        for g in 0..G {
            let q = nearest_int(iscale[g] * (xt[i][g] - min[g]))
                .max(0)
                .min(nmax) as f32;
            best_l[i][g] = q;
            best_error[g] += error_term(scale[g] * q + min[g] - xt[i][g], w[i][g]);
        }
    }
    if nstep >= 1 {
        let mut laux = [[0f32; G]; N];
        for is in 0..=nstep {
            let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; G], [0f32; G], [0f32; G]);
            let iscale: [f32; G] =
                std::array::from_fn(|g| (rmin + rdelta * is as f32 + nmaxf) / (max[g] - min[g]));
            for i in 0..N {
                for g in 0..G {
                    let v = iscale[g] * (xt[i][g] - min[g]);
                    let q = if QKX3 {
                        // Both sides computed: a select, not a branch.
                        let r = nearest_int(if v < nmaxf { v } else { nmaxf });
                        if v > 0.0 {
                            r
                        } else {
                            0
                        }
                    } else {
                        nearest_int(v).max(0).min(nmax)
                    } as f32;
                    laux[i][g] = q;
                    let wl = w[i][g] * q;
                    sum_l[g] += wl;
                    sum_l2[g] += wl * q;
                    sum_xl[g] += wl * xt[i][g];
                }
            }
            let mut this_scale = [0f32; G];
            let mut this_min = [0f32; G];
            let mut fit = [false; G];
            for g in 0..G {
                let d = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g];
                fit[g] = d > 0.0;
                let s = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / d;
                let m = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / d;
                let clip = m > 0.0;
                this_min[g] = if clip { 0.0 } else { m };
                this_scale[g] = if clip { sum_xl[g] / sum_l2[g] } else { s };
            }
            if !fit.iter().any(|&f| f) {
                continue;
            }
            let mut cur_error = [0f32; G];
            for i in 0..N {
                for g in 0..G {
                    let diff = this_scale[g] * laux[i][g] + this_min[g] - xt[i][g];
                    cur_error[g] += error_term(diff, w[i][g]);
                }
            }
            let better: [bool; G] =
                std::array::from_fn(|g| fit[g] & (cur_error[g] < best_error[g]));
            for i in 0..N {
                select(&better, &laux[i], &mut best_l[i]);
            }
            select(&better, &cur_error, &mut best_error);
            select(&better, &this_scale, &mut scale);
            select(&better, &this_min, &mut min);
        }
    }
    let mut neg_min = [0f32; G];
    for g in 0..G {
        for i in 0..N {
            l[g][i] = if degenerate[g] { 0 } else { best_l[i][g] as u8 };
        }
        if degenerate[g] {
            scale[g] = 0.0;
            min[g] = min0[g];
        }
        neg_min[g] = -min[g];
    }
    (scale, neg_min)
}

/// The coordinate-descent passes of [`make_q3_quants`], lane-parallel.
///
/// A lane that made no change in a pass would make none in the next one
/// either (its state is unchanged), so running a set of lanes until none
/// changes is exact.
#[cfg(not(target_arch = "x86_64"))]
fn q3_refine<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    w: &[[f32; G]; N],
    lt: &mut [[f32; G]; N],
    sumlx: &mut [f32; G],
    suml2: &mut [f32; G],
) {
    q3_refine_portable(nmax, xt, w, lt, sumlx, suml2)
}

/// The portable passes (built everywhere so that x86 tests check it too).
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn q3_refine_portable<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    w: &[[f32; G]; N],
    lt: &mut [[f32; G]; N],
    sumlx: &mut [f32; G],
    suml2: &mut [f32; G],
) {
    for _ in 0..5 {
        let mut changed = [0u32; G];
        for i in 0..N {
            for g in 0..G {
                let (v, wi, cur) = (xt[i][g], w[i][g], lt[i][g]);
                let slx = sumlx[g] - wi * v * cur;
                let sl2 = suml2[g] - wi * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).max(-nmax).min(nmax - 1) as f32;
                let slx_new = slx + wi * v * new_l;
                let sl2_new = sl2 + wi * new_l * new_l;
                let take = (slx > 0.0)
                    & (new_l != cur)
                    & (sl2_new > 0.0)
                    & (slx_new * slx_new * suml2[g] > sumlx[g] * sumlx[g] * sl2_new);
                lt[i][g] = if take { new_l } else { cur };
                sumlx[g] = if take { slx_new } else { sumlx[g] };
                suml2[g] = if take { sl2_new } else { suml2[g] };
                changed[g] |= take as u32;
            }
        }
        if changed.iter().all(|&c| c == 0) {
            break;
        }
    }
}

/// SSE2 version of the passes (the compiler does not vectorize the portable
/// loop): four lanes per register. Same operations in the same order as the
/// scalar search.
#[cfg(target_arch = "x86_64")]
fn q3_refine<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    w: &[[f32; G]; N],
    lt: &mut [[f32; G]; N],
    sumlx: &mut [f32; G],
    suml2: &mut [f32; G],
) {
    use std::arch::x86_64::*;
    if G % 8 == 0 && super::legacy::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { q3_refine_avx2(nmax, xt, w, lt, sumlx, suml2) };
    }
    assert!(G % 4 == 0, "lanes come in fours");
    // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are
    // always available; every load and store is an unaligned access to four
    // floats at offset c < G of a [f32; G] array.
    unsafe {
        let magic = _mm_set1_ps(12_582_912.0);
        let mantissa = _mm_set1_epi32(0x007f_ffff);
        let offset = _mm_set1_epi32(0x0040_0000);
        let lo = _mm_set1_ps(-nmax as f32);
        let hi = _mm_set1_ps((nmax - 1) as f32);
        let zero = _mm_setzero_ps();
        let select =
            |m: __m128, a: __m128, b: __m128| _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b));
        // All groups of four advance together, one weight at a time, so that
        // their (long, serial) dependency chains overlap.
        let mut sx = [_mm_setzero_ps(); G];
        let mut s2 = [_mm_setzero_ps(); G];
        for k in 0..G / 4 {
            sx[k] = _mm_loadu_ps(sumlx.as_ptr().add(4 * k));
            s2[k] = _mm_loadu_ps(suml2.as_ptr().add(4 * k));
        }
        for _ in 0..5 {
            let mut changed = _mm_setzero_ps();
            for i in 0..N {
                for k in 0..G / 4 {
                    let c = 4 * k;
                    let v = _mm_loadu_ps(xt[i].as_ptr().add(c));
                    let wi = _mm_loadu_ps(w[i].as_ptr().add(c));
                    let cur = _mm_loadu_ps(lt[i].as_ptr().add(c));
                    let wv = _mm_mul_ps(wi, v);
                    let slx = _mm_sub_ps(sx[k], _mm_mul_ps(wv, cur));
                    let sl2 = _mm_sub_ps(s2[k], _mm_mul_ps(_mm_mul_ps(wi, cur), cur));
                    let r = _mm_div_ps(_mm_mul_ps(v, sl2), slx);
                    // nearest_int, then the clamp (exact in floats: the codes are small ints).
                    let bits = _mm_and_si128(_mm_castps_si128(_mm_add_ps(r, magic)), mantissa);
                    let q = _mm_cvtepi32_ps(_mm_sub_epi32(bits, offset));
                    let new_l = _mm_min_ps(_mm_max_ps(q, lo), hi);
                    let slx_new = _mm_add_ps(slx, _mm_mul_ps(wv, new_l));
                    let sl2_new = _mm_add_ps(sl2, _mm_mul_ps(_mm_mul_ps(wi, new_l), new_l));
                    let gain = _mm_cmpgt_ps(
                        _mm_mul_ps(_mm_mul_ps(slx_new, slx_new), s2[k]),
                        _mm_mul_ps(_mm_mul_ps(sx[k], sx[k]), sl2_new),
                    );
                    let take = _mm_and_ps(
                        _mm_and_ps(_mm_cmpgt_ps(slx, zero), _mm_cmpneq_ps(new_l, cur)),
                        _mm_and_ps(_mm_cmpgt_ps(sl2_new, zero), gain),
                    );
                    _mm_storeu_ps(lt[i].as_mut_ptr().add(c), select(take, new_l, cur));
                    sx[k] = select(take, slx_new, sx[k]);
                    s2[k] = select(take, sl2_new, s2[k]);
                    changed = _mm_or_ps(changed, take);
                }
            }
            if _mm_movemask_ps(changed) == 0 {
                break;
            }
        }
        for k in 0..G / 4 {
            _mm_storeu_ps(sumlx.as_mut_ptr().add(4 * k), sx[k]);
            _mm_storeu_ps(suml2.as_mut_ptr().add(4 * k), s2[k]);
        }
    }
}

/// [`q3_refine`] eight lanes per register (AVX2): the same operations in the same
/// order, so the same codes and sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q3_refine_avx2<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    w: &[[f32; G]; N],
    lt: &mut [[f32; G]; N],
    sumlx: &mut [f32; G],
    suml2: &mut [f32; G],
) {
    use std::arch::x86_64::*;
    assert!(G % 8 == 0, "lanes come in eights");
    let magic = _mm256_set1_ps(12_582_912.0);
    let mantissa = _mm256_set1_epi32(0x007f_ffff);
    let offset = _mm256_set1_epi32(0x0040_0000);
    let lo = _mm256_set1_ps(-nmax as f32);
    let hi = _mm256_set1_ps((nmax - 1) as f32);
    let zero = _mm256_setzero_ps();
    let mut sx = [_mm256_setzero_ps(); G];
    let mut s2 = [_mm256_setzero_ps(); G];
    for k in 0..G / 8 {
        sx[k] = _mm256_loadu_ps(sumlx.as_ptr().add(8 * k));
        s2[k] = _mm256_loadu_ps(suml2.as_ptr().add(8 * k));
    }
    for _ in 0..5 {
        let mut changed = _mm256_setzero_ps();
        for i in 0..N {
            for k in 0..G / 8 {
                let c = 8 * k;
                let v = _mm256_loadu_ps(xt[i].as_ptr().add(c));
                let wi = _mm256_loadu_ps(w[i].as_ptr().add(c));
                let cur = _mm256_loadu_ps(lt[i].as_ptr().add(c));
                let wv = _mm256_mul_ps(wi, v);
                let slx = _mm256_sub_ps(sx[k], _mm256_mul_ps(wv, cur));
                let sl2 = _mm256_sub_ps(s2[k], _mm256_mul_ps(_mm256_mul_ps(wi, cur), cur));
                let r = _mm256_div_ps(_mm256_mul_ps(v, sl2), slx);
                let bits = _mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(r, magic)), mantissa);
                let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(bits, offset));
                let new_l = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
                let slx_new = _mm256_add_ps(slx, _mm256_mul_ps(wv, new_l));
                let sl2_new = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wi, new_l), new_l));
                let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(_mm256_mul_ps(slx_new, slx_new), s2[k]),
                    _mm256_mul_ps(_mm256_mul_ps(sx[k], sx[k]), sl2_new),
                );
                let take = _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero),
                        _mm256_cmp_ps::<_CMP_NEQ_UQ>(new_l, cur),
                    ),
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sl2_new, zero), gain),
                );
                _mm256_storeu_ps(
                    lt[i].as_mut_ptr().add(c),
                    _mm256_blendv_ps(cur, new_l, take),
                );
                sx[k] = _mm256_blendv_ps(sx[k], slx_new, take);
                s2[k] = _mm256_blendv_ps(s2[k], sl2_new, take);
                changed = _mm256_or_ps(changed, take);
            }
        }
        if _mm256_movemask_ps(changed) == 0 {
            break;
        }
    }
    for k in 0..G / 8 {
        _mm256_storeu_ps(sumlx.as_mut_ptr().add(8 * k), sx[k]);
        _mm256_storeu_ps(suml2.as_mut_ptr().add(8 * k), s2[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3_refine_versions_agree() {
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for _ in 0..200 {
            let xt: [[f32; 16]; 16] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
            let w: [[f32; 16]; 16] = std::array::from_fn(|i| xt[i].map(|v| v * v));
            let lt: [[f32; 16]; 16] = std::array::from_fn(|_| {
                std::array::from_fn(|_| (next() * 8.0).round().clamp(-4.0, 3.0))
            });
            let mut sumlx = [0f32; 16];
            let mut suml2 = [0f32; 16];
            for i in 0..16 {
                for g in 0..16 {
                    sumlx[g] += w[i][g] * xt[i][g] * lt[i][g];
                    suml2[g] += w[i][g] * lt[i][g] * lt[i][g];
                }
            }
            let (mut l2, mut x2, mut s2) = (lt, sumlx, suml2);
            q3_refine_portable(4, &xt, &w, &mut l2, &mut x2, &mut s2);
            // Every SIMD width this machine has (AVX2, SSE2) against the portable loop.
            for path in crate::quants::legacy::all_levels() {
                let (mut l1, mut x1, mut s1) = (lt, sumlx, suml2);
                crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(Some(path)));
                q3_refine(4, &xt, &w, &mut l1, &mut x1, &mut s1);
                crate::quants::legacy::FORCE_LEVEL.with(|c| c.set(None));
                assert_eq!(l1, l2, "{path:?}");
                assert_eq!(x1.map(f32::to_bits), x2.map(f32::to_bits), "{path:?}");
                assert_eq!(s1.map(f32::to_bits), s2.map(f32::to_bits), "{path:?}");
            }
        }
    }
}
