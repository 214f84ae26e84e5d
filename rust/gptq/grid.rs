//! Quantization grids GPTQ rounds onto: the uniform min/max grid of the
//! reference `Quantizer` (gptq.py / AutoGPTQ), and the GGUF legacy 32-weight
//! block grids (ggml-quants.c `quantize_row_*_ref` scale rules), whose scales
//! GPTQ picks from the error-updated weights when its column loop reaches a
//! block.

use half::f16;

use crate::error::{Error, Result};
use crate::quants::k_quants::{scale_min_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
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
    /// K-quants: the super-block's bytes other than the codes (see [`k_header`]), kept so
    /// the block can be written exactly as fitted.
    pub header: [u8; K_HEADER],
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
                | QType::Q2_K
                | QType::Q3_K
                | QType::Q4_K
                | QType::Q5_K
                | QType::Q6_K => Ok(()),
                _ => Err(Error::Unsupported {
                    qtype: q.name(),
                    what: "GPTQ onto this GGUF grid is not implemented \
                           (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"
                        .into(),
                }),
            },
        }
    }

    /// The group size the grid imposes, if any.
    pub fn block_size(&self) -> Option<usize> {
        match self {
            Grid::Uniform { .. } => None,
            // K-quants: the sub-blocks, each with its own scale (and min).
            Grid::Gguf(QType::Q4_K | QType::Q5_K) => Some(32),
            Grid::Gguf(QType::Q2_K | QType::Q3_K | QType::Q6_K) => Some(16),
            Grid::Gguf(q) => Some(q.block_size()),
        }
    }

    /// Columns whose grids are fitted together: a K-quant super-block shares `d` and
    /// `dmin`, so its sub-block grids are chosen at once when the loop reaches it.
    pub fn fit_span(&self, group: usize) -> usize {
        match self {
            Grid::Gguf(q) if is_k_quant(*q) => QK_K,
            _ => group,
        }
    }

    /// Fit the grids of one span of a row (`out`: one step per group in the span).
    /// `weights` (an importance matrix: the Hessian diagonal of these columns) makes GGUF
    /// grids come from llama.cpp's weighted scale search, as `llama-quantize --imatrix`.
    pub fn fit_into(&self, x: &[f32], weights: Option<&[f32]>, out: &mut [Step]) {
        match (*self, weights) {
            (Grid::Gguf(q), _) if is_k_quant(q) => quantizer_steps(q, x, weights, out),
            (Grid::Gguf(q), Some(w)) if q != QType::Q8_0 => quantizer_steps(q, x, Some(w), out),
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
        header: [0; K_HEADER],
    }
}

/// The K-quant super-block types (256 weights, sub-block scales quantized once more).
pub fn is_k_quant(q: QType) -> bool {
    matches!(
        q,
        QType::Q2_K | QType::Q3_K | QType::Q4_K | QType::Q5_K | QType::Q6_K
    )
}

/// Bytes of a K-quant block that are not codes: Q2_K scales and d/dmin; Q3_K scales and d;
/// Q4_K/Q5_K d, dmin and scales; Q6_K scales and d.
pub const K_HEADER: usize = 20;

/// Where the non-code bytes of a `q` block lie: (offset, length) pairs in block order.
pub fn k_header_ranges(q: QType) -> &'static [(usize, usize)] {
    match q {
        QType::Q2_K => &[(0, 16), (80, 4)],
        QType::Q3_K => &[(96, 14)],
        QType::Q4_K | QType::Q5_K => &[(0, 16)],
        QType::Q6_K => &[(192, 18)],
        _ => &[],
    }
}

fn k_header(q: QType, bytes: &[u8]) -> [u8; K_HEADER] {
    let mut h = [0u8; K_HEADER];
    let mut at = 0;
    for &(off, len) in k_header_ranges(q) {
        h[at..at + len].copy_from_slice(&bytes[off..off + len]);
        at += len;
    }
    h
}

