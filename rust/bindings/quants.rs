//! `ferroquant._native` quantization functions.

use numpy::{
    IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::quants::{self, QType, ALL_TYPES};

fn contiguous<'a, T: numpy::Element>(
    arr: &'a numpy::PyReadonlyArray<'_, T, impl numpy::ndarray::Dimension>,
    what: &str,
) -> PyResult<&'a [T]> {
    arr.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what} must be a C-contiguous array")))
}

/// quantize(x, qtype, imatrix=None) -> uint8 array (rows, row_bytes)
#[pyfunction]
#[pyo3(signature = (x, qtype, imatrix=None))]
fn quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    qtype: &str,
    imatrix: Option<PyReadonlyArray1<'py, f32>>,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let qtype = QType::from_name(qtype)?;
    let [rows, cols] = [x.shape()[0], x.shape()[1]];
    let row_bytes = qtype.row_bytes(cols)?;
    let src = contiguous(&x, "x")?;
    let weights = match &imatrix {
        Some(w) => Some(contiguous(w, "imatrix")?),
        None => None,
    };
    let out = py.detach(|| -> crate::Result<Vec<u8>> {
        let mut out = vec![0u8; rows * row_bytes];
        quants::quantize(qtype, src, cols, weights, &mut out)?;
        Ok(out)
    })?;
    out.into_pyarray(py).reshape([rows, row_bytes])
}

/// dequantize(data, qtype, rows, cols) -> float32 array (rows, cols)
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    data: numpy::PyReadonlyArrayDyn<'py, u8>,
    qtype: &str,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let qtype = QType::from_name(qtype)?;
    let src = contiguous(&data, "data")?;
    let out = py.detach(|| -> crate::Result<Vec<f32>> {
        let mut out = vec![0f32; rows * cols];
        quants::dequantize(qtype, src, cols, &mut out)?;
        Ok(out)
    })?;
    out.into_pyarray(py).reshape([rows, cols])
}

/// vec_dot(row, qtype, x) -> float: one quantized row times f32 activations.
#[pyfunction]
fn vec_dot(
    row: PyReadonlyArray1<'_, u8>,
    qtype: &str,
    x: PyReadonlyArray1<'_, f32>,
) -> PyResult<f32> {
    let qtype = QType::from_name(qtype)?;
    Ok(quants::vec_dot(
        qtype,
        contiguous(&row, "row")?,
        contiguous(&x, "x")?,
    )?)
}

/// types() -> list of (name, ggml_type_id, block_size, type_size)
#[pyfunction]
fn types() -> Vec<(&'static str, u32, usize, usize)> {
    ALL_TYPES
        .iter()
        .map(|t| (t.name(), *t as u32, t.block_size(), t.type_size()))
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(vec_dot, m)?)?;
    m.add_function(wrap_pyfunction!(types, m)?)?;
    Ok(())
}
