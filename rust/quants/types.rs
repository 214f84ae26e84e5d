//! The GGML type table: ids as stored in GGUF files, weights per block and
//! bytes per block. Formats are data; the kernels live in the family modules.

use crate::error::{Error, Result};

/// GGML tensor types ferroquant reads and writes. The discriminants are the
/// `ggml_type` ids written in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    IQ4_NL = 20,
    IQ4_XS = 23,
    BF16 = 30,
}

/// Size facts of one type, as in ggml's `type_traits` table.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    pub qtype: QType,
    pub name: &'static str,
    /// Weights per block.
    pub block_size: usize,
    /// Bytes per block on disk.
    pub type_size: usize,
}

impl TypeInfo {
    pub fn bits_per_weight(&self) -> f64 {
        (self.type_size * 8) as f64 / self.block_size as f64
    }
}

pub const ALL_TYPES: [QType; 15] = [
    QType::F32,
    QType::F16,
    QType::BF16,
    QType::Q8_0,
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q5_1,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
    QType::IQ4_NL,
    QType::IQ4_XS,
];

/// Weights per K-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

impl QType {
    pub const fn info(self) -> TypeInfo {
        let (name, block_size, type_size) = match self {
            QType::F32 => ("F32", 1, 4),
            QType::F16 => ("F16", 1, 2),
            QType::BF16 => ("BF16", 1, 2),
            QType::Q4_0 => ("Q4_0", 32, 18),
            QType::Q4_1 => ("Q4_1", 32, 20),
            QType::Q5_0 => ("Q5_0", 32, 22),
            QType::Q5_1 => ("Q5_1", 32, 24),
            QType::Q8_0 => ("Q8_0", 32, 34),
            QType::Q2_K => ("Q2_K", QK_K, 84),
            QType::Q3_K => ("Q3_K", QK_K, 110),
            QType::Q4_K => ("Q4_K", QK_K, 144),
            QType::Q5_K => ("Q5_K", QK_K, 176),
            QType::Q6_K => ("Q6_K", QK_K, 210),
            QType::IQ4_NL => ("IQ4_NL", 32, 18),
            QType::IQ4_XS => ("IQ4_XS", QK_K, 136),
        };
        TypeInfo {
            qtype: self,
            name,
            block_size,
            type_size,
        }
    }

    pub const fn name(self) -> &'static str {
        self.info().name
    }

    pub const fn block_size(self) -> usize {
        self.info().block_size
    }

    pub const fn type_size(self) -> usize {
        self.info().type_size
    }

    /// Parse a GGUF type name (`"Q4_K"`, `"q8_0"`, `"iq4_xs"`).
    pub fn from_name(name: &str) -> Result<QType> {
        let upper = name.trim().to_ascii_uppercase();
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name() == upper)
            .ok_or_else(|| Error::UnknownType(name.to_string()))
    }

    pub fn from_id(id: u32) -> Result<QType> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or_else(|| Error::UnknownType(format!("ggml type id {id}")))
    }

    /// Bytes of one row of `cols` weights; errors when `cols` does not divide
    /// into whole blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        let info = self.info();
        if cols % info.block_size != 0 {
            return Err(Error::Shape(format!(
                "{}: row length {cols} is not a multiple of the block size {}",
                info.name, info.block_size
            )));
        }
        Ok(cols / info.block_size * info.type_size)
    }
}
