//! `ferroquant._native` quantization functions.

use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
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
    let out = empty::<u8>(py, rows, row_bytes)?;
    {
        // SAFETY: the array is new, C-contiguous and not yet shared with Python code;
        // the kernels write every byte before it is returned.
        let dst = unsafe { out.as_slice_mut() }.expect("a new array is contiguous");
        py.detach(|| quants::quantize(qtype, src, cols, weights, dst))?;
    }
    Ok(out)
}

/// A new uninitialised C-contiguous array, written straight by the kernels (no zeroing
/// pass, no copy; numpy's allocator reuses freed buffers and asks for huge pages).
fn empty<T: numpy::Element>(
    py: Python<'_>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    if rows
        .checked_mul(cols)
        .map_or(true, |n| n > isize::MAX as usize / 8)
    {
        return Err(PyValueError::new_err(format!(
            "a {rows} x {cols} result is too large"
        )));
    }
    // SAFETY: the caller writes every element before Python code sees the array.
    Ok(unsafe { PyArray2::<T>::new(py, [rows, cols], false) })
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
    // Check the sizes before allocating: a bad shape must not allocate a huge array.
    let row_bytes = qtype.row_bytes(cols)?;
    if rows.checked_mul(row_bytes) != Some(src.len()) {
        return Err(PyValueError::new_err(format!(
            "{} bytes given, {rows} rows × {cols} columns of {} need {}",
            src.len(),
            qtype.name(),
            rows.saturating_mul(row_bytes)
        )));
    }
    let out = empty::<f32>(py, rows, cols)?;
    {
        // SAFETY: as in `quantize`: a new array, every value written by the kernels.
        let dst = unsafe { out.as_slice_mut() }.expect("a new array is contiguous");
        py.detach(|| quants::dequantize(qtype, src, cols, dst))?;
    }
    Ok(out)
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
