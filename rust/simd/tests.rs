//! Every kernel (portable and dispatched) against dequantize-then-f32-dot on
//! random blocks of every type.

use super::*;
use crate::quants::ALL_TYPES;

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Byte offsets of the f16 scale fields in one block of `qtype`.
fn f16_fields(qtype: QType) -> &'static [usize] {
    match qtype {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::IQ4_NL | QType::IQ4_XS => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random weights of `qtype`: random bytes with sane f16 scales, or random
/// floats for the float types.
fn random_weights(qtype: QType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n = rows * cols;
    match qtype {
        QType::F32 | QType::F16 | QType::BF16 => {
            let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
            let mut out = vec![0u8; crate::quants::quantized_size(qtype, rows, cols).unwrap()];
            crate::quants::quantize(qtype, &x, cols, None, &mut out).unwrap();
            out
        }
        _ => {
            let size = crate::quants::quantized_size(qtype, rows, cols).unwrap();
            let mut out: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            for block in out.chunks_exact_mut(qtype.type_size()) {
                for &off in f16_fields(qtype) {
                    let v = half::f16::from_f32(rng.uniform() * 0.05);
                    block[off..off + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            out
        }
    }
}

fn reference(qtype: QType, w: &[u8], rows: usize, cols: usize, acts: &Acts) -> Vec<f64> {
    let mut wf = vec![0f32; rows * cols];
    crate::quants::dequantize(qtype, w, cols, &mut wf).unwrap();
    // The activations as the kernels see them.
    let xs: Vec<f32> = match act_kind(qtype) {
        ActKind::Q8 => acts
            .q8()
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
            .collect(),
        ActKind::Q8K => acts
            .q8k()
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
            .collect(),
        kind => acts.floats(kind).to_vec(),
    };
    let mut out = vec![0f64; acts.ntok * rows];
    for t in 0..acts.ntok {
        for r in 0..rows {
            out[t * rows + r] = (0..cols)
                .map(|c| wf[r * cols + c] as f64 * xs[t * cols + c] as f64)
                .sum();
        }
    }
    out
}

fn check_type(qtype: QType, ntok: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (qtype as u64) << 8 ^ ntok as u64);
    let (rows, cols) = (7, 512);
    let w = random_weights(qtype, rows, cols, &mut rng);
    let x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 3.0).collect();
    let acts = Acts::new(&x, cols).unwrap();
    acts.prepare(act_kind(qtype)).unwrap();
    let view = WeightView {
        qtype,
        bytes: &w,
        rows,
        cols,
    };
    let want = reference(qtype, &w, rows, cols, &acts);
    let mut wf = vec![0f32; rows * cols];
    crate::quants::dequantize(qtype, &w, cols, &mut wf).unwrap();
    let scale: f64 = wf.iter().map(|v| v.abs() as f64).sum::<f64>() / rows as f64 * 3.0;
    assert!(
        scale > 0.0,
        "{}: dequantized weights are all zero",
        qtype.name()
    );
    let mut portable = vec![0f32; ntok * rows];
    matmul_portable(&view, &acts, &mut portable).unwrap();
    for isa in available_isas() {
        let mut got = vec![0f32; ntok * rows];
        matmul_isa(&view, &acts, &mut got, isa).unwrap();
        for (i, ((g, e), p)) in got.iter().zip(&want).zip(&portable).enumerate() {
            let err = (*g as f64 - e).abs();
            assert!(
                err <= 1e-5 * scale + 1e-4 * e.abs(),
                "{} ({}, ntok {ntok}): output {i}: got {g}, want {e}",
                qtype.name(),
                isa.name(),
            );
            // Same integers as the portable kernel: only float rounding differs.
            let dp = (*g as f64 - *p as f64).abs();
            assert!(
                dp <= 2e-6 * scale + 1e-5 * e.abs(),
                "{} ({}, ntok {ntok}): output {i}: got {g}, portable {p}",
                qtype.name(),
                isa.name(),
            );
        }
    }
}

#[test]
fn kernels_match_dequantize_then_dot_for_every_type_and_tier() {
    for qtype in ALL_TYPES {
        for ntok in [1, 3, 4, 9] {
            check_type(qtype, ntok);
        }
    }
}

#[test]
fn q8_activations_follow_ggml() {
    let mut rng = Rng(7);
    let mut x: Vec<f32> = (0..256).map(|_| rng.uniform()).collect();
    // A tie: 0.5 of a step rounds to even, and a block of zeros.
    x[1] = x[0].abs().max(1.0);
    x[0] = -x[1];
    x[2] = x[1] / 127.0 * 2.5;
    for v in &mut x[224..256] {
        *v = 0.0;
    }
    let acts = Acts::new(&x, 256).unwrap();
    for (b, xs) in acts.q8().iter().zip(x.chunks_exact(32)) {
        let s: i32 = b.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(s, b.sum[0] as i32 + b.sum[1] as i32);
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        assert_eq!(b.d, half::f16::from_f32(d).to_f32());
        assert_eq!(b.dsum, half::f16::from_f32(d * s as f32).to_f32());
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in b.qs.iter().zip(xs) {
            assert_eq!(*q as f32, (v * id).round_ties_even());
        }
    }
    assert_eq!(acts.q8()[0].qs[2], 2, "2.5 rounds to even");
    let k = &acts.q8k()[0];
    let (amax, max) = x.iter().fold((0f32, 0f32), |(a, m), &v| {
        if v.abs() > a {
            (v.abs(), v)
        } else {
            (a, m)
        }
    });
    assert!(amax > 0.0);
    let iscale = -127.0 / max;
    assert_eq!(k.d, 1.0 / iscale);
    for (j, (q, v)) in k.qs.iter().zip(&x).enumerate() {
        assert_eq!(
            *q as f32,
            (iscale * v).round_ties_even().min(127.0),
            "value {j}"
        );
    }
    for (j, s) in k.bsums.iter().enumerate() {
        let want: i32 = k.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        assert_eq!(*s as i32, want);
    }
    let h = acts.f16();
    assert_eq!(h[3], half::f16::from_f32(x[3]).to_f32());
}

#[test]
fn attention_pieces_match_scalar() {
    let mut rng = Rng(11);
    for n in [64, 67, 128] {
        let q: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let k: Vec<u16> = (0..n)
            .map(|_| half::f16::from_f32(rng.uniform()).to_bits())
            .collect();
        let want: f64 = q
            .iter()
            .zip(&k)
            .map(|(&a, &b)| a as f64 * half::f16::from_bits(b).to_f64())
            .sum();
        assert!((dot_f32_f16(&q, &k) as f64 - want).abs() < 1e-5);
        let mut o = q.clone();
        axpy_f16(&mut o, 0.5, &k);
        for ((o, a), b) in o.iter().zip(&q).zip(&k) {
            assert!((o - (a + 0.5 * half::f16::from_bits(*b).to_f32())).abs() < 1e-6);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let x = vec![0f32; 64];
    let acts = Acts::new(&x, 32).unwrap();
    let w = vec![0u8; 10];
    let view = WeightView {
        qtype: QType::Q4_0,
        bytes: &w,
        rows: 1,
        cols: 32,
    };
    let mut out = vec![0f32; 2];
    assert!(matmul(&view, &acts, &mut out).is_err());
    assert!(Acts::new(&x, 48).is_err());
    assert!(Acts::new(&x, 32).unwrap().prepare(ActKind::Q8K).is_err());
}

#[test]
fn attention_orders_match_reference() {
    use super::attn::{dot_f16, dot_f16_ref, weighted_sum_f16, weighted_sum_f16_ref, Order};
    let mut rng = Rng(0x5eed_1234);
    let to16 = |x: f32| half::f16::from_f32(x).to_bits();
    for &hd in &[16usize, 64, 80, 128] {
        let q: Vec<f32> = (0..hd)
            .map(|_| half::f16::from_f32(rng.uniform() * 4.0).to_f32())
            .collect();
        let k: Vec<u16> = (0..hd).map(|_| to16(rng.uniform() * 3.0)).collect();
        let exact: f64 = q
            .iter()
            .zip(&k)
            .map(|(&a, &b)| a as f64 * half::f16::from_bits(b).to_f64())
            .sum();
        for order in [Order::TinyBlas, Order::VecDot] {
            let r = dot_f16_ref(order, &q, &k);
            assert!((r as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()));
            // The dispatched kernel follows the reference bit for bit.
            assert_eq!(
                dot_f16(order, &q, &k).to_bits(),
                r.to_bits(),
                "{order:?} hd {hd}"
            );
        }
        // Weighted sums over positions: strided rows, a padded KV length.
        let stride = hd * 3;
        for &(n, n_kv) in &[(1usize, 256usize), (37, 256), (100, 100), (300, 512)] {
            let v: Vec<u16> = (0..n * stride).map(|_| to16(rng.uniform())).collect();
            let w: Vec<f32> = (0..n)
                .map(|_| half::f16::from_f32(rng.uniform().abs() / n as f32).to_f32())
                .collect();
            for order in [Order::TinyBlas, Order::VecDot] {
                let mut want = vec![0f32; hd];
                weighted_sum_f16_ref(order, &w, &v, stride, n_kv, &mut want);
                let mut got = vec![0f32; hd];
                weighted_sum_f16(order, &w, &v, stride, n_kv, &mut got);
                for d in 0..hd {
                    let exact: f64 = (0..n)
                        .map(|p| w[p] as f64 * half::f16::from_bits(v[p * stride + d]).to_f64())
                        .sum();
                    assert!((want[d] as f64 - exact).abs() < 1e-5, "{order:?} {d}");
                    assert_eq!(got[d].to_bits(), want[d].to_bits(), "{order:?} n {n} d {d}");
                }
            }
        }
    }
}

/// `out[t * rows + r]` from a reference that computes row r for every token.
fn per_row_reference(rows: usize, ntok: usize, mut row: impl FnMut(usize, &mut [f32])) -> Vec<f32> {
    let mut want = vec![0f32; ntok * rows];
    let mut o = vec![0f32; ntok];
    for r in 0..rows {
        row(r, &mut o);
        for (t, v) in o.iter().enumerate() {
            want[t * rows + r] = *v;
        }
    }
    want
}

/// `want` (an order-following reference) is the plain dot product up to
/// rounding, and the x86 tiers reproduce it bit for bit.
fn assert_reference_and_tiers(w: &WeightView, acts: &Acts, want: &[f32], what: &str) {
    let mut plain = vec![0f32; want.len()];
    matmul_portable(w, acts, &mut plain).unwrap();
    for (a, b) in want.iter().zip(&plain) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: {a} {b}");
    }
    for isa in available_isas() {
        if matches!(isa, Isa::Avx2 | Isa::Avx512) {
            let mut got = vec![0f32; want.len()];
            matmul_isa(w, acts, &mut got, isa).unwrap();
            let same = got
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what} {isa:?}");
        }
    }
}

#[test]
fn q4_0_and_iq4_nl_repacked_order_matches_reference() {
    for qtype in [QType::Q4_0, QType::IQ4_NL] {
        check_nib32_repacked(qtype);
    }
}

fn check_nib32_repacked(qtype: QType) {
    let mut rng = Rng(0xabcd_0042 ^ qtype as u64);
    for &(rows, cols, ntok) in &[
        (8usize, 32usize, 1usize),
        (16, 288, 3),
        (8, 512, 9),
        (24, 1536, 4),
        // Many groups of eight rows (several tasks), token tiles of 8, 4 and 1.
        (136, 96, 13),
        (264, 64, 1),
        (40, 160, 2),
    ] {
        let bytes = random_weights(qtype, rows, cols, &mut rng);
        let x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 2.0).collect();
        let acts = Acts::new(&x, cols).unwrap();
        let w = WeightView {
            qtype,
            bytes: &bytes,
            rows,
            cols,
        };
        let per_row = cols / 32;
        let want = per_row_reference(rows, ntok, |r, o| {
            let rb = &bytes[r * per_row * 18..(r + 1) * per_row * 18];
            if qtype == QType::Q4_0 {
                let blocks: Vec<legacy::BlockQ4_0> = bytemuck::pod_collect_to_vec(rb);
                portable::q4_0_seq(&blocks, acts.q8(), o);
            } else {
                let blocks: Vec<iq4::BlockIQ4NL> = bytemuck::pod_collect_to_vec(rb);
                portable::iq4_nl_seq(&blocks, acts.q8(), o);
            }
        });
        assert!(repacked_by_ggml(&w));
        assert_reference_and_tiers(
            &w,
            &acts,
            &want,
            &format!("{qtype:?} {rows}x{cols} ntok {ntok}"),
        );
    }
}

/// llama.cpp's order of an F32 / F16 weight row times one token, in plain
/// Rust: tinyBLAS (16 lanes, reduce tree) when the batch has two or more
/// tokens and `cols % 16 == 0`, else `ggml_vec_dot_f32` / `_f16`.
fn ggml_float_dot_ref(f16_weights: bool, w: &[f32], x: &[f32], ntok: usize) -> f32 {
    let cols = w.len();
    if ntok >= 2 && cols % 16 == 0 {
        let mut acc = [0f32; 16];
        for (wc, xc) in w.chunks_exact(16).zip(x.chunks_exact(16)) {
            for j in 0..16 {
                acc[j] = wc[j].mul_add(xc[j], acc[j]);
            }
        }
        return super::attn::reduce16(&acc);
    }
    let np = cols & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (a, accj) in acc.iter_mut().enumerate() {
            for (l, v) in accj.iter_mut().enumerate() {
                *v = w[i + a * 16 + l].mul_add(x[i + a * 16 + l], *v);
            }
        }
    }
    let mut t = [0f32; 16];
    for l in 0..16 {
        t[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let r = super::attn::reduce16(&t);
    if f16_weights {
        let mut s = r as f64;
        for i in np..cols {
            s += (w[i] * x[i]) as f64;
        }
        s as f32
    } else {
        let mut s = r;
        for i in np..cols {
            s = w[i].mul_add(x[i], s);
        }
        s
    }
}

#[test]
fn f32_and_f16_weights_follow_ggml_order() {
    let mut rng = Rng(0x5eed_f32f_0016);
    for qtype in [QType::F32, QType::F16] {
        for &(rows, cols, ntok) in &[
            (3usize, 576usize, 1usize),
            (3, 576, 2),
            (2, 1536, 7),
            (2, 100, 1),
            (2, 100, 5), // cols % 16 != 0: vec_dot for every token
            (1, 48, 3),
            // an even row count: two rows per pass (one token, a batch, tails)
            (4, 576, 2),
            (6, 576, 9),
            (8, 64, 1),
        ] {
            let bytes = random_weights(qtype, rows, cols, &mut rng);
            let x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 2.0).collect();
            let acts = Acts::new(&x, cols).unwrap();
            acts.prepare(act_kind(qtype)).unwrap();
            let w = WeightView {
                qtype,
                bytes: &bytes,
                rows,
                cols,
            };
            let mut wf = vec![0f32; rows * cols];
            crate::quants::dequantize(qtype, &bytes, cols, &mut wf).unwrap();
            let xs = acts.floats(act_kind(qtype));
            for isa in available_isas() {
                if !matches!(isa, Isa::Avx2 | Isa::Avx512) {
                    continue;
                }
                let mut got = vec![0f32; ntok * rows];
                matmul_isa(&w, &acts, &mut got, isa).unwrap();
                for t in 0..ntok {
                    for r in 0..rows {
                        let want = ggml_float_dot_ref(
                            qtype == QType::F16,
                            &wf[r * cols..(r + 1) * cols],
                            &xs[t * cols..(t + 1) * cols],
                            ntok,
                        );
                        let g = got[t * rows + r];
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{} {isa:?} {rows}x{cols} ntok {ntok}: token {t} row {r}: {g} vs {want}",
                            qtype.name()
                        );
                    }
                }
            }
        }
    }
}

