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
use crate::simd::attn::Order;
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
    pub rope: RopeScaling,
    pub rms_eps: f32,
    pub vocab: usize,
}

/// Rotary scaling, as llama.cpp passes it to `ggml_rope_ext`: linear
/// (`freq_scale = 1 / factor`) or YaRN (plus `ext_factor`, the correction
/// range from `beta_fast`/`beta_slow` and the training context).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub n_ctx_orig: usize,
}

impl Default for RopeScaling {
    fn default() -> Self {
        RopeScaling {
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }
}

/// `rope.scaling.type` as the number Python passes (`rope.scaling.type_id`).
pub const ROPE_SCALING_NONE: f64 = 0.0;
pub const ROPE_SCALING_LINEAR: f64 = 1.0;
pub const ROPE_SCALING_YARN: f64 = 2.0;

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
        let rope = rope_scaling(arch, m)?;
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
            rope,
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

    /// ggml `ggml_rope_yarn_corr_dims`: the dimensions between which YaRN
    /// blends interpolation and extrapolation.
    pub fn rope_corr_dims(&self) -> [f32; 2] {
        let n_dims = self.rope_dim as f32;
        let n_orig = self.rope.n_ctx_orig as f32;
        let base = self.rope_base;
        let corr = |n_rot: f32| {
            n_dims * (n_orig / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
        };
        let start = corr(self.rope.beta_fast).floor();
        let end = corr(self.rope.beta_slow).ceil();
        [start.max(0.0), end.min(n_dims - 1.0)]
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

/// The rotary scaling from the `rope.scaling.*` keys (llama.cpp's defaults:
/// YaRN `ext_factor` 1, `beta_fast` 32, `beta_slow` 1, `attn_factor` 1).
fn rope_scaling(arch: &str, m: &HashMap<String, f64>) -> Result<RopeScaling> {
    let mut r = RopeScaling::default();
    let kind = m
        .get("rope.scaling.type_id")
        .copied()
        .unwrap_or(ROPE_SCALING_NONE);
    let factor = m
        .get("rope.scaling.factor")
        .or_else(|| m.get("rope.scale_linear"))
        .copied()
        .unwrap_or(1.0);
    if kind == ROPE_SCALING_NONE && m.get("rope.scaling.factor").is_some() {
        // A factor without a type: nothing to scale (llama.cpp ignores it too).
        return Ok(r);
    }
    if !(factor.is_finite() && factor > 0.0) {
        return Err(Error::Value(format!(
            "{arch}.rope.scaling.factor = {factor} must be positive"
        )));
    }
    if kind == ROPE_SCALING_LINEAR || kind == ROPE_SCALING_YARN {
        r.freq_scale = (1.0 / factor) as f32;
    } else if kind == ROPE_SCALING_NONE {
        if m.contains_key("rope.scale_linear") {
            r.freq_scale = (1.0 / factor) as f32;
        }
    } else {
        return Err(Error::Unsupported {
            qtype: "rope scaling",
            what: format!("{arch}.rope.scaling.type is not none, linear or yarn"),
        });
    }
    if kind == ROPE_SCALING_YARN {
        r.ext_factor = m
            .get("rope.scaling.yarn_ext_factor")
            .copied()
            .unwrap_or(1.0) as f32;
        r.attn_factor = m
            .get("rope.scaling.yarn_attn_factor")
            .copied()
            .unwrap_or(1.0) as f32;
        r.beta_fast = m
            .get("rope.scaling.yarn_beta_fast")
            .copied()
            .unwrap_or(32.0) as f32;
        r.beta_slow = m.get("rope.scaling.yarn_beta_slow").copied().unwrap_or(1.0) as f32;
    }
    r.n_ctx_orig = m
        .get("rope.scaling.original_context_length")
        .or_else(|| m.get("context_length"))
        .copied()
        .unwrap_or(0.0) as usize;
    Ok(r)
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
    /// Whether the head is its own `output.weight` (not tied to the embedding).
    has_output: bool,
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
        let has_output = w.has("output.weight");
        let output = if has_output {
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
            has_output,
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
        self.forward_stats(cache, tokens, all_logits, None)
    }

    /// [`Model::forward`], adding to `stats` (when given) the per-column sums
    /// of squares of every weight matrix's input.
    pub fn forward_stats(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        all_logits: bool,
        mut stats: Option<&mut ActStats>,
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
            if let Some(st) = stats.as_deref_mut() {
                st.add(li, &["attn_q", "attn_k", "attn_v"], &h, d);
            }
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
            if let Some(st) = stats.as_deref_mut() {
                st.add(li, &["attn_output"], &att, qd);
            }
            {
                let acts = Acts::new(&att, qd)?;
                self.matmul(&l.wo, &acts, &mut proj)?;
            }
            add(&mut x, &proj);

            // As llama.cpp's graphs do (`inp_out_ids`), the last layer's
            // feed-forward runs on the tokens whose logits are wanted only:
            // which kernel order applies depends on the token count.
            let m = if li + 1 == self.layers.len() && !all_logits && stats.is_none() {
                1
            } else {
                n
            };
            let x = &mut x[(n - m) * d..];
            let (h, gate, up, proj) = (
                &mut h[..m * d],
                &mut gate[..m * ff],
                &mut up[..m * ff],
                &mut proj[..m * d],
            );
            rms_norm(x, &l.ffn_norm, hp.rms_eps, h);
            if let Some(st) = stats.as_deref_mut() {
                st.add(li, &["ffn_gate", "ffn_up"], h, d);
            }
            {
                let acts = Acts::new(h, d)?;
                self.matmul(&l.gate, &acts, gate)?;
                self.matmul(&l.up, &acts, up)?;
            }
            gate.par_chunks_mut(4096)
                .zip(up.par_chunks(4096))
                .for_each(|(g, u)| {
                    simd::vexp::swiglu(g, u);
                });
            if let Some(st) = stats.as_deref_mut() {
                st.add(li, &["ffn_down"], gate, ff);
            }
            {
                let acts = Acts::new(gate, ff)?;
                self.matmul(&l.down, &acts, proj)?;
            }
            add(x, proj);
        }
        cache.n_past += n;

        let rows = if all_logits {
            &x[..]
        } else {
            &x[(n - 1) * d..]
        };
        if let Some(st) = stats {
            if self.has_output {
                // The head's input for every token, even when only the last one's logits are made.
                let mut all = vec![0f32; x.len()];
                rms_norm(&x, &self.output_norm, hp.rms_eps, &mut all);
                st.add_named("output.weight", &all, d);
            }
        }
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &self.output_norm, hp.rms_eps, &mut normed);
        let acts = Acts::new(&normed, d)?;
        let mut logits = vec![0f32; acts.ntok * hp.vocab];
        self.matmul(&self.output, &acts, &mut logits)?;
        Ok(logits)
    }

    /// cos/sin of every (position, pair), `(n, rope_dim / 2)` each, computed as
    /// ggml's `ggml_rope_cache_init` + `rope_yarn` do in f32: `theta` starts at
    /// the position and is multiplied by `base^(-2/n_dims)` pair after pair.
    fn rope_tables(&self, pos0: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let hp = &self.hp;
        let half = hp.rope_dim / 2;
        let theta_scale = hp.rope_base.powf(-2.0 / hp.rope_dim as f32);
        let rs = hp.rope;
        let corr = hp.rope_corr_dims();
        let mut mscale = rs.attn_factor;
        if rs.ext_factor != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / rs.freq_scale).ln();
        }
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for t in 0..n {
            let mut theta = (pos0 + t) as f32;
            for i in 0..half {
                let ff = self.rope_freqs.as_ref().map_or(1.0, |f| f[i]);
                let extrap = theta / ff;
                let interp = rs.freq_scale * extrap;
                let mut th = interp;
                if rs.ext_factor != 0.0 {
                    let y = (i as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
                    let ramp = (1.0 - y.clamp(0.0, 1.0)) * rs.ext_factor;
                    th = interp * (1.0 - ramp) + extrap * ramp;
                }
                cos[t * half + i] = th.cos() * mscale;
                sin[t * half + i] = th.sin() * mscale;
                theta *= theta_scale;
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
                    // ggml's `rotate_pairs` as GCC contracts it (-ffp-contract=fast):
                    // `x0*cos - x1*sin` -> fma(x0, cos, -(x1*sin)), and likewise.
                    head[a] = x0.mul_add(c[i], -(x1 * s[i]));
                    head[b] = x0.mul_add(s[i], x1 * c[i]);
                }
            }
        }
    }
}

