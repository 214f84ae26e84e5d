//! Quantization grids GPTQ rounds onto: the uniform min/max grid of the
//! reference `Quantizer` (gptq.py / AutoGPTQ), and the GGUF legacy 32-weight
//! block grids (ggml-quants.c `quantize_row_*_ref` scale rules), whose scales
//! GPTQ picks from the error-updated weights when its column loop reaches a
//! block.

use half::f16;

use crate::error::{Error, Result};
use crate::quants::k_quants::{scale_min_k4, BlockQ4K};
use crate::quants::{QType, QK_K};

/// The grid of one row within one group: codes `0..=maxq`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Step {
    pub scale: f32,
    /// Zero point in codes: value = `scale * (code - zero)`.
    pub zero: f32,
    /// Offset of affine GGUF types (Q4_1, Q5_1): value = `scale * code + min`.
    pub min: f32,
    pub maxq: f32,
    pub affine: bool,
    /// K-quants: the super-block's first 16 bytes (d, dmin, packed 6-bit scales), kept so
    /// the block can be written exactly as fitted.
    pub header: [u8; 16],
}

impl Step {
    /// Nearest grid point of `x`: (code, value). Rounds half to even, as
    /// `torch.round` in the reference.
    #[inline]
    pub fn quantize(&self, x: f32) -> (u8, f32) {
        if self.scale == 0.0 {
            let c = if self.affine { 0.0 } else { self.zero };
            let v = if self.affine { self.min } else { 0.0 };
            return (c as u8, v);
        }
        if self.affine {
            let c = ((x - self.min) / self.scale)
                .round_ties_even()
                .clamp(0.0, self.maxq);
            (c as u8, self.scale * c + self.min)
        } else {
            let c = ((x / self.scale).round_ties_even() + self.zero).clamp(0.0, self.maxq);
            (c as u8, self.scale * (c - self.zero))
        }
    }
}

/// What GPTQ rounds onto.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Grid {
    /// `bits`-bit min/max grid per row and group, symmetric or not.
    Uniform { bits: u32, sym: bool },
    /// A GGUF block type: groups are its 32-weight blocks along the row.
    Gguf(QType),
}

impl Grid {
    pub fn check(&self) -> Result<()> {
        match *self {
            Grid::Uniform { bits, .. } if (2..=8).contains(&bits) => Ok(()),
            Grid::Uniform { bits, .. } => {
                Err(Error::Value(format!("GPTQ bits must be 2..=8, got {bits}")))
            }
            Grid::Gguf(q) => match q {
                QType::Q4_0
                | QType::Q4_1
                | QType::Q5_0
                | QType::Q5_1
                | QType::Q8_0
                | QType::Q4_K => Ok(()),
                _ => Err(Error::Unsupported {
                    qtype: q.name(),
                    what: "GPTQ onto this GGUF grid is not implemented \
                           (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K)"
                        .into(),
                }),
            },
        }
    }

    /// The group size the grid imposes, if any.
    pub fn block_size(&self) -> Option<usize> {
        match self {
            Grid::Uniform { .. } => None,
            // Q4_K: 32-weight sub-blocks, each with its own scale and min.
            Grid::Gguf(QType::Q4_K) => Some(32),
            Grid::Gguf(q) => Some(q.block_size()),
        }
    }

    /// Columns whose grids are fitted together: a K-quant super-block shares `d` and
    /// `dmin`, so its sub-block grids are chosen at once when the loop reaches it.
    pub fn fit_span(&self, group: usize) -> usize {
        match self {
            Grid::Gguf(QType::Q4_K) => QK_K,
            _ => group,
        }
    }

    /// Fit the grids of one span of a row (`out`: one step per group in the span).
    pub fn fit_into(&self, x: &[f32], out: &mut [Step]) {
        match *self {
            Grid::Gguf(QType::Q4_K) => q4_k_steps(x, out),
            _ => {
                if let Some(s) = out.first_mut() {
                    *s = self.fit(x);
                }
            }
        }
    }

    /// The grid of one row's group, fitted to its current weights `x`.
    pub fn fit(&self, x: &[f32]) -> Step {
        match *self {
            Grid::Uniform { bits, sym } => uniform_step(x, bits, sym),
            Grid::Gguf(q) => gguf_step(q, x),
        }
    }
}