/// Random activations with, in token 0 and the last token, both `+amax` and
/// `-amax` in the first super-block (where `quantize_row_q8_K` and
/// `ggml_quantize_mat_q8_K_4x8` pick different signs).
fn acts_with_ties(ntok: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 2.0).collect();
    for t in [0, ntok - 1] {
        x[t * cols] = -2.5;
        x[t * cols + 7] = 2.5;
    }
    x
}

#[test]
fn q8k_x4_activations_follow_ggml_quantize_mat() {
    let mut rng = Rng(0x0123_4567);
    let x = acts_with_ties(5, 512, &mut rng);
    let acts = Acts::new(&x, 512).unwrap();
    let (r, g) = (acts.q8k(), acts.q8k_x4());
    // The row quantization takes the first value of largest magnitude (-2.5),
    // the 4x8 one +2.5 because it occurs.
    assert_eq!(r[0].d, 1.0 / (127.0 / 2.5));
    assert_eq!(g[0].d, 1.0 / (-127.0 / 2.5));
    assert_eq!(g[0].qs[0], 127);
    assert_eq!(g[0].qs[7], -127);
    for (i, (a, b)) in r.iter().zip(g).enumerate() {
        let tok = i / 2;
        let tie = i % 2 == 0 && (tok == 0 || tok == 4);
        // Token 4 is past the last whole group of four: row-quantized.
        if tie && tok < 4 {
            assert_eq!(a.d, -b.d);
            assert!(a.qs.iter().zip(&b.qs).all(|(p, q)| *p == -*q));
            assert!(a.bsums.iter().zip(&b.bsums).all(|(p, q)| *p == -*q));
        } else {
            assert_eq!((a.d, a.qs, a.bsums), (b.d, b.qs, b.bsums), "block {i}");
        }
    }
}

