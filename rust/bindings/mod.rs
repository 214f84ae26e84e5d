//! PyO3 bindings: numpy in and out, argument checks, GIL release. No kernels
//! here; everything calls into `crate::quants`.

mod gptq;
mod quants;
mod runtime;

use pyo3::prelude::*;

use crate::error::Error;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Unsupported { .. } => {
                pyo3::exceptions::PyNotImplementedError::new_err(err.to_string())
            }
            _ => pyo3::exceptions::PyValueError::new_err(err.to_string()),
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    quants::register(m)?;
    runtime::register(m)?;
    gptq::register(m)?;
    Ok(())
}
