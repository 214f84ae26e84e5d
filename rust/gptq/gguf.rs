//! GPTQ codes and grids into GGUF block bytes (the legacy 32-weight blocks,
//! layouts in `crate::quants::legacy`). The grids were fitted with f16-rounded
//! scales (see `grid::gguf_step`), so the file dequantizes to exactly
//! `GptqResult::dequant`.

use bytemuck::Zeroable;
use half::f16;

use super::{GptqResult, Grid, Step};
use crate::error::{Error, Result};
use crate::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::quants::QType;

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
        QType::Q4_K => {
            // header: d, dmin and the packed scales as fitted; codes as ggml packs them
            // (64-weight chunks: low nibbles the first 32, high nibbles the next 32).
            out.extend_from_slice(&s.header);
            for chunk in codes.chunks_exact(64) {
                for l in 0..32 {
                    out.push((chunk[l] & 0x0f) | ((chunk[l + 32] & 0x0f) << 4));
                }
            }
        }
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
        ] {
            let cfg = GptqConfig {
                grid: Grid::Gguf(q),
                ..Default::default()
            };
            for res in [
                gptq(&w, &h, rows, cols, &cfg).unwrap(),
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
