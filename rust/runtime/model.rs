//! The decoder forward pass for the llama family (Llama, Mistral, SmolLM2) and
//! qwen2 / qwen3, following llama.cpp's `llm_build_llama` / `llm_build_qwen2`
//! / `llm_build_qwen3` graphs: embedding row lookup, RMSNorm, rotary position
//! embedding, grouped-query attention over a KV cache, SwiGLU MLP, output head
//! (tied to `token_embd` when the file has no `output.weight`).
//!
//! One call runs a whole batch of tokens through all layers; every matrix
//! product reads the quantized weights in place through [`crate::simd`].

use std::collections::HashMap;

use rayon::prelude::*;

use super::kv_cache::KvCache;
use super::weights::{GgufWeights, TensorSpec, Weight};
use crate::error::{Error, Result};
use crate::simd::{self, Acts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(Error::Unsupported {
                qtype: "architecture",
                what: format!(
                    "{other:?} is not an architecture the runtime runs (llama, mistral, qwen2, qwen3)"
                ),
            }),
        }
    }
}

/// How rotary pairs are formed (llama.cpp `LLAMA_ROPE_TYPE_NORM` / `_NEOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): llama GGUFs store Q/K permuted for this.
    Norm,
    /// Pairs (i, i + d/2), as in the Hugging Face code: qwen2/qwen3.
    Neox,
}

#[derive(Debug, Clone)]
pub struct HParams {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub vocab: usize,
}

impl HParams {
    /// From the `{arch}.*` GGUF keys, passed as numbers by name (without the
    /// architecture prefix): `block_count`, `embedding_length`, ...
    pub fn from_map(arch: &str, m: &HashMap<String, f64>) -> Result<HParams> {
        let arch_kind = Arch::parse(arch)?;
        let get = |key: &str| -> Result<f64> {
            m.get(key)
                .copied()
                .ok_or_else(|| Error::Value(format!("missing hyperparameter {arch}.{key}")))
        };
        let count = |key: &str| -> Result<usize> {
            let v = get(key)?;
            if !((1.0..1e9).contains(&v) && v.fract() == 0.0) {
                return Err(Error::Value(format!(
                    "hyperparameter {arch}.{key} = {v} is not a positive integer"
                )));
            }
            Ok(v as usize)
        };
        let n_embd = count("embedding_length")?;
        let n_head = count("attention.head_count")?;
        let n_head_kv = match m.get("attention.head_count_kv") {
            Some(_) => count("attention.head_count_kv")?,
            None => n_head,
        };
        let head_dim = match m.get("attention.key_length") {
            Some(_) => count("attention.key_length")?,
            None => n_embd / n_head,
        };
        let rope_dim = match m.get("rope.dimension_count") {
            Some(_) => count("rope.dimension_count")?,
            None => head_dim,
        };
        let hp = HParams {
            arch: arch_kind,
            n_layer: count("block_count")?,
            n_embd,
            n_ff: count("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_base: m.get("rope.freq_base").copied().unwrap_or(10000.0) as f32,
            rms_eps: m
                .get("attention.layer_norm_rms_epsilon")
                .copied()
                .unwrap_or(1e-5) as f32,
            vocab: count("vocab_size")?,
        };
        if n_head % n_head_kv != 0 {
            return Err(Error::Value(format!(
                "{n_head} attention heads do not divide into {n_head_kv} KV heads"
            )));
        }
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(Error::Value(format!(
                "rope dimension {rope_dim} does not fit head dimension {head_dim}"
            )));
        }
        if !(hp.rope_base > 0.0 && hp.rms_eps > 0.0) {
            return Err(Error::Value(
                "rope.freq_base and the RMS epsilon must be positive".into(),
            ));
        }
        Ok(hp)
    }

