//! ferroquant's Rust core: GGUF block formats, and (in later modules) the GPTQ
//! column updates and CPU kernels. The Python bindings live in `bindings/` and are
//! compiled only with the `python` feature, so the core builds and tests without
//! libpython.

pub mod error;
pub mod gptq;
pub mod pack;
pub mod quants;
pub mod runtime;
pub mod simd;

#[cfg(feature = "python")]
mod bindings;

pub use error::{Error, Result};
pub use quants::QType;
