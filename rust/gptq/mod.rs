//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate
//! Post-Training Quantization for Generative Pre-trained Transformers"),
//! following the reference `gptq.py` (IST-DASLab / AutoGPTQ):
//!
//! 1. dead columns (`H_ii == 0`) get `H_ii = 1` and zero weights;
//! 2. optional act-order: columns by descending `diag(H)`;
//! 3. damping `percdamp * mean(diag(H))`, then the upper Cholesky factor `U`
//!    of `H⁻¹` (see [`hessian::inverse_upper_cholesky`]);
//! 4. columns in lazy blocks (128 by default): each column is rounded, its
//!    error `(w - q) / U_ii` is fed forward to the block's later columns, and
//!    at the end of the block to all remaining columns with one GEMM.
//!
//! Rows are independent given `U`, so the in-block loop runs over rows in
//! parallel (rayon) and the trailing update is a faer matmul. Group grids
//! are fitted when the column loop reaches a group start, from the weights
//! as updated so far (the reference's behaviour for groups aligned with
//! blocks; here group starts always fall inside one block, see
//! [`effective_block_size`]).

pub mod gguf;
pub mod grid;
pub mod hessian;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{Error, Result};
pub use grid::{Grid, Step};

/// What to quantize onto and how (the reference's `fasterquant` arguments).
#[derive(Clone, Debug)]
pub struct GptqConfig {
    pub grid: Grid,
    /// Weights per group along the row; `None` for one grid per row.
    /// Ignored for GGUF grids (their block size is the group).
    pub group_size: Option<usize>,
    /// Process columns by descending Hessian diagonal (`desc_act`).
    pub act_order: bool,
    /// Fit all group grids from the original weights before the loop, so that
    /// groups stay contiguous in the original order under act-order.
    pub static_groups: bool,
    /// Damping as a fraction of the mean Hessian diagonal.
    pub percdamp: f32,
    /// Lazy-batch block size (128 in the paper).
    pub block_size: usize,
    /// GGUF grids: fit each block's scales with llama.cpp's importance-weighted search,
    /// the Hessian diagonal as the importance matrix (`llama-quantize --imatrix`).
    pub weighted_fit: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            grid: Grid::Uniform {
                bits: 4,
                sym: false,
            },
            group_size: Some(128),
            act_order: false,
            static_groups: false,
            percdamp: 0.01,
            block_size: 128,
            weighted_fit: false,
        }
    }
}

/// GPTQ's output, columns in the original order.
#[derive(Clone, Debug)]
pub struct GptqResult {
    pub rows: usize,
    pub cols: usize,
    /// Integer codes `0..=maxq`, rows × cols.
    pub codes: Vec<u8>,
    /// Grid per row and group, rows × n_groups.
    pub steps: Vec<Step>,
    pub n_groups: usize,
    /// Group of each input column.
    pub g_idx: Vec<i32>,
    /// Processing order (act-order), if any: `perm[p]` = original column.
    pub perm: Option<Vec<usize>>,
    /// Dequantized weights, rows × cols.
    pub dequant: Vec<f32>,
    /// The reference's loss: Σ (w - q)² / (2 U_ii²).
    pub loss: f64,
    /// Damping actually added to the diagonal.
    pub damp: f64,
    /// Number of dead columns.
    pub dead: usize,
}

/// The group size of `cfg` for a row of `cols` weights (`cols` for per-row).
pub fn group_size(cfg: &GptqConfig, cols: usize) -> usize {
    match (cfg.grid.block_size(), cfg.group_size) {
        (Some(b), _) => b,
        (None, Some(g)) if g > 0 => g,
        _ => cols.max(1),
    }
}

/// The lazy block size rounded up to a multiple of the group size, so a group
/// never straddles two blocks: its grid is then fitted from weights that have
/// received every earlier column's error.
pub fn effective_block_size(block: usize, group: usize) -> usize {
    let block = block.max(1);
    if group >= block {
        group
    } else {
        block.div_ceil(group) * group
    }
}