    pub fn rope_mode(&self) -> RopeMode {
        match self.arch {
            Arch::Llama => RopeMode::Norm,
            Arch::Qwen2 | Arch::Qwen3 => RopeMode::Neox,
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

pub struct Model {
    pub hp: HParams,
    pub weights: GgufWeights,
    tok_embd: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    /// Per-pair frequency divisors (Llama 3 `rope_freqs.weight`).
    rope_freqs: Option<Vec<f32>>,
    layers: Vec<Layer>,
}

impl Model {
    /// Map the file and check every tensor the forward pass will read.
    pub fn load(
        path: &str,
        arch: &str,
        hparams: &HashMap<String, f64>,
        tensors: Vec<TensorSpec>,
    ) -> Result<Model> {
        let hp = HParams::from_map(arch, hparams)?;
        let w = GgufWeights::open(path, tensors)?;
        let (d, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let tok_embd = w.matrix("token_embd.weight", d, hp.vocab)?;
        let output = if w.has("output.weight") {
            w.matrix("output.weight", d, hp.vocab)?
        } else {
            tok_embd
        };
        let output_norm = w.vector("output_norm.weight", d)?;
        let rope_freqs = w.optional_vector("rope_freqs.weight", hp.rope_dim / 2)?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                let v = w.optional_vector(&n(s), len)?;
                if hp.arch == Arch::Qwen2 && v.is_none() {
                    return Err(Error::Value(format!(
                        "{}: missing tensor {:?}",
                        w.path,
                        n(s)
                    )));
                }
                Ok(v)
            };
            let (q_norm, k_norm) = if hp.arch == Arch::Qwen3 {
                (
                    Some(w.vector(&n("attn_q_norm.weight"), hp.head_dim)?),
                    Some(w.vector(&n("attn_k_norm.weight"), hp.head_dim)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: w.vector(&n("attn_norm.weight"), d)?,
                wq: w.matrix(&n("attn_q.weight"), d, qd)?,
                wk: w.matrix(&n("attn_k.weight"), d, kvd)?,
                wv: w.matrix(&n("attn_v.weight"), d, kvd)?,
                wo: w.matrix(&n("attn_output.weight"), qd, d)?,
                bq: bias("attn_q.bias", qd)?,
                bk: bias("attn_k.bias", kvd)?,
                bv: bias("attn_v.bias", kvd)?,
                q_norm,
                k_norm,
                ffn_norm: w.vector(&n("ffn_norm.weight"), d)?,
                gate: w.matrix(&n("ffn_gate.weight"), d, ff)?,
                up: w.matrix(&n("ffn_up.weight"), d, ff)?,
                down: w.matrix(&n("ffn_down.weight"), ff, d)?,
            });
        }
        Ok(Model {
            hp,
            weights: w,
            tok_embd,
            output,
            output_norm,
            rope_freqs,
            layers,
        })
    }

    /// Bytes of weights read per generated token (every matrix once, plus
    /// one embedding row).
    pub fn weight_bytes_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down]
                    .iter()
                    .map(|w| w.n_bytes)
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.output.n_bytes + self.tok_embd.n_bytes / self.hp.vocab
    }

    fn matmul(&self, w: &Weight, acts: &Acts, out: &mut [f32]) -> Result<()> {
        simd::matmul(&self.weights.view(w), acts, out)
    }

    /// Run `tokens` (positions `cache.n_past..`) through the model, append
    /// their keys and values to `cache`, and return the logits of every token
    /// (`all_logits`) or of the last one, row-major `(n, vocab)`.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Value("no tokens to evaluate".into()));
        }
        if cache.n_past + n > cache.n_ctx {
            return Err(Error::Value(format!(
                "{} tokens after {} cached ones exceed the context of {} tokens",
                n, cache.n_past, cache.n_ctx
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= hp.vocab) {
            return Err(Error::Value(format!(
                "token id {t} is out of range (vocabulary of {})",
                hp.vocab
            )));
        }
        let (d, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let pos0 = cache.n_past;
        let embd = self.weights.view(&self.tok_embd);
        let mut x = vec![0f32; n * d];
        x.par_chunks_mut(d)
            .zip(tokens.par_iter())
            .try_for_each(|(row, &t)| simd::dequantize_row(&embd, t as usize, row))?;

        let (cos, sin) = self.rope_tables(pos0, n);
        let mut h = vec![0f32; n * d];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut att = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let mut gate = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];

        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, hp.rms_eps, &mut h);
            {
                let acts = Acts::new(&h, d)?;
                self.matmul(&l.wq, &acts, &mut q)?;
                self.matmul(&l.wk, &acts, &mut k)?;
                self.matmul(&l.wv, &acts, &mut v)?;
            }
            add_bias(&mut q, l.bq.as_deref());
            add_bias(&mut k, l.bk.as_deref());
            add_bias(&mut v, l.bv.as_deref());
            if let Some(w) = &l.q_norm {
                rms_norm_inplace(&mut q, w, hp.rms_eps);
            }
            if let Some(w) = &l.k_norm {
                rms_norm_inplace(&mut k, w, hp.rms_eps);
            }
            self.rope(&mut q, hp.n_head, &cos, &sin);
            self.rope(&mut k, hp.n_head_kv, &cos, &sin);
            cache.store(li, pos0, &k, &v);
            attention(hp, cache, li, pos0, &q, &mut att);
            {
                let acts = Acts::new(&att, qd)?;
                self.matmul(&l.wo, &acts, &mut proj)?;
            }
            add(&mut x, &proj);

            rms_norm(&x, &l.ffn_norm, hp.rms_eps, &mut h);
            {
                let acts = Acts::new(&h, d)?;
                self.matmul(&l.gate, &acts, &mut gate)?;
                self.matmul(&l.up, &acts, &mut up)?;
            }
            gate.par_chunks_mut(4096)
                .zip(up.par_chunks(4096))
                .for_each(|(g, u)| {
                    for (g, u) in g.iter_mut().zip(u) {
                        *g = *g / (1.0 + (-*g).exp()) * u;
                    }
                });
            {
                let acts = Acts::new(&gate, ff)?;
                self.matmul(&l.down, &acts, &mut proj)?;
            }
            add(&mut x, &proj);
        }
        cache.n_past += n;

        let rows = if all_logits {
            &x[..]
        } else {
            &x[(n - 1) * d..]
        };
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &self.output_norm, hp.rms_eps, &mut normed);
        let acts = Acts::new(&normed, d)?;
        let mut logits = vec![0f32; acts.ntok * hp.vocab];
        self.matmul(&self.output, &acts, &mut logits)?;
        Ok(logits)
    }

    /// cos/sin of position × frequency, `(n, rope_dim / 2)` each.
    fn rope_tables(&self, pos0: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.hp.rope_dim / 2;
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for t in 0..n {
            let pos = (pos0 + t) as f64;
            for i in 0..half {
                let mut freq =
                    (self.hp.rope_base as f64).powf(-2.0 * i as f64 / self.hp.rope_dim as f64);
                if let Some(f) = &self.rope_freqs {
                    freq /= f[i] as f64;
                }
                let theta = pos * freq;
                cos[t * half + i] = theta.cos() as f32;
                sin[t * half + i] = theta.sin() as f32;
            }
        }
        (cos, sin)
    }

    fn rope(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let hd = self.hp.head_dim;
        let half = self.hp.rope_dim / 2;
        let mode = self.hp.rope_mode();
        for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for head in tok.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = match mode {
                        RopeMode::Norm => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            add(row, b);
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) * w`, row by row (`w.len()` per row).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let ss: f32 = dot(row, row) / w.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let ss: f32 = dot(row, row) / w.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

/// f32 dot product in eight lanes, so the compiler vectorizes it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Causal grouped-query attention of the batch's queries over the cache.
fn attention(hp: &HParams, cache: &KvCache, layer: usize, pos0: usize, q: &[f32], out: &mut [f32]) {
    let hd = hp.head_dim;
    let group = hp.n_head / hp.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (t, head) = (idx / hp.n_head, idx % hp.n_head);
        let kvh = head / group;
        // Queries and probabilities pass through f16, as in llama.cpp's KQ and KQV
        // products over its F16 cache, so results track llama.cpp's closely.
        let qv: Vec<f32> = q[idx * hd..(idx + 1) * hd]
            .iter()
            .map(|&x| round_f16(x))
            .collect();
        let n_keys = pos0 + t + 1;
        let mut scores: Vec<f32> = (0..n_keys)
            .map(|p| dot(&qv, cache.key(layer, p, kvh)) * scale)
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        let inv = 1.0 / sum;
        for (p, s) in scores.iter().enumerate() {
            let w = round_f16(s * inv);
            for (a, b) in o.iter_mut().zip(cache.value(layer, p, kvh)) {
                *a += w * b;
            }
        }
    });
}
