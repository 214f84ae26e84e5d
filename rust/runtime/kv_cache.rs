//! The key/value cache: keys and values stored as f16 (llama.cpp's default
//! `type_k = type_v = F16`), per layer and position, laid out
//! `[layer][position][kv_head * head_dim]` so one head's keys are contiguous
//! per position.

use crate::error::{Error, Result};

pub struct KvCache {
    k: Vec<u16>,
    v: Vec<u16>,
    pub n_ctx: usize,
    pub n_past: usize,
    kv_dim: usize,
    head_dim: usize,
}

impl KvCache {
    /// A cache of `n_ctx` positions; refuses sizes that would not fit in memory.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize, head_dim: usize) -> Result<KvCache> {
        if n_ctx == 0 {
            return Err(Error::Value(
                "the context must hold at least one token".into(),
            ));
        }
        let len = n_layer
            .checked_mul(n_ctx)
            .and_then(|v| v.checked_mul(kv_dim))
            .filter(|&v| v <= (1usize << 34) / 4)
            .ok_or_else(|| {
                Error::Value(format!(
                    "a KV cache of {n_ctx} positions × {n_layer} layers × {kv_dim} values is too large"
                ))
            })?;
        Ok(KvCache {
            k: vec![0u16; len],
            v: vec![0u16; len],
            n_ctx,
            n_past: 0,
            kv_dim,
            head_dim,
        })
    }

    fn base(&self, layer: usize, pos: usize) -> usize {
        (layer * self.n_ctx + pos) * self.kv_dim
    }

    /// Write the keys and values of consecutive positions starting at `pos0`
    /// (rounded to f16 to nearest even, as ggml's F32 → F16 copy).
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let start = self.base(layer, pos0);
        let to16 = |x: &f32| half::f16::from_f32(*x).to_bits();
        for (d, s) in self.k[start..start + k.len()].iter_mut().zip(k) {
            *d = to16(s);
        }
        for (d, s) in self.v[start..start + v.len()].iter_mut().zip(v) {
            *d = to16(s);
        }
    }

    /// The f16 bits of one head's key at `pos`.
    pub fn key(&self, layer: usize, pos: usize, kv_head: usize) -> &[u16] {
        let s = self.base(layer, pos) + kv_head * self.head_dim;
        &self.k[s..s + self.head_dim]
    }

    /// The f16 bits of one head's value at `pos`.
    pub fn value(&self, layer: usize, pos: usize, kv_head: usize) -> &[u16] {
        let s = self.base(layer, pos) + kv_head * self.head_dim;
        &self.v[s..s + self.head_dim]
    }

    /// One head's values of a layer from position 0 on, position `p` at
    /// `p * stride()` (for products over all positions).
    pub fn values_of(&self, layer: usize, kv_head: usize) -> &[u16] {
        let s = self.base(layer, 0) + kv_head * self.head_dim;
        &self.v[s..self.base(layer, self.n_ctx)]
    }

    /// The distance between positions in [`KvCache::values_of`].
    pub fn stride(&self) -> usize {
        self.kv_dim
    }

    /// Forget every position from `n` on (keeps a shared prefix).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }
}