/// The reference `Quantizer.find_params` for one row (perchannel, no MSE search).
pub fn uniform_step(x: &[f32], bits: u32, sym: bool) -> Step {
    let maxq = ((1u32 << bits) - 1) as f32;
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (mut xmin, mut xmax) = (lo, hi);
    if sym {
        xmax = xmin.abs().max(xmax);
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let scale = (xmax - xmin) / maxq;
    let zero = if sym {
        (maxq + 1.0) / 2.0
    } else {
        (-xmin / scale).round_ties_even()
    };
    Step {
        scale,
        zero,
        min: 0.0,
        maxq,
        affine: false,
        header: [0; 16],
    }
}

/// Q4_K sub-block grids from llama.cpp's own Q4_K scale search on the current weights
/// (`crate::quants`), decoded as ggml dequantizes them: `d·sc·q − dmin·m`.
fn q4_k_steps(x: &[f32], out: &mut [Step]) {
    let mut bytes = [0u8; std::mem::size_of::<BlockQ4K>()];
    if x.len() != QK_K || crate::quants::quantize(QType::Q4_K, x, QK_K, None, &mut bytes).is_err() {
        out.fill(Step::default());
        return;
    }
    let b: BlockQ4K = bytemuck::pod_read_unaligned(&bytes);
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    let mut header = [0u8; 16];
    header.copy_from_slice(&bytes[..16]);
    for (j, st) in out.iter_mut().enumerate().take(QK_K / 32) {
        let (sc, m) = scale_min_k4(j, &b.scales);
        *st = Step {
            scale: d * sc as f32,
            zero: 0.0,
            min: -(dmin * m as f32),
            maxq: 15.0,
            affine: true,
            header,
        };
    }
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's scale rules for the legacy blocks, with the scale rounded to the f16
/// stored on disk so that the grid is exactly what the file dequantizes to.
pub fn gguf_step(q: QType, x: &[f32]) -> Step {
    let signed_absmax = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let symmetric = |half: f32, maxq: f32| Step {
        scale: f16_round(signed_absmax / -half),
        zero: half,
        min: 0.0,
        maxq,
        affine: false,
        header: [0; 16],
    };
    let affine = |maxq: f32| Step {
        scale: f16_round((hi - lo) / maxq),
        zero: 0.0,
        min: f16_round(lo),
        maxq,
        affine: true,
        header: [0; 16],
    };
    match q {
        QType::Q4_0 => symmetric(8.0, 15.0),
        QType::Q5_0 => symmetric(16.0, 31.0),
        QType::Q4_1 => affine(15.0),
        QType::Q5_1 => affine(31.0),
        // Q8_0: d = amax / 127, codes stored as i8 = code - 128.
        _ => Step {
            scale: f16_round(signed_absmax.abs() / 127.0),
            zero: 128.0,
            min: 0.0,
            maxq: 255.0,
            affine: false,
            header: [0; 16],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_asym_grid_covers_range() {
        let x = [-1.0f32, 0.5, 2.0, 3.0];
        let s = uniform_step(&x, 4, false);
        assert!((s.scale - 4.0 / 15.0).abs() < 1e-6);
        assert_eq!(s.zero, 4.0);
        let (c, v) = s.quantize(3.0);
        assert_eq!(c, 15);
        // The rounded zero point shifts the grid: the top code is 11 steps above zero.
        assert!((v - 11.0 * 4.0 / 15.0).abs() < 1e-5);
        let (c, _) = s.quantize(100.0);
        assert_eq!(c, 15);
    }

    #[test]
    fn uniform_sym_zero_is_mid() {
        let s = uniform_step(&[-2.0, 1.0], 4, true);
        assert_eq!(s.zero, 8.0);
        assert!((s.scale - 4.0 / 15.0).abs() < 1e-6);
    }

    #[test]
    fn all_zero_row_gets_unit_range() {
        let s = uniform_step(&[0.0; 8], 3, false);
        assert!((s.scale - 2.0 / 7.0).abs() < 1e-6);
    }

    #[test]
    fn gguf_q4_0_grid_matches_ggml_rule() {
        let mut x = [0.25f32; 32];
        x[3] = -2.0;
        let s = gguf_step(QType::Q4_0, &x);
        assert_eq!(s.scale, 0.25);
        assert_eq!(s.quantize(-2.0), (0, -2.0));
        let s = gguf_step(QType::Q4_0, &[0.0; 32]);
        assert_eq!(s.quantize(1.0), (8, 0.0));
    }
}
