//! `ferroquant._native` runtime: the `Runtime` session (memory-mapped GGUF,
//! KV cache, thread pool), the `Sampler`, and the matmul kernel for tests.

use std::collections::HashMap;

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::quants::QType;
use crate::runtime::{sampling, Session, TensorSpec};
use crate::simd::{self, Acts, WeightView};

/// `{tensor name: (sums of squares per input column, token count)}`.
type StatsDict<'py> = HashMap<String, (Bound<'py, PyArray1<f64>>, u64)>;

/// Runtime(path, arch, hparams, tensors, n_ctx, n_threads=0)
///
/// `hparams`: the `{arch}.*` GGUF keys without the prefix, as numbers.
/// `tensors`: (name, ggml type id, GGUF shape ne, absolute byte offset).
#[pyclass(module = "ferroquant._native")]
pub struct Runtime {
    session: Session,
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (path, arch, hparams, tensors, n_ctx, n_threads=0))]
    fn new(
        py: Python<'_>,
        path: String,
        arch: String,
        hparams: HashMap<String, f64>,
        tensors: Vec<(String, u32, Vec<u64>, u64)>,
        n_ctx: usize,
        n_threads: usize,
    ) -> PyResult<Self> {
        let specs = tensors
            .into_iter()
            .map(|(name, type_id, ne, offset)| TensorSpec {
                name,
                type_id,
                ne,
                offset,
            })
            .collect();
        let session =
            py.detach(|| Session::new(&path, &arch, &hparams, specs, n_ctx, n_threads))?;
        Ok(Runtime { session })
    }

    /// forward(tokens, all_logits=False) -> float32 (n or 1, vocab)
    #[pyo3(signature = (tokens, all_logits=false))]
    fn forward<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<u32>,
        all_logits: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let vocab = self.session.model.hp.vocab;
        let session = &mut self.session;
        let logits = py.detach(|| session.forward(&tokens, all_logits))?;
        let rows = logits.len() / vocab;
        logits.into_pyarray(py).reshape([rows, vocab])
    }

    /// Start (`True`) or stop (`False`, dropping what was gathered) adding the
    /// per-column sums of squared matmul inputs of every forward call.
    fn collect_stats(&mut self, on: bool) {
        self.session.stats = on.then(Default::default);
    }

    /// The statistics gathered since `collect_stats(True)`, and a fresh start:
    /// {tensor name: (float64 sums of squares per input column, token count)}.
    fn take_stats<'py>(&mut self, py: Python<'py>) -> PyResult<StatsDict<'py>> {
        let stats = self
            .session
            .stats
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("statistics are not being collected"))?;
        let taken = std::mem::take(&mut stats.sums);
        Ok(taken
            .into_iter()
            .map(|(k, (v, n))| {
                let wide: Vec<f64> = v.into_iter().map(f64::from).collect();
                (k, (wide.into_pyarray(py), n))
            })
            .collect())
    }

    /// Forget cached positions from `n` on.
    fn truncate(&mut self, n: usize) {
        self.session.cache.truncate(n);
    }

    fn reset(&mut self) {
        self.session.cache.truncate(0);
    }

    #[getter]
    fn n_past(&self) -> usize {
        self.session.cache.n_past
    }

    #[getter]
    fn n_ctx(&self) -> usize {
        self.session.cache.n_ctx
    }

    #[getter]
    fn vocab(&self) -> usize {
        self.session.model.hp.vocab
    }

    #[getter]
    fn n_threads(&self) -> usize {
        self.session.n_threads()
    }

    /// Bytes of weights read per generated token.
    #[getter]
    fn weight_bytes_per_token(&self) -> usize {
        self.session.model.weight_bytes_per_token()
    }
}

/// Sampler(seed): greedy / temperature + top-k + top-p sampling.
#[pyclass(module = "ferroquant._native")]
pub struct Sampler {
    inner: sampling::Sampler,
}

#[pymethods]
impl Sampler {
    #[new]
    fn new(seed: u64) -> Self {
        Sampler {
            inner: sampling::Sampler::new(seed),
        }
    }

    /// sample(logits, temperature, top_k, top_p) -> token id
    fn sample(
        &mut self,
        logits: PyReadonlyArray1<'_, f32>,
        temperature: f32,
        top_k: usize,
        top_p: f32,
    ) -> PyResult<u32> {
        let l = logits
            .as_slice()
            .map_err(|_| PyValueError::new_err("logits must be a C-contiguous array"))?;
        Ok(self.inner.sample(l, temperature, top_k, top_p))
    }
}

/// matmul(weight, qtype, rows, cols, x, portable=False, isa=None) -> float32 (ntok, rows)
///
/// The runtime's kernel: quantized weight bytes times f32 activations (which
/// the kernel first converts to the type's activation form, as ggml does).
/// `isa`: "portable", "avx2", "avx512" or "neon" to pick a kernel tier (at
/// most what the CPU has); `portable=True` is `isa="portable"`.
#[pyfunction]
#[pyo3(signature = (weight, qtype, rows, cols, x, portable=false, isa=None))]
#[allow(clippy::too_many_arguments)]
fn matmul<'py>(
    py: Python<'py>,
    weight: numpy::PyReadonlyArrayDyn<'py, u8>,
    qtype: &str,
    rows: usize,
    cols: usize,
    x: PyReadonlyArray2<'py, f32>,
    portable: bool,
    isa: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let qtype = QType::from_name(qtype)?;
    let tier = match (portable, isa) {
        (true, _) | (false, Some("portable")) => simd::Isa::Portable,
        (false, None) => simd::isa_level(),
        (false, Some("avx2")) => simd::Isa::Avx2,
        (false, Some("avx512")) => simd::Isa::Avx512,
        (false, Some("neon")) => simd::Isa::Neon,
        (false, Some(other)) => {
            return Err(PyValueError::new_err(format!(
                "unknown kernel tier {other:?} (portable, avx2, avx512, neon)"
            )))
        }
    };
    let bytes = weight
        .as_slice()
        .map_err(|_| PyValueError::new_err("weight must be a C-contiguous array"))?;
    if x.shape()[1] != cols {
        return Err(PyValueError::new_err(format!(
            "x has {} columns, the weight {cols}",
            x.shape()[1]
        )));
    }
    let ntok = x.shape()[0];
    let xs = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be a C-contiguous array"))?;
    let out = py.detach(|| -> crate::Result<Vec<f32>> {
        let view = WeightView {
            qtype,
            bytes,
            rows,
            cols,
        };
        let acts = Acts::new(xs, cols)?;
        let mut out = vec![0f32; ntok * rows];
        simd::matmul_isa(&view, &acts, &mut out, tier)?;
        Ok(out)
    })?;
    out.into_pyarray(py).reshape([ntok, rows])
}

/// simd_isa() -> the instruction set the kernels dispatch to.
#[pyfunction]
fn simd_isa() -> &'static str {
    simd::isa()
}

/// simd_tiers() -> the kernel tiers this CPU runs ("portable", "avx2", "avx512", "neon").
#[pyfunction]
fn simd_tiers() -> Vec<&'static str> {
    simd::available_isas()
        .into_iter()
        .map(|i| match i {
            simd::Isa::Portable => "portable",
            simd::Isa::Avx2 => "avx2",
            simd::Isa::Avx512 => "avx512",
            simd::Isa::Neon => "neon",
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Runtime>()?;
    m.add_class::<Sampler>()?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(simd_isa, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tiers, m)?)?;
    Ok(())
}