#[test]
fn q4_k_repacked_order_matches_reference() {
    let mut rng = Rng(0xfeed_0044);
    for &(rows, cols, ntok) in &[
        (8usize, 256usize, 1usize),
        (16, 512, 3),
        (8, 1536, 9),
        (24, 768, 4),
        // Many groups of eight rows, token tiles of 8, 4 and 1 (gemm and gemv).
        (136, 256, 13),
        (40, 512, 2),
        (16, 256, 8),
    ] {
        let bytes = random_weights(QType::Q4_K, rows, cols, &mut rng);
        let x = acts_with_ties(ntok, cols, &mut rng);
        let acts = Acts::new(&x, cols).unwrap();
        let w = WeightView {
            qtype: QType::Q4_K,
            bytes: &bytes,
            rows,
            cols,
        };
        assert!(repacked_by_ggml(&w));
        let blocks: Vec<k_quants::BlockQ4K> = bytemuck::pod_collect_to_vec(&bytes);
        let per_row = cols / QK_K;
        let gemm = ntok - ntok % 4;
        let want = per_row_reference(rows, ntok, |r, o| {
            let row = &blocks[r * per_row..(r + 1) * per_row];
            portable::q4_k_repacked_seq(row, acts.q8k_x4(), gemm, o);
        });
        // The reference is the plain dot product up to rounding (and, for the
        // tied blocks, up to the activations' sign choice).
        assert_reference_and_tiers(&w, &acts, &want, &format!("Q4_K {rows}x{cols} ntok {ntok}"));
    }
}