/// Run GPTQ on `w` (rows × cols, row-major: out × in features) with the
/// Hessian `h` (cols × cols, `2 XᵀX / n`).
pub fn gptq(
    w: &[f32],
    h: &[f32],
    rows: usize,
    cols: usize,
    cfg: &GptqConfig,
) -> Result<GptqResult> {
    cfg.grid.check()?;
    if w.len() != rows * cols {
        return Err(Error::Shape(format!(
            "weight has {} values, expected {rows}×{cols}",
            w.len()
        )));
    }
    if h.len() != cols * cols {
        return Err(Error::Shape(format!(
            "Hessian has {} values, expected {cols}×{cols}",
            h.len()
        )));
    }
    if !(cfg.percdamp >= 0.0 && cfg.percdamp.is_finite()) {
        return Err(Error::Value(format!(
            "percdamp must be >= 0, got {}",
            cfg.percdamp
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::Value(format!(
            "weight has a non-finite value at row {}, column {}",
            i / cols.max(1),
            i % cols.max(1)
        )));
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(Error::Value(format!(
            "Hessian has a non-finite value at ({}, {}); NaN or inf in the calibration activations?",
            i / cols.max(1),
            i % cols.max(1)
        )));
    }
    let gs = group_size(cfg, cols);
    let span = cfg.grid.fit_span(gs);
    if let Grid::Gguf(q) = cfg.grid {
        if cols % span != 0 {
            return Err(Error::Shape(format!(
                "{}: row length {cols} is not a multiple of the block size {span}",
                q.name()
            )));
        }
    }
    let n_groups = cols.div_ceil(gs).max(1);
    // Groups per fitted span (1 except for K-quant super-blocks).
    let per_span = span / gs;
    let per_row = cfg.grid.block_size().is_none() && !matches!(cfg.group_size, Some(g) if g > 0);
    // GGUF blocks are contiguous in the original order: under act-order
    // their grids must come from the original weights.
    let static_groups = cfg.static_groups || (cfg.act_order && cfg.grid.block_size().is_some());

    let mut w = w.to_vec();
    let mut h = h.to_vec();
    let mut steps = vec![Step::default(); rows * n_groups];
    // Importance weights for the GGUF block fits: diag(H), original column order.
    let diag: Option<Vec<f32>> = (cfg.weighted_fit && matches!(cfg.grid, Grid::Gguf(_)))
        .then(|| (0..cols).map(|i| h[i * cols + i].max(0.0)).collect());
    let weights = |a: usize, b: usize| diag.as_deref().map(|d| &d[a..b]);

    if per_row {
        // The reference fits per-row grids before zeroing dead columns.
        steps
            .par_iter_mut()
            .zip(w.par_chunks(cols))
            .for_each(|(s, row)| *s = cfg.grid.fit(row));
    }
    let dead = hessian::dead_columns(&h, cols);
    for (i, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
        h[i * cols + i] = 1.0;
    }
    if dead.iter().any(|d| *d) {
        w.par_chunks_mut(cols).for_each(|row| {
            for (v, _) in row.iter_mut().zip(&dead).filter(|(_, d)| **d) {
                *v = 0.0;
            }
        });
    }
    if static_groups && !per_row {
        steps
            .par_chunks_mut(n_groups)
            .zip(w.par_chunks(cols))
            .for_each(|(s, row)| {
                for (k, st) in s.chunks_mut(per_span).enumerate() {
                    let (a, b) = (k * span, ((k + 1) * span).min(cols));
                    cfg.grid.fit_into(&row[a..b], weights(a, b), st);
                }
            });
    }

    let perm: Option<Vec<usize>> = cfg.act_order.then(|| {
        let mut p: Vec<usize> = (0..cols).collect();
        // Stable sort by descending diagonal, as torch.argsort(descending=True)
        // is not guaranteed stable; ties keep the original order here.
        p.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
        p
    });
    if let Some(p) = &perm {
        w.par_chunks_mut(cols).for_each(|row| {
            let orig = row.to_vec();
            for (dst, &src) in row.iter_mut().zip(p) {
                *dst = orig[src];
            }
        });
        let orig = h.clone();
        h.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let src_row = &orig[p[i] * cols..(p[i] + 1) * cols];
            for (dst, &j) in row.iter_mut().zip(p) {
                *dst = src_row[j];
            }
        });
    }

    let damp = cfg.percdamp as f64 * hessian::mean_diagonal(&h, cols);
    for i in 0..cols {
        h[i * cols + i] += damp as f32;
    }
    let u = hessian::inverse_upper_cholesky(&h, cols)?;
    drop(h);

    // Group of each processing position's grid, and where grids are fitted.
    let group_of = |p: usize| -> usize {
        if per_row {
            0
        } else if static_groups {
            perm.as_ref().map_or(p, |q| q[p]) / gs
        } else {
            p / gs
        }
    };
    let fit_here = |p: usize| !per_row && !static_groups && p % span == 0;

    let bs = effective_block_size(cfg.block_size, if per_row { 1 } else { span });
    let mut codes = vec![0u8; rows * cols];
    let mut err = vec![0f32; rows * bs];
    let mut row_loss = vec![0f64; rows];
    let grid = cfg.grid;

    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        w.par_chunks_mut(cols)
            .zip(codes.par_chunks_mut(cols))
            .zip(err.par_chunks_mut(bs))
            .zip(steps.par_chunks_mut(n_groups))
            .zip(row_loss.par_iter_mut())
            .for_each(|((((wrow, crow), erow), srow), loss)| {
                let block = &mut wrow[i1..i2];
                for i in 0..count {
                    let p = i1 + i;
                    if fit_here(p) {
                        let g0 = p / gs;
                        let g1 = (g0 + per_span).min(n_groups);
                        let end = (i + span).min(count);
                        grid.fit_into(&block[i..end], weights(p, i1 + end), &mut srow[g0..g1]);
                    }
                    let step = srow[group_of(p)];
                    let x = block[i];
                    let (c, q) = step.quantize(x);
                    let urow = &u[p * cols + p..p * cols + i2];
                    let d = urow[0];
                    let e = (x - q) / d;
                    *loss += (e as f64) * (e as f64);
                    block[i] = q;
                    crow[p] = c;
                    erow[i] = e;
                    for (wv, uv) in block[i + 1..].iter_mut().zip(&urow[1..]) {
                        *wv -= e * uv;
                    }
                }
            });
        if i2 < cols {
            // W[:, i2:] -= Err · U[i1:i2, i2:], written transposed on column-major
            // views (Wᵀ -= Uᵀ Errᵀ): the same memory, and faer 0.24's matmul
            // into a row-major strided destination gave wrong results.
            let rest = cols - i2;
            let dst =
                MatMut::from_column_major_slice_with_stride_mut(&mut w[i2..], rest, rows, cols);
            let err_t = MatRef::from_column_major_slice_with_stride(&err[..], count, rows, bs);
            let u_t = MatRef::from_column_major_slice_with_stride(
                &u[i1 * cols + i2..],
                rest,
                count,
                cols,
            );
            matmul(dst, Accum::Add, u_t, err_t, -1.0f32, Par::rayon(0));
        }
        i1 = i2;
    }

    let mut g_idx = vec![0i32; cols];
    for p in 0..cols {
        let orig = perm.as_ref().map_or(p, |q| q[p]);
        g_idx[orig] = group_of(p) as i32;
    }
    if let Some(p) = &perm {
        let unpermute = |data: &mut [f32]| {
            data.par_chunks_mut(cols).for_each(|row| {
                let permuted = row.to_vec();
                for (pos, &orig) in p.iter().enumerate() {
                    row[orig] = permuted[pos];
                }
            });
        };
        unpermute(&mut w);
        codes.par_chunks_mut(cols).for_each(|row| {
            let permuted = row.to_vec();
            for (pos, &orig) in p.iter().enumerate() {
                row[orig] = permuted[pos];
            }
        });
    }
    Ok(GptqResult {
        rows,
        cols,
        codes,
        steps,
        n_groups,
        g_idx,
        perm,
        dequant: w,
        loss: row_loss.iter().sum::<f64>() / 2.0,
        damp,
        dead: dead.iter().filter(|d| **d).count(),
    })
}

