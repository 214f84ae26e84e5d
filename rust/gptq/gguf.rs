//! GPTQ codes and grids into GGUF block bytes (the legacy 32-weight blocks,
//! layouts in `crate::quants::legacy`). The grids were fitted with f16-rounded
//! scales (see `grid::gguf_step`), so the file dequantizes to exactly
//! `GptqResult::dequant`.

use bytemuck::Zeroable;
use half::f16;

use super::grid::{is_k_quant, k_header_ranges, K_HEADER};
use super::{GptqResult, Grid, Step};
use crate::error::{Error, Result};
use crate::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::quants::{QType, QK_K};

fn nibbles(c: &[u8]) -> [u8; 16] {
    std::array::from_fn(|j| (c[j] & 0x0f) | ((c[j + 16] & 0x0f) << 4))
}

fn high_bits(c: &[u8]) -> [u8; 4] {
    let bits = c
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | ((((v >> 4) & 1) as u32) << j));
    bits.to_le_bytes()
}

fn push<B: bytemuck::Pod>(out: &mut Vec<u8>, b: B) {
    out.extend_from_slice(bytemuck::bytes_of(&b));
}

/// A K-quant super-block: the fitted header bytes where ggml keeps them, the codes packed
/// as ggml packs them (layouts in `crate::quants::k_quants`).
fn encode_k(q: QType, codes: &[u8], header: &[u8; K_HEADER], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + q.type_size(), 0);
    let b = &mut out[start..];
    let mut at = 0;
    for &(off, len) in k_header_ranges(q) {
        b[off..off + len].copy_from_slice(&header[at..at + len]);
        at += len;
    }
    // Two-bit planes as Q2_K's `qs`: weight 128g + 32s + l at bits 2s of byte 32g + l.
    let two_bit = |b: &mut [u8], off: usize, v: &dyn Fn(usize) -> u8| {
        for i in 0..QK_K {
            let (g, s, l) = (i / 128, (i / 32) % 4, i % 32);
            b[off + 32 * g + l] |= (v(i) & 3) << (2 * s);
        }
    };
    match q {
        QType::Q2_K => two_bit(b, 16, &|i| codes[i]),
        QType::Q3_K => {
            // hmask bit j/32 of byte j%32 holds the third bit; qs the low two.
            for (i, &c) in codes.iter().enumerate() {
                b[i % 32] |= ((c >> 2) & 1) << (i / 32);
            }
            two_bit(b, 32, &|i| codes[i]);
        }
        QType::Q4_K | QType::Q5_K => {
            let qs = if q == QType::Q4_K { 16 } else { 48 };
            for (g, chunk) in codes.chunks_exact(64).enumerate() {
                for l in 0..32 {
                    b[qs + 32 * g + l] = (chunk[l] & 0x0f) | ((chunk[l + 32] & 0x0f) << 4);
                    if q == QType::Q5_K {
                        b[16 + l] |= ((chunk[l] >> 4) & 1) << (2 * g);
                        b[16 + l] |= ((chunk[l + 32] >> 4) & 1) << (2 * g + 1);
                    }
                }
            }
        }
        QType::Q6_K => {
            for (i, &c) in codes.iter().enumerate() {
                let (g, s, l) = (i / 128, (i / 32) % 4, i % 32);
                b[64 * g + 32 * (s & 1) + l] |= (c & 0xF) << (4 * (s >> 1));
            }
            two_bit(b, 128, &|i| codes[i] >> 4);
        }
        _ => unreachable!("{q:?} is not a K-quant"),
    }
}

fn encode_block(q: QType, codes: &[u8], s: &Step, out: &mut Vec<u8>) {
    let d = f16::from_f32(s.scale);
    match q {
        QType::Q4_0 => push(
            out,
            BlockQ4_0 {
                d,
                qs: nibbles(codes),
            },
        ),
        QType::Q4_1 => push(
            out,
            BlockQ4_1 {
                d,
                m: f16::from_f32(s.min),
                qs: nibbles(codes),
            },
        ),
        QType::Q5_0 => push(
            out,
            BlockQ5_0 {
                d,
                qh: high_bits(codes),
                qs: nibbles(codes),
            },
        ),
        QType::Q5_1 => push(
            out,
            BlockQ5_1 {
                d,
                m: f16::from_f32(s.min),
                qh: high_bits(codes),
                qs: nibbles(codes),
            },
        ),
        q if is_k_quant(q) => encode_k(q, codes, &s.header, out),
        _ => {
            let mut b = BlockQ8_0::zeroed();
            b.d = d;
            for (dst, &c) in b.qs.iter_mut().zip(codes) {
                *dst = (c as i16 - 128) as i8;
            }
            push(out, b)
        }
    }
}

/// The GGUF bytes (rows × row_bytes) of a GPTQ result on a GGUF grid.
pub fn to_blocks(res: &GptqResult, grid: Grid) -> Result<Vec<u8>> {
    let Grid::Gguf(q) = grid else {
        return Err(Error::Value("GGUF blocks need a GGUF grid".into()));
    };
    let bs = q.block_size();
    let group = grid.block_size().unwrap_or(bs);
    if res.cols % bs != 0 || res.n_groups != res.cols / group {
        return Err(Error::Shape(format!(
            "{}: {} columns in {} groups do not form {bs}-weight blocks",
            q.name(),
            res.cols,
            res.n_groups
        )));
    }
    let mut out = Vec::with_capacity(res.rows * q.row_bytes(res.cols)?);
    for r in 0..res.rows {
        let crow = &res.codes[r * res.cols..(r + 1) * res.cols];
        for (g, codes) in crow.chunks_exact(bs).enumerate() {
            let first = r * res.n_groups + g * (bs / group);
            encode_block(q, codes, &res.steps[first], &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{gptq, rtn, GptqConfig};
    use super::*;
    use crate::quants;

    #[test]
    fn blocks_dequantize_to_gptq_values() {
        let (rows, cols) = (5, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let h: Vec<f32> = (0..cols * cols)
            .map(|i| {
                let (a, b) = (i / cols, i % cols);
                if a == b {
                    2.0
                } else {
                    0.3 / (1.0 + (a as f32 - b as f32).abs())
                }
            })
            .collect();
        for q in [
            QType::Q4_0,
            QType::Q4_1,
            QType::Q5_0,
            QType::Q5_1,
            QType::Q8_0,
            QType::Q2_K,
            QType::Q3_K,
            QType::Q4_K,
            QType::Q5_K,
            QType::Q6_K,
        ] {
            let cfg = GptqConfig {
                grid: Grid::Gguf(q),
                ..Default::default()
            };
            let weighted = GptqConfig {
                weighted_fit: true,
                ..cfg.clone()
            };
            let act_order = GptqConfig {
                act_order: true,
                ..weighted.clone()
            };
            for res in [
                gptq(&w, &h, rows, cols, &cfg).unwrap(),
                gptq(&w, &h, rows, cols, &weighted).unwrap(),
                gptq(&w, &h, rows, cols, &act_order).unwrap(),
                rtn(&w, rows, cols, &cfg).unwrap(),
            ] {
                let bytes = to_blocks(&res, cfg.grid).unwrap();
                let mut back = vec![0f32; rows * cols];
                quants::dequantize(q, &bytes, cols, &mut back).unwrap();
                assert_eq!(back, res.dequant, "{q:?}");
            }
        }
    }
}