#[test]
fn q6_k_orders_match_reference() {
    let mut rng = Rng(0xfeed_0066);
    for &(rows, cols, ntok) in &[
        (5usize, 256usize, 1usize),
        (16, 512, 3),
        (9, 1536, 7),
        // From 8 tokens the tiled order.
        (7, 768, 8),
        (33, 256, 13),
        (8, 512, 20),
    ] {
        let bytes = random_weights(QType::Q6_K, rows, cols, &mut rng);
        let x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 2.0).collect();
        let acts = Acts::new(&x, cols).unwrap();
        let w = WeightView {
            qtype: QType::Q6_K,
            bytes: &bytes,
            rows,
            cols,
        };
        let blocks: Vec<k_quants::BlockQ6K> = bytemuck::pod_collect_to_vec(&bytes);
        let per_row = cols / QK_K;
        let want = per_row_reference(rows, ntok, |r, o| {
            let row = &blocks[r * per_row..(r + 1) * per_row];
            if ntok >= TILED_MIN_TOKENS {
                portable::q6_k_tiled_seq(row, acts.q8k(), o);
            } else {
                portable::q6_k_lanes_seq(row, acts.q8k(), o);
            }
        });
        assert_reference_and_tiers(&w, &acts, &want, &format!("Q6_K {rows}x{cols} ntok {ntok}"));
    }
}

