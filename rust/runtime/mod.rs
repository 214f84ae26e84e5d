//! The CPU runtime: GGUF weights in a memory map ([`weights`]), the decoder
//! forward pass ([`model`]), the KV cache ([`kv_cache`]) and sampling
//! ([`sampling`]). A [`Session`] pairs a model with its cache and its thread
//! pool; Python calls it once per step with a batch of tokens.

pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod weights;

use std::collections::HashMap;

pub use kv_cache::KvCache;
pub use model::{ActStats, Arch, HParams, Model, RopeScaling};
pub use weights::TensorSpec;

use crate::error::{Error, Result};

pub struct Session {
    pub model: Model,
    pub cache: KvCache,
    /// When set, every forward call adds its matmul input statistics here.
    pub stats: Option<ActStats>,
    pool: rayon::ThreadPool,
}

impl Session {
    pub fn new(
        path: &str,
        arch: &str,
        hparams: &HashMap<String, f64>,
        tensors: Vec<TensorSpec>,
        n_ctx: usize,
        n_threads: usize,
    ) -> Result<Session> {
        let model = Model::load(path, arch, hparams, tensors)?;
        let hp = &model.hp;
        let cache = KvCache::new(hp.n_layer, n_ctx, hp.kv_dim(), hp.head_dim)?;
        let threads = if n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Value(format!("cannot start {threads} threads: {e}")))?;
        Ok(Session {
            model,
            cache,
            stats: None,
            pool,
        })
    }

    pub fn n_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Evaluate `tokens` after the cached ones; logits of all or of the last.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let Session {
            model,
            cache,
            stats,
            pool,
        } = self;
        pool.install(|| model.forward_stats(cache, tokens, all_logits, stats.as_mut()))
    }
}
