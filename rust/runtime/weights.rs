//! GGUF weights in a memory map. The container is parsed on the Python side by
//! gguf-py; here we receive, per tensor, its name, ggml type id, GGUF shape
//! (`ne`, innermost first) and absolute byte offset, and check every one of
//! them against the file before any compute.

use std::collections::HashMap;
use std::fs::File;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::quants::QType;
use crate::simd::WeightView;

/// What Python tells us about one tensor.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub type_id: u32,
    /// GGUF `ne` order: `ne[0]` is the row length.
    pub ne: Vec<u64>,
    pub offset: u64,
}

/// A checked tensor: its place in the map and its matrix shape.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    pub qtype: QType,
    pub offset: usize,
    pub n_bytes: usize,
    pub rows: usize,
    pub cols: usize,
}

/// The memory map of a GGUF file and its tensor table.
pub struct GgufWeights {
    pub path: String,
    map: Mmap,
    tensors: HashMap<String, TensorSpec>,
}

impl GgufWeights {
    pub fn open(path: &str, specs: Vec<TensorSpec>) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::Value(format!("{path}: cannot open: {e}")))?;
        // SAFETY: the map is read-only; a file truncated under us by another
        // process would fault, which is the usual contract of mapped weights.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::Value(format!("{path}: cannot memory-map: {e}")))?;
        let mut tensors = HashMap::with_capacity(specs.len());
        for s in specs {
            tensors.insert(s.name.clone(), s);
        }
        Ok(GgufWeights {
            path: path.to_string(),
            map,
            tensors,
        })
    }

    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor of shape `ne == [cols, rows]` (or `[cols]` when `rows == 1`
    /// and the tensor is a vector), checked against the file.
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight> {
        let spec = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Value(format!("{}: missing tensor {name:?}", self.path)))?;
        let qtype = QType::from_id(spec.type_id).map_err(|_| Error::Unsupported {
            qtype: "GGUF",
            what: format!(
                "{}: tensor {name:?} has ggml type id {}, which the runtime does not run",
                self.path, spec.type_id
            ),
        })?;
        let mut ne: Vec<u64> = spec.ne.clone();
        while ne.len() > 1 && ne.last() == Some(&1) {
            ne.pop();
        }
        let want: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        if ne != want {
            return Err(Error::Shape(format!(
                "{}: tensor {name:?} has shape {:?}, the model's hyperparameters need {:?}",
                self.path, spec.ne, want
            )));
        }
        let n_bytes = qtype
            .row_bytes(cols)
            .map_err(|e| Error::Shape(format!("{}: tensor {name:?}: {e}", self.path)))?
            * rows;
        let offset = usize::try_from(spec.offset).map_err(|_| {
            Error::Value(format!("{}: tensor {name:?}: offset overflows", self.path))
        })?;
        let end = offset.checked_add(n_bytes);
        if !matches!(end, Some(e) if e <= self.map.len()) {
            return Err(Error::Value(format!(
                "{}: tensor {name:?} ({} bytes at offset {offset}) runs past the end of the \
                 file ({} bytes): the file is truncated or the tensor table is wrong",
                self.path,
                n_bytes,
                self.map.len()
            )));
        }
        Ok(Weight {
            qtype,
            offset,
            n_bytes,
            rows,
            cols,
        })
    }

    pub fn view(&self, w: &Weight) -> WeightView<'_> {
        WeightView {
            qtype: w.qtype,
            bytes: &self.map[w.offset..w.offset + w.n_bytes],
            rows: w.rows,
            cols: w.cols,
        }
    }

    /// A small tensor (norm weights, biases) dequantized to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let w = self.matrix(name, len, 1)?;
        let mut out = vec![0f32; len];
        crate::simd::dequantize_row(&self.view(&w), 0, &mut out)?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::Value(format!(
                "{}: tensor {name:?} holds a non-finite value at index {i}",
                self.path
            )));
        }
        Ok(out)
    }

    pub fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            Ok(Some(self.vector(name, len)?))
        } else {
            Ok(None)
        }
    }
}