#[test]
fn two_row_q8_0_and_q5_0_kernels_give_the_one_row_bits() {
    let mut rng = Rng(0x2_0052_0080);
    for qtype in [QType::Q8_0, QType::Q5_0] {
        for &(rows, cols, ntok) in &[
            (2usize, 32usize, 1usize),
            (6, 576, 1),
            (4, 576, 2),
            (10, 1536, 9),
            (34, 96, 17),
        ] {
            let bytes = random_weights(qtype, rows, cols, &mut rng);
            let x: Vec<f32> = (0..ntok * cols).map(|_| rng.uniform() * 2.0).collect();
            let acts = Acts::new(&x, cols).unwrap();
            acts.prepare(ActKind::Q8).unwrap();
            let w = WeightView {
                qtype,
                bytes: &bytes,
                rows,
                cols,
            };
            for isa in available_isas() {
                if !matches!(isa, Isa::Avx2 | Isa::Avx512) {
                    continue;
                }
                let mut one_row = vec![0f32; ntok * rows];
                match qtype {
                    QType::Q8_0 => matmul_typed::<legacy::BlockQ8_0>(&w, &acts, &mut one_row, isa),
                    _ => matmul_typed::<legacy::BlockQ5_0>(&w, &acts, &mut one_row, isa),
                }
                let mut got = vec![0f32; ntok * rows];
                matmul_isa(&w, &acts, &mut got, isa).unwrap();
                let same = got
                    .iter()
                    .zip(&one_row)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} {isa:?} {rows}x{cols} ntok {ntok}", qtype.name());
            }
        }
    }
}