/// The signed 6-bit scale `j` of Q3_K (ggml's unpacking, offset removed).
fn q3_scale(j: usize, s: &[u8; 12]) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8).wrapping_sub(32)
}

/// Grids of one block of `q` from llama.cpp's own quantizer (`crate::quants`, byte-exact
/// with ggml) on the current weights `x`, with importance weights if given, decoded as
/// ggml dequantizes: K-quants `d·sc·q − dmin·m` or `d·sc·(q − offset)`, legacy `d·(q − o)`
/// or `d·q + m`.
fn quantizer_steps(q: QType, x: &[f32], w: Option<&[f32]>, out: &mut [Step]) {
    let mut bytes = [0u8; 256];
    let size = q.type_size();
    let ok = x.len() == q.block_size()
        && w.map_or(true, |w| w.len() == x.len())
        && crate::quants::quantize(q, x, x.len(), w, &mut bytes[..size]).is_ok();
    if !ok {
        out.fill(Step::default());
        return;
    }
    let bytes = &bytes[..size];
    let header = k_header(q, bytes);
    let sym = |scale: f32, zero: f32, maxq: f32| Step {
        scale,
        zero,
        min: 0.0,
        maxq,
        affine: false,
        header,
    };
    let affine = |scale: f32, min: f32, maxq: f32| Step {
        scale,
        zero: 0.0,
        min,
        maxq,
        affine: true,
        header,
    };
    let half = |o: usize| f16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f32();
    match q {
        QType::Q4_0 => out[0] = sym(half(0), 8.0, 15.0),
        QType::Q5_0 => out[0] = sym(half(0), 16.0, 31.0),
        QType::Q4_1 => out[0] = affine(half(0), half(2), 15.0),
        QType::Q5_1 => out[0] = affine(half(0), half(2), 31.0),
        QType::Q2_K => {
            let b: BlockQ2K = bytemuck::pod_read_unaligned(bytes);
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (j, st) in out.iter_mut().enumerate().take(16) {
                let (sc, m) = (b.scales[j] & 0xF, b.scales[j] >> 4);
                *st = affine(d * sc as f32, -(dmin * m as f32), 3.0);
            }
        }
        QType::Q3_K => {
            let b: BlockQ3K = bytemuck::pod_read_unaligned(bytes);
            let d = b.d.to_f32();
            for (j, st) in out.iter_mut().enumerate().take(16) {
                *st = sym(d * q3_scale(j, &b.scales) as f32, 4.0, 7.0);
            }
        }
        QType::Q4_K | QType::Q5_K => {
            let (d, dmin, scales, maxq) = if q == QType::Q4_K {
                let b: BlockQ4K = bytemuck::pod_read_unaligned(bytes);
                (b.d.to_f32(), b.dmin.to_f32(), b.scales, 15.0)
            } else {
                let b: BlockQ5K = bytemuck::pod_read_unaligned(bytes);
                (b.d.to_f32(), b.dmin.to_f32(), b.scales, 31.0)
            };
            for (j, st) in out.iter_mut().enumerate().take(8) {
                let (sc, m) = scale_min_k4(j, &scales);
                *st = affine(d * sc as f32, -(dmin * m as f32), maxq);
            }
        }
        QType::Q6_K => {
            let b: BlockQ6K = bytemuck::pod_read_unaligned(bytes);
            let d = b.d.to_f32();
            for (j, st) in out.iter_mut().enumerate().take(16) {
                *st = sym(d * b.scales[j] as f32, 32.0, 63.0);
            }
        }
        _ => out[0] = gguf_step(q, x),
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
        header: [0; K_HEADER],
    };
    let affine = |maxq: f32| Step {
        scale: f16_round((hi - lo) / maxq),
        zero: 0.0,
        min: f16_round(lo),
        maxq,
        affine: true,
        header: [0; K_HEADER],
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
            header: [0; K_HEADER],
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
