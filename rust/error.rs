//! One error type for the core. The bindings map it to Python exceptions
//! (`ValueError` for bad input, `NotImplementedError` for unsupported types).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("unknown quantization type {0:?}")]
    UnknownType(String),
    #[error("{qtype}: {what}")]
    Unsupported { qtype: &'static str, what: String },
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Value(String),
}

pub type Result<T> = std::result::Result<T, Error>;
