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
    let q8 = with_block!(qtype, B => B::Q8_ACTS);
    // The activations as the kernels see them.
    let xs: Vec<f32> = if q8 {
        acts.q8
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
            .collect()
    } else {
        acts.x.to_vec()
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
    for portable in [true, false] {
        let mut got = vec![0f32; ntok * rows];
        if portable {
            matmul_portable(&view, &acts, &mut got).unwrap();
        } else {
            matmul(&view, &acts, &mut got).unwrap();
        }
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let err = (*g as f64 - e).abs();
            assert!(
                err <= 1e-5 * scale + 1e-4 * e.abs(),
                "{} ({}, ntok {ntok}): output {i}: got {g}, want {e}",
                qtype.name(),
                if portable { "portable" } else { isa() },
            );
        }
    }
}

#[test]
fn kernels_match_dequantize_then_dot_for_every_type() {
    for qtype in ALL_TYPES {
        for ntok in [1, 3, 4, 9] {
            check_type(qtype, ntok);
        }
    }
}

#[test]
fn activation_quantization_round_trips() {
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..256).map(|_| rng.uniform()).collect();
    let acts = Acts::new(&x, 256).unwrap();
    for (b, xs) in acts.q8.iter().zip(x.chunks_exact(32)) {
        let s: i32 = b.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(s, b.sum[0] as i32 + b.sum[1] as i32);
        for (q, v) in b.qs.iter().zip(xs) {
            // Half a step, plus the f16 rounding of the scale times at most 127.
            assert!((*q as f32 * b.d - v).abs() <= b.d * (0.5 + 127.0 / 2048.0) + 1e-6);
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
}