/// Per weight matrix, the sums over tokens of each input column's square and
/// the number of tokens (llama-imatrix's statistic, keyed by tensor name).
///
/// The sums are f32 running totals, `acc[j] = acc[j] + x[j] * x[j]` token after
/// token across every call, without FMA: llama-imatrix's `collect_imatrix` order
/// (its `Stats::values` are f32, and the tool is built without FMA contraction),
/// so the same activations give the same bits.
#[derive(Debug, Default, Clone)]
pub struct ActStats {
    pub sums: HashMap<String, (Vec<f32>, u64)>,
}

impl ActStats {
    /// Add the rows of `x` (`cols` each) to `blk.{layer}.{name}.weight` for each name.
    fn add(&mut self, layer: usize, names: &[&str], x: &[f32], cols: usize) {
        for name in names {
            self.accumulate(format!("blk.{layer}.{name}.weight"), x, cols);
        }
    }

    fn add_named(&mut self, name: &str, x: &[f32], cols: usize) {
        self.accumulate(name.to_string(), x, cols);
    }

    fn accumulate(&mut self, name: String, x: &[f32], cols: usize) {
        let e = self
            .sums
            .entry(name)
            .or_insert_with(|| (vec![0f32; cols], 0));
        if e.0.len() != cols {
            return; // a tensor is always fed rows of one width; never mix two
        }
        for row in x.chunks_exact(cols) {
            for (acc, &v) in e.0.iter_mut().zip(row) {
                *acc += v * v;
            }
        }
        e.1 += (x.len() / cols) as u64;
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

/// `out = x · (1 / sqrt(mean(x²) + eps)) · w`, row by row (`w.len()` per row),
/// as ggml's `rms_norm` (f32 squares summed in f64) followed by `mul`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let scale = rms_scale(row, eps);
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let ss: f64 = row.iter().map(|&v| (v * v) as f64).sum();
    let mean = (ss / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let scale = rms_scale(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
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

/// llama.cpp's KV length for a product over the cache (`llama_kv_cache::get_n_kv`):
/// the used cells rounded up to 256, at least 256, at most the cache size.
fn ggml_n_kv(n_ctx: usize, used: usize) -> usize {
    n_ctx.min(used.div_ceil(256).max(1) * 256)
}

/// Causal grouped-query attention of the batch's queries over the cache,
/// with llama.cpp's numerics (no flash attention, `build_attn_mha`): queries
/// rounded to f16 for the product with the f16 keys, softmax in f32 over
/// ggml's padded KV length (vector `expf` in chunks of 16, sum in f64), the
/// probabilities rounded to f16 for the product with the f16 values. Both
/// products follow ggml's order of float operations ([`simd::attn`]): the
/// llamafile sgemm for a batch of two or more tokens, `ggml_vec_dot_f16` for
/// a single token.
fn attention(hp: &HParams, cache: &KvCache, layer: usize, pos0: usize, q: &[f32], out: &mut [f32]) {
    let hd = hp.head_dim;
    let group = hp.n_head / hp.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_tok = q.len() / hp.q_dim();
    let n_kv = ggml_n_kv(cache.n_ctx, pos0 + n_tok);
    let batched = n_tok >= 2;
    // llamafile_sgemm takes F16 x F16 only for k % 16 == 0 and m % 4 == 0.
    let kq_order = if batched && hd % 16 == 0 && n_kv % 4 == 0 {
        Order::TinyBlas
    } else {
        Order::VecDot
    };
    let kqv_order = if batched && n_kv % 16 == 0 && hd % 4 == 0 {
        Order::TinyBlas
    } else {
        Order::VecDot
    };
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (t, head) = (idx / hp.n_head, idx % hp.n_head);
        let kvh = head / group;
        let qv: Vec<f32> = q[idx * hd..(idx + 1) * hd]
            .iter()
            .map(|&x| round_f16(x))
            .collect();
        let n_keys = pos0 + t + 1;
        // The masked positions up to the next chunk of 16 (within n_kv) go
        // through the vector exp as in ggml, as -inf.
        let padded = n_kv
            .min(n_keys.div_ceil(simd::vexp::GGML_VEC) * simd::vexp::GGML_VEC)
            .max(n_keys);
        let mut scores: Vec<f32> = (0..padded)
            .map(|p| {
                if p < n_keys {
                    simd::attn::dot_f16(kq_order, &qv, cache.key(layer, p, kvh)) * scale
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let max = scores[..n_keys]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let sum = simd::vexp::soft_max_exp(&mut scores, max);
        let inv = (1.0 / sum) as f32;
        scores.truncate(n_keys);
        for s in scores.iter_mut() {
            *s = round_f16(*s * inv);
        }
        simd::attn::weighted_sum_f16(
            kqv_order,
            &scores,
            cache.values_of(layer, kvh),
            cache.stride(),
            n_kv,
            o,
        );
    });
}