/// Round-to-nearest on the same grids (no Hessian, no error feedback): the
/// baseline every GPTQ result is compared against.
pub fn rtn(w: &[f32], rows: usize, cols: usize, cfg: &GptqConfig) -> Result<GptqResult> {
    cfg.grid.check()?;
    if w.len() != rows * cols {
        return Err(Error::Shape(format!(
            "weight has {} values, expected {rows}×{cols}",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::Value(format!(
            "weight has a non-finite value at row {}, column {}",
            i / cols.max(1),
            i % cols.max(1)
        )));
    }
    let gs = group_size(cfg, cols);
    let span = cfg.grid.fit_span(gs);
    if let Grid::Gguf(q) = cfg.grid {
        if cols % span != 0 {
            return Err(Error::Shape(format!(
                "{}: row length {cols} is not a multiple of the block size {span}",
                q.name()
            )));
        }
    }
    let n_groups = cols.div_ceil(gs).max(1);
    // Groups per fitted span (1 except for K-quant super-blocks).
    let per_span = span / gs;
    let mut dequant = vec![0f32; rows * cols];
    let mut codes = vec![0u8; rows * cols];
    let mut steps = vec![Step::default(); rows * n_groups];
    dequant
        .par_chunks_mut(cols)
        .zip(codes.par_chunks_mut(cols))
        .zip(steps.par_chunks_mut(n_groups))
        .zip(w.par_chunks(cols))
        .for_each(|(((drow, crow), srow), wrow)| {
            for (k, st) in srow.chunks_mut(per_span).enumerate() {
                cfg.grid
                    .fit_into(&wrow[k * span..((k + 1) * span).min(cols)], None, st);
            }
            for j in 0..cols {
                let (c, v) = srow[j / gs].quantize(wrow[j]);
                crow[j] = c;
                drow[j] = v;
            }
        });
    let g_idx = (0..cols).map(|j| (j / gs) as i32).collect();
    let loss = w
        .iter()
        .zip(&dequant)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / 2.0;
    Ok(GptqResult {
        rows,
        cols,
        codes,
        steps,
        n_groups,
        g_idx,
        perm: None,
        dequant,
        loss,
        damp: 0.0,
        dead: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    /// Weights and a correlated Hessian 2XᵀX/n from random activations.
    fn problem(rows: usize, cols: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let mut s = 7u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let mut x = vec![0f32; n * cols];
        for t in 0..n {
            let common = lcg(&mut s);
            for j in 0..cols {
                x[t * cols + j] = lcg(&mut s) + common * (j % 3) as f32;
            }
        }
        let mut h = vec![0f32; cols * cols];
        for i in 0..cols {
            for j in 0..cols {
                h[i * cols + j] = 2.0 / n as f32
                    * (0..n)
                        .map(|t| x[t * cols + i] * x[t * cols + j])
                        .sum::<f32>();
            }
        }
        (w, h)
    }

    fn layer_loss(w: &[f32], q: &[f32], h: &[f32], rows: usize, cols: usize) -> f64 {
        let mut total = 0f64;
        for r in 0..rows {
            let d: Vec<f64> = (0..cols)
                .map(|j| (w[r * cols + j] - q[r * cols + j]) as f64)
                .collect();
            for i in 0..cols {
                for j in 0..cols {
                    total += d[i] * h[i * cols + j] as f64 * d[j];
                }
            }
        }
        total
    }

    #[test]
    fn gptq_beats_rtn_on_layer_loss() {
        let (rows, cols) = (16, 96);
        let (w, h) = problem(rows, cols, 300);
        for act_order in [false, true] {
            let cfg = GptqConfig {
                group_size: Some(32),
                act_order,
                ..Default::default()
            };
            let g = gptq(&w, &h, rows, cols, &cfg).unwrap();
            let r = rtn(&w, rows, cols, &cfg).unwrap();
            let (lg, lr) = (
                layer_loss(&w, &g.dequant, &h, rows, cols),
                layer_loss(&w, &r.dequant, &h, rows, cols),
            );
            assert!(lg < lr, "act_order={act_order}: gptq {lg} rtn {lr}");
        }
    }

    #[test]
    fn lazy_blocks_do_not_change_the_result() {
        let (rows, cols) = (24, 200);
        let (w, h) = problem(rows, cols, 300);
        let run = |block_size| {
            let cfg = GptqConfig {
                group_size: None,
                block_size,
                ..Default::default()
            };
            gptq(&w, &h, rows, cols, &cfg).unwrap().dequant
        };
        let (one, blocked) = (run(cols), run(32));
        let same = one
            .iter()
            .zip(&blocked)
            .filter(|(a, b)| (*a - *b).abs() < 1e-4)
            .count();
        assert!(
            same as f64 > 0.995 * one.len() as f64,
            "{same} of {}",
            one.len()
        );
    }

    #[test]
    fn dequant_is_the_grid_value_of_the_codes() {
        let (rows, cols) = (4, 64);
        let (w, h) = problem(rows, cols, 100);
        let cfg = GptqConfig {
            group_size: Some(32),
            act_order: true,
            ..Default::default()
        };
        let g = gptq(&w, &h, rows, cols, &cfg).unwrap();
        for r in 0..rows {
            for j in 0..cols {
                let s = g.steps[r * g.n_groups + g.g_idx[j] as usize];
                let v = s.scale * (g.codes[r * cols + j] as f32 - s.zero);
                assert_eq!(v, g.dequant[r * cols + j]);
            }
        }
    }

    #[test]
    fn dead_columns_are_zero() {
        let (rows, cols) = (3, 32);
        let (w, mut h) = problem(rows, cols, 50);
        for k in 0..cols {
            h[5 * cols + k] = 0.0;
            h[k * cols + 5] = 0.0;
        }
        let g = gptq(&w, &h, rows, cols, &GptqConfig::default()).unwrap();
        assert_eq!(g.dead, 1);
        for r in 0..rows {
            assert_eq!(g.dequant[r * cols + 5], 0.0);
        }
    }

    #[test]
    fn nan_hessian_is_an_error() {
        let (w, mut h) = problem(2, 8, 10);
        h[3] = f32::NAN;
        assert!(gptq(&w, &h, 2, 8, &GptqConfig::default()).is_err());
    }
}
