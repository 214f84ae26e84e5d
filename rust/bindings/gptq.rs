//! `ferroquant._native` GPTQ, RTN and GPTQ-checkpoint packing functions.

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::gptq::{self, gguf, GptqConfig, GptqResult, Grid};
use crate::pack;
use crate::quants::QType;

fn slice<'a, T: numpy::Element>(arr: &'a PyReadonlyArray2<'_, T>, what: &str) -> PyResult<&'a [T]> {
    arr.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what} must be a C-contiguous array")))
}

#[allow(clippy::too_many_arguments)]
fn config(
    bits: u32,
    group_size: i64,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    percdamp: f32,
    block_size: usize,
    qtype: Option<&str>,
    weighted_fit: bool,
) -> PyResult<GptqConfig> {
    let grid = match qtype {
        Some(name) => Grid::Gguf(QType::from_name(name)?),
        None => Grid::Uniform { bits, sym },
    };
    grid.check()?;
    if block_size == 0 {
        return Err(PyValueError::new_err("block_size must be positive"));
    }
    Ok(GptqConfig {
        grid,
        group_size: (group_size > 0).then_some(group_size as usize),
        act_order,
        static_groups,
        percdamp,
        block_size,
        weighted_fit,
    })
}

fn result_dict<'py>(
    py: Python<'py>,
    res: GptqResult,
    blocks: Option<(Vec<u8>, usize)>,
) -> PyResult<Bound<'py, PyDict>> {
    let (rows, cols, ng) = (res.rows, res.cols, res.n_groups);
    let d = PyDict::new(py);
    let scales: Vec<f32> = res.steps.iter().map(|s| s.scale).collect();
    let zeros: Vec<f32> = res.steps.iter().map(|s| s.zero).collect();
    let mins: Vec<f32> = res.steps.iter().map(|s| s.min).collect();
    d.set_item("codes", res.codes.into_pyarray(py).reshape([rows, cols])?)?;
    d.set_item("scales", scales.into_pyarray(py).reshape([rows, ng])?)?;
    d.set_item("zeros", zeros.into_pyarray(py).reshape([rows, ng])?)?;
    d.set_item("mins", mins.into_pyarray(py).reshape([rows, ng])?)?;
    d.set_item("g_idx", res.g_idx.into_pyarray(py))?;
    match res.perm {
        Some(p) => {
            let p: Vec<i64> = p.into_iter().map(|v| v as i64).collect();
            d.set_item("perm", p.into_pyarray(py))?
        }
        None => d.set_item("perm", py.None())?,
    }
    d.set_item(
        "dequant",
        res.dequant.into_pyarray(py).reshape([rows, cols])?,
    )?;
    d.set_item("loss", res.loss)?;
    d.set_item("damp", res.damp)?;
    d.set_item("dead", res.dead)?;
    match blocks {
        Some((b, row_bytes)) => {
            d.set_item("blocks", b.into_pyarray(py).reshape([rows, row_bytes])?)?
        }
        None => d.set_item("blocks", py.None())?,
    }
    Ok(d)
}

fn run<'py>(
    py: Python<'py>,
    cfg: GptqConfig,
    job: impl FnOnce(&GptqConfig) -> crate::Result<GptqResult> + Send,
) -> PyResult<Bound<'py, PyDict>> {
    let (res, blocks) = py.detach(|| -> crate::Result<_> {
        let res = job(&cfg)?;
        let blocks = match cfg.grid {
            Grid::Gguf(q) => Some((gguf::to_blocks(&res, cfg.grid)?, q.row_bytes(res.cols)?)),
            Grid::Uniform { .. } => None,
        };
        Ok((res, blocks))
    })?;
    result_dict(py, res, blocks)
}

/// gptq_quantize(w, h, *, bits=4, group_size=128, sym=False, act_order=False,
/// static_groups=False, percdamp=0.01, block_size=128, qtype=None, weighted_fit=False) -> dict
///
/// weighted_fit: GGUF grids get their block scales from llama.cpp's importance-weighted
/// search with diag(h) as the importance matrix.
#[pyfunction]
#[pyo3(signature = (w, h, *, bits=4, group_size=128, sym=false, act_order=false,
    static_groups=false, percdamp=0.01, block_size=128, qtype=None, weighted_fit=false))]
#[allow(clippy::too_many_arguments)]
fn gptq_quantize<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    h: PyReadonlyArray2<'py, f32>,
    bits: u32,
    group_size: i64,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    percdamp: f32,
    block_size: usize,
    qtype: Option<&str>,
    weighted_fit: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let [rows, cols] = [w.shape()[0], w.shape()[1]];
    if h.shape() != [cols, cols] {
        return Err(PyValueError::new_err(format!(
            "Hessian shape {:?} does not match weight shape ({rows}, {cols}): expected ({cols}, {cols})",
            h.shape()
        )));
    }
    let cfg = config(
        bits,
        group_size,
        sym,
        act_order,
        static_groups,
        percdamp,
        block_size,
        qtype,
        weighted_fit,
    )?;
    let (ws, hs) = (slice(&w, "w")?, slice(&h, "h")?);
    run(py, cfg, |c| gptq::gptq(ws, hs, rows, cols, c))
}

/// rtn_quantize(w, *, bits=4, group_size=128, sym=False, qtype=None) -> dict
#[pyfunction]
#[pyo3(signature = (w, *, bits=4, group_size=128, sym=false, qtype=None))]
fn rtn_quantize<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    bits: u32,
    group_size: i64,
    sym: bool,
    qtype: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let [rows, cols] = [w.shape()[0], w.shape()[1]];
    let cfg = config(bits, group_size, sym, false, false, 0.0, 128, qtype, false)?;
    let ws = slice(&w, "w")?;
    run(py, cfg, |c| gptq::rtn(ws, rows, cols, c))
}

/// pack_bits(codes, bits) -> uint32 (rows, cols * bits / 32), packing along the last axis.
#[pyfunction]
fn pack_bits<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray2<'py, u32>,
    bits: u32,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let [rows, cols] = [codes.shape()[0], codes.shape()[1]];
    let src = slice(&codes, "codes")?;
    let out = py.detach(|| pack::pack_rows(src, rows, cols, bits))?;
    let words = out.len() / rows.max(1);
    out.into_pyarray(py).reshape([rows, words])
}

/// unpack_bits(words, bits, cols) -> uint32 (rows, cols).
#[pyfunction]
fn unpack_bits<'py>(
    py: Python<'py>,
    words: PyReadonlyArray2<'py, u32>,
    bits: u32,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let rows = words.shape()[0];
    let src = slice(&words, "words")?;
    let out = py.detach(|| pack::unpack_rows(src, rows, cols, bits))?;
    out.into_pyarray(py).reshape([rows, cols])
}

/// effective_block_size(block_size, group_size) -> int: the lazy block GPTQ uses.
#[pyfunction]
fn gptq_block_size(block_size: usize, group_size: usize) -> usize {
    gptq::effective_block_size(block_size, group_size.max(1))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gptq_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(rtn_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(gptq_block_size, m)?)?;
    Ok(())
}
