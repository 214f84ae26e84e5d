//! Matrix-times-activations kernels that read GGUF blocks in place (no
//! dequantized copy of the weights).
//!
//! As in llama.cpp (ggml-cpu's `vec_dot_type`), the activations are first
//! converted to the form the weight type multiplies with, and the products are
//! then computed in integers with the block scales applied once per block:
//!
//! | weights | activations |
//! |---|---|
//! | Q4_0, Q5_0, Q8_0, IQ4_NL | [`BlockQ8A`] as `block_q8_0` (32 codes, f16 scale) |
//! | Q4_1, Q5_1 | [`BlockQ8A`] as `block_q8_1` (plus `s = f16(d · Σq)`) |
//! | Q2_K..Q6_K, IQ4_XS | [`BlockQ8K`] (`block_q8_K`: 256 codes, f32 scale, sums per 16) |
//! | F16 / BF16 / F32 | f32 values rounded to f16 / bf16 / kept |
//!
//! The conversions reproduce ggml's (`quantize_row_q8_0`/`_q8_1` of the x86
//! build, `quantize_row_q8_K_ref`) bit for bit, so the integer parts of our
//! dot products equal llama.cpp's and only the order of float additions
//! differs: that is what keeps our logits within rounding noise of llama.cpp's.
//!
//! Each block type has a portable kernel ([`portable`]) and the hot types have
//! AVX2 ([`avx2`]) and AVX-512 VNNI ([`avx512`]) kernels, picked at run time
//! ([`isa_level`]; `FERROQUANT_SIMD=portable|avx2|avx512` caps the choice).
//! NEON kernels ([`neon`]) serve aarch64. Every kernel computes one weight row
//! against all tokens of the batch in tiles of tokens, so a decoded block is
//! reused across the tile: that is what makes prompt processing faster than
//! token-by-token. The exception is Q4_0 in llama.cpp's repacked order
//! ([`repacked_by_ggml`]), whose kernels take eight rows at once (lanes = rows).

pub mod attn;
pub mod avx2;
pub mod avx512;
pub mod neon;
pub mod portable;
pub mod vexp;

use std::borrow::Cow;
use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quants::{blocks_of, float, iq4, k_quants, legacy, with_block, Block, QType, QK_K};

/// 32 activations quantized to i8 with one scale (ggml `block_q8_0`, and
/// `block_q8_1` through `dsum`), plus the sums of the codes of each half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BlockQ8A {
    /// The scale, at f16 precision (stored as f32).
    pub d: f32,
    /// ggml `block_q8_1::s`: `f16(d_f32 · Σ codes)`, as f32.
    pub dsum: f32,
    pub sum: [i16; 2],
    pub qs: [i8; 32],
}

/// 256 activations quantized to i8 with one f32 scale and the sums of each 16
/// codes (ggml `block_q8_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub bsums: [i16; 16],
    pub qs: [i8; QK_K],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// The activation form a weight type multiplies with (ggml's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    F32,
    F16,
    BF16,
    /// [`BlockQ8A`] per 32 values (Q8_0 and Q8_1 share it).
    Q8,
    /// [`BlockQ8K`] per 256 values.
    Q8K,
    /// [`BlockQ8K`] per 256 values as ggml's repacked K-quant kernels read
    /// them ([`Acts::q8k_x4`]).
    Q8KX4,
}

/// Activations of a batch: `ntok` rows of `cols` f32 values, and the forms the
/// kernels read, each computed once on first use.
pub struct Acts<'a> {
    pub x: &'a [f32],
    pub ntok: usize,
    pub cols: usize,
    q8: OnceLock<Vec<BlockQ8A>>,
    q8k: OnceLock<Vec<BlockQ8K>>,
    q8k_x4: OnceLock<Vec<BlockQ8K>>,
    x16: OnceLock<Vec<f32>>,
    xb16: OnceLock<Vec<f32>>,
}

impl<'a> Acts<'a> {
    /// Wrap `x` (`ntok × cols`, row-major).
    pub fn new(x: &'a [f32], cols: usize) -> Result<Self> {
        if cols == 0 || x.len() % cols != 0 {
            return Err(Error::Shape(format!(
                "{} activations do not make rows of {cols}",
                x.len()
            )));
        }
        Ok(Acts {
            x,
            ntok: x.len() / cols,
            cols,
            q8: OnceLock::new(),
            q8k: OnceLock::new(),
            q8k_x4: OnceLock::new(),
            x16: OnceLock::new(),
            xb16: OnceLock::new(),
        })
    }

    /// Compute the form `kind` now (before a parallel region reads it).
    pub fn prepare(&self, kind: ActKind) -> Result<()> {
        let need = match kind {
            ActKind::Q8 => 32,
            ActKind::Q8K | ActKind::Q8KX4 => QK_K,
            _ => 1,
        };
        if self.cols % need != 0 {
            return Err(Error::Shape(format!(
                "rows of {} activations do not divide into blocks of {need}",
                self.cols
            )));
        }
        match kind {
            ActKind::F32 => {}
            ActKind::F16 => {
                self.f16();
            }
            ActKind::BF16 => {
                self.bf16();
            }
            ActKind::Q8 => {
                self.q8();
            }
            ActKind::Q8K => {
                self.q8k();
            }
            ActKind::Q8KX4 => {
                self.q8k_x4();
            }
        }
        Ok(())
    }

    /// 32-value blocks of all tokens (token `t` at `t * cols / 32`).
    pub fn q8(&self) -> &[BlockQ8A] {
        self.q8.get_or_init(|| {
            let mut q8 = vec![BlockQ8A::default(); self.x.len() / 32];
            q8.par_chunks_mut(64)
                .zip(self.x.par_chunks(64 * 32))
                .for_each(|(dst, src)| quantize_q8(src, dst));
            q8
        })
    }

    /// 256-value blocks of all tokens (token `t` at `t * cols / 256`).
    pub fn q8k(&self) -> &[BlockQ8K] {
        self.q8k.get_or_init(|| {
            let mut q8 = vec![BlockQ8K::default(); self.x.len() / QK_K];
            q8.par_chunks_mut(16)
                .zip(self.x.par_chunks(16 * QK_K))
                .for_each(|(dst, src)| quantize_q8k(src, dst));
            q8
        })
    }

    /// 256-value blocks as ggml's repacked K-quant matmul makes them
    /// (`forward_mul_mat` in repack.cpp): the tokens of whole groups of four
    /// by `ggml_quantize_mat_q8_K_4x8` ([`quantize_q8k_x4`]), the last
    /// `ntok % 4` by `quantize_row_q8_K` ([`quantize_q8k`]). The two differ
    /// only in which sign wins when `+amax` and `-amax` both occur.
    pub fn q8k_x4(&self) -> &[BlockQ8K] {
        self.q8k_x4.get_or_init(|| {
            let per_tok = self.cols / QK_K;
            let grouped = (self.ntok - self.ntok % 4) * per_tok;
            let mut q8 = vec![BlockQ8K::default(); self.x.len() / QK_K];
            let (a, b) = q8.split_at_mut(grouped);
            let (xa, xb) = self.x.split_at(grouped * QK_K);
            a.par_chunks_mut(16)
                .zip(xa.par_chunks(16 * QK_K))
                .for_each(|(dst, src)| quantize_q8k_x4(src, dst));
            b.par_chunks_mut(16)
                .zip(xb.par_chunks(16 * QK_K))
                .for_each(|(dst, src)| quantize_q8k(src, dst));
            q8
        })
    }

    /// The values rounded to f16 (what ggml multiplies F16 weights with).
    pub fn f16(&self) -> &[f32] {
        self.x16.get_or_init(|| {
            self.x
                .par_iter()
                .with_min_len(4096)
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect()
        })
    }

    /// The values rounded to bf16 (what ggml multiplies BF16 weights with).
    pub fn bf16(&self) -> &[f32] {
        self.xb16.get_or_init(|| {
            self.x
                .par_iter()
                .with_min_len(4096)
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        })
    }

    /// The f32 values of the form `kind` (float kinds only).
    pub fn floats(&self, kind: ActKind) -> &[f32] {
        match kind {
            ActKind::F16 => self.f16(),
            ActKind::BF16 => self.bf16(),
            _ => self.x,
        }
    }
}

/// Round to nearest, ties to even, for |v| < 2^22 (ggml `nearest_int`, and
/// `_mm256_round_ps(_MM_ROUND_NEAREST)` in the default rounding mode).
#[inline(always)]
fn rne(v: f32) -> i32 {
    ((v + 12_582_912.0) - 12_582_912.0) as i32
}

/// ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1`: `d = amax / 127`
/// kept at f16, codes `round(x · 127 / amax)`, `s = f16(d · Σ codes)`.
pub fn quantize_q8(x: &[f32], dst: &mut [BlockQ8A]) {
    for (blk, xs) in dst.iter_mut().zip(x.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sums = [0i32; 2];
        for (j, (q, v)) in blk.qs.iter_mut().zip(xs).enumerate() {
            let c = rne(v * id).clamp(-127, 127);
            *q = c as i8;
            sums[j / 16] += c;
        }
        blk.d = half::f16::from_f32(d).to_f32();
        blk.sum = [sums[0] as i16, sums[1] as i16];
        blk.dsum = half::f16::from_f32(d * (sums[0] + sums[1]) as f32).to_f32();
    }
}

/// ggml `quantize_row_q8_K_ref`: the scale from the value of largest
/// magnitude (with its sign), `iscale = -127 / max`, `d = 1 / iscale`.
pub fn quantize_q8k(x: &[f32], dst: &mut [BlockQ8K]) {
    for (blk, xs) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *blk = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = rne(iscale * v).min(127) as i8;
        }
        for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        blk.d = 1.0 / iscale;
    }
}

/// ggml's x86 `ggml_quantize_mat_q8_K_4x8` (the activations of the repacked
/// K-quant kernels), per block: as [`quantize_q8k`] except that the scale's
/// sign comes from whether `+amax` occurs (`iscale = -127 / amax`) or not
/// (`127 / amax`), where `quantize_row_q8_K` takes the sign of the first
/// value of largest magnitude. The sums per 16 are the same integers.
pub fn quantize_q8k_x4(x: &[f32], dst: &mut [BlockQ8K]) {
    for (blk, xs) in dst.iter_mut().zip(x.chunks_exact(QK_K)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 {
            *blk = BlockQ8K::default();
            continue;
        }
        let iscale = if xs.contains(&amax) {
            -127.0 / amax
        } else {
            127.0 / amax
        };
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = rne(iscale * v).clamp(-128, 127) as i8;
        }
        for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        blk.d = 1.0 / iscale;
    }
}

/// The instruction-set tiers of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// The AVX2 tier plus AVX-512 F/BW/VL/VNNI.
    Avx512,
    /// aarch64 NEON.
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512 => "avx512f+bw+vl+vnni",
            Isa::Neon => "neon",
        }
    }
}

/// What this CPU supports, capped by `FERROQUANT_SIMD` (checked once).
pub fn isa_level() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        let cap = match std::env::var("FERROQUANT_SIMD").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => Isa::Avx2,
            _ if std::env::var_os("FERROQUANT_NO_SIMD").is_some() => Isa::Portable,
            _ => Isa::Neon,
        };
        match detected() {
            Isa::Neon if cap != Isa::Portable => Isa::Neon,
            top => top.min(cap),
        }
    })
}

/// Every tier this CPU can run, lowest first (for tests and benchmarks).
pub fn available_isas() -> Vec<Isa> {
    match detected() {
        Isa::Neon => vec![Isa::Portable, Isa::Neon],
        top => [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= top)
            .collect(),
    }
}

fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avx512 = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        if avx512 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            Isa::Neon
        } else {
            Isa::Portable
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Isa::Portable
    }
}

/// Whether the AVX2 + FMA + F16C kernels run here.
pub fn has_avx2() -> bool {
    matches!(isa_level(), Isa::Avx2 | Isa::Avx512)
}

/// The instruction set the dispatch picked, for reports.
pub fn isa() -> &'static str {
    isa_level().name()
}

/// A weight row type the kernels can multiply: for every token `t` of
/// `acts`, `out[t] = dot(row, activations of t)`.
pub trait RowDot: Block {
    /// The activation form the kernels read.
    const ACT: ActKind;

    /// The kernel of tier `isa` (falling back to a lower tier where this
    /// type has none). `acts` has been prepared for [`RowDot::ACT`].
    fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32], isa: Isa);
}

/// The 18-byte blocks of 32 four-bit codes and an f16 scale that ggml's x86
/// repacked `*_8x8_q8_0` kernels share: Q4_0 (codes `n - 8`) and IQ4_NL
/// (codes from the code book).
pub trait Nib32Block: Block {
    /// Whether the nibbles index [`portable::KVALUES_IQ4NL`] (else `n - 8`).
    const CODE_BOOK: bool;
    fn d_bits(&self) -> u16;
    fn qs(&self) -> &[u8; 16];
}

impl Nib32Block for legacy::BlockQ4_0 {
    const CODE_BOOK: bool = false;
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
    fn qs(&self) -> &[u8; 16] {
        &self.qs
    }
}

impl Nib32Block for iq4::BlockIQ4NL {
    const CODE_BOOK: bool = true;
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
    fn qs(&self) -> &[u8; 16] {
        &self.qs
    }
}

/// Kernel tables: `type => act kind, getter, portable, [avx2], [avx512], [neon]`.
macro_rules! q8_kernels {
    ($($B:ty => $kind:ident, $getter:ident, $port:path,
       [$($avx2:path)?], [$($avx512:path)?], [$($neon:path)?]);* $(;)?) => {$(
        impl RowDot for $B {
            const ACT: ActKind = ActKind::$kind;
            #[allow(unreachable_code, unused_variables)]
            fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32], isa: Isa) {
                let a = acts.$getter();
                $(
                    #[cfg(target_arch = "x86_64")]
                    if isa == Isa::Avx512 {
                        // SAFETY: AVX-512 F/BW/VL/VNNI (and AVX2/FMA/F16C) were
                        // detected; `a` holds `out.len()` tokens of the row's blocks.
                        unsafe { $avx512(row, a, out) };
                        return;
                    }
                )?
                $(
                    #[cfg(target_arch = "x86_64")]
                    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
                        // SAFETY: AVX2/FMA/F16C were detected; shapes as above.
                        unsafe { $avx2(row, a, out) };
                        return;
                    }
                )?
                $(
                    #[cfg(target_arch = "aarch64")]
                    if isa == Isa::Neon {
                        // SAFETY: NEON was detected; shapes as above.
                        unsafe { $neon(row, a, out) };
                        return;
                    }
                )?
                $port(row, a, out)
            }
        }
    )*};
}

q8_kernels!(
    legacy::BlockQ4_0 => Q8, q8, portable::dot_groups, [avx2::q4_0], [avx512::q4_0], [neon::q4_0];
    legacy::BlockQ4_1 => Q8, q8, portable::dot_groups, [avx2::q4_1], [avx512::q4_1], [neon::q4_1];
    legacy::BlockQ5_0 => Q8, q8, portable::dot_groups, [avx2::q5_0], [avx512::q5_0], [];
    legacy::BlockQ5_1 => Q8, q8, portable::dot_groups, [avx2::q5_1], [avx512::q5_1], [];
    legacy::BlockQ8_0 => Q8, q8, portable::dot_groups, [avx2::q8_0], [avx512::q8_0], [neon::q8_0];
    iq4::BlockIQ4NL => Q8, q8, portable::dot_groups, [avx2::iq4_nl], [avx512::iq4_nl], [];
    k_quants::BlockQ2K => Q8K, q8k, portable::dot_k, [avx2::q2_k], [avx512::q2_k], [];
    k_quants::BlockQ3K => Q8K, q8k, portable::dot_k, [avx2::q3_k], [avx512::q3_k], [];
    k_quants::BlockQ4K => Q8K, q8k, portable::dot_k, [avx2::q4_k], [avx512::q4_k], [];
    k_quants::BlockQ5K => Q8K, q8k, portable::dot_k, [avx2::q5_k], [avx512::q5_k], [];
    k_quants::BlockQ6K => Q8K, q8k, portable::dot_k, [avx2::q6_k], [avx512::q6_k], [];
    iq4::BlockIQ4XS => Q8K, q8k, portable::dot_k, [avx2::iq4_xs], [avx512::iq4_xs], [];
);

macro_rules! float_kernels {
    ($($B:ty => $kind:ident, $value:expr, $avx2:path, $avx512:path);* $(;)?) => {$(
        impl RowDot for $B {
            const ACT: ActKind = ActKind::$kind;
            #[allow(unreachable_code, unused_variables)]
            fn row_dot(row: &[Self], acts: &Acts, out: &mut [f32], isa: Isa) {
                let x = acts.floats(ActKind::$kind);
                #[cfg(target_arch = "x86_64")]
                {
                    if isa == Isa::Avx512 {
                        // SAFETY: AVX-512F (+ the AVX2 tier) detected; `x`
                        // holds `out.len()` rows of `row.len()` values.
                        unsafe { $avx512(bytemuck::cast_slice(row), x, out) };
                        return;
                    }
                    if isa == Isa::Avx2 {
                        // SAFETY: AVX2/FMA/F16C detected; shapes as above.
                        unsafe { $avx2(bytemuck::cast_slice(row), x, out) };
                        return;
                    }
                }
                portable::dot_float(row, x, out, $value)
            }
        }
    )*};
}

float_kernels!(
    float::BlockF32 => F32, |b: &float::BlockF32| b.value, avx2::f32_rows, avx512::f32_rows;
    float::BlockF16 => F16, |b: &float::BlockF16| b.value.to_f32(), avx2::f16_rows, avx512::f16_rows;
    float::BlockBF16 => BF16, |b: &float::BlockBF16| b.to_f32(), avx2::bf16_rows, avx512::bf16_rows;
);

/// A quantized weight matrix: `rows` rows of `cols` weights, row-major bytes.
#[derive(Clone, Copy)]
pub struct WeightView<'a> {
    pub qtype: QType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl WeightView<'_> {
    pub fn check(&self) -> Result<()> {
        let need = self.qtype.row_bytes(self.cols)? * self.rows;
        if self.bytes.len() != need {
            return Err(Error::Shape(format!(
                "{} weights of {} rows × {} columns need {need} bytes, {} given",
                self.qtype.name(),
                self.rows,
                self.cols,
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// The activation form weights of `qtype` multiply with.
pub fn act_kind(qtype: QType) -> ActKind {
    with_block!(qtype, B => B::ACT)
}

/// `out[t][r] = dot(weight row r, activations of token t)`; `out` is
/// `acts.ntok × w.rows`, row-major. Parallel over weight rows.
pub fn matmul(w: &WeightView, acts: &Acts, out: &mut [f32]) -> Result<()> {
    matmul_isa(w, acts, out, isa_level())
}

/// [`matmul`] through the portable kernels only (for tests and comparisons).
pub fn matmul_portable(w: &WeightView, acts: &Acts, out: &mut [f32]) -> Result<()> {
    matmul_isa(w, acts, out, Isa::Portable)
}

/// [`matmul`] with the kernels of tier `isa` (at most [`isa_level`]).
pub fn matmul_isa(w: &WeightView, acts: &Acts, out: &mut [f32], isa: Isa) -> Result<()> {
    w.check()?;
    if acts.cols != w.cols {
        return Err(Error::Shape(format!(
            "activations have {} columns, the weight {}",
            acts.cols, w.cols
        )));
    }
    if out.len() != acts.ntok * w.rows {
        return Err(Error::Shape(format!(
            "output holds {} values, {} tokens × {} rows need {}",
            out.len(),
            acts.ntok,
            w.rows,
            acts.ntok * w.rows
        )));
    }
    let isa = isa.min(isa_level());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && matmul_ggml_x86(w, acts, out, isa)? {
        return Ok(());
    }
    acts.prepare(act_kind(w.qtype))?;
    with_block!(w.qtype, B => matmul_typed::<B>(w, acts, out, isa));
    Ok(())
}

/// The x86 cases where llama.cpp's CPU backend leaves `ggml_vec_dot_*`'s
/// order of float operations, done in its order (false: none applies):
///
/// - weights it repacks ([`repacked_by_ggml`]): Q4_0 and IQ4_NL through
///   `ggml_gemm/gemv_q4_0_8x8_q8_0` / `_iq4_nl_8x8_q8_0`, Q4_K through
///   `ggml_gemm/gemv_q4_K_8x8_q8_K` (with activations from
///   [`Acts::q8k_x4`]);
/// - Q6_K with 8 tokens or more, which its "tiled" K-quant matmul
///   (ggml-cpu/tiled/) takes: one `fma(f32(sumi) · d_w, d_a, acc)` per
///   super-block instead of `ggml_vec_dot_q6_K_q8_K`'s eight lane FMAs.
///
/// (Q5_0, Q8_0, and Q4_0 / IQ4_NL when not repacked, go through llamafile's
/// tinyBLAS from two tokens, in the vec_dot order, which our kernels follow.)
#[cfg(target_arch = "x86_64")]
fn matmul_ggml_x86(w: &WeightView, acts: &Acts, out: &mut [f32], isa: Isa) -> Result<bool> {
    let avx512 = isa == Isa::Avx512;
    // One x86 kernel, of the detected tier.
    macro_rules! tier {
        ($k:ident($($a:expr),*)) => {
            if avx512 {
                avx512::$k($($a),*)
            } else {
                avx2::$k($($a),*)
            }
        };
    }
    // A kernel taking `$K` rows at once and the tokens' Q8 blocks.
    macro_rules! q8_rows {
        ($B:ty, $K:literal, $k:ident) => {{
            acts.prepare(ActKind::Q8)?;
            let a = acts.q8();
            matmul_rows::<$B, $K>(w, acts.ntok, out, &|rows, o| {
                // SAFETY: the tier was detected; `a` holds `o.len() / $K`
                // tokens of the rows' blocks (prepared as Q8 above).
                unsafe { tier!($k(rows, a, o)) }
            });
        }};
    }
    match w.qtype {
        QType::Q4_0 if repacked_by_ggml(w) => q8_rows!(legacy::BlockQ4_0, 8, q4_0_x8),
        QType::IQ4_NL if repacked_by_ggml(w) => q8_rows!(iq4::BlockIQ4NL, 8, iq4_nl_x8),
        QType::Q4_K if repacked_by_ggml(w) => {
            acts.prepare(ActKind::Q8KX4)?;
            let a = acts.q8k_x4();
            matmul_rows::<k_quants::BlockQ4K, 8>(w, acts.ntok, out, &|rows, o| {
                // SAFETY: as above, the activations prepared as Q8KX4.
                unsafe { tier!(q4_k_x8(rows, a, o)) }
            });
        }
        // Not a different order: for a batch, two rows per pass share the
        // activation loads (one token gains nothing from it).
        QType::Q8_0 if w.rows % 2 == 0 && acts.ntok >= 2 => {
            q8_rows!(legacy::BlockQ8_0, 2, q8_0_x2)
        }
        QType::Q5_0 if w.rows % 2 == 0 && acts.ntok >= 2 => {
            q8_rows!(legacy::BlockQ5_0, 2, q5_0_x2)
        }
        // tinyBLAS's order either way; two rows per pass share the loads.
        QType::F16 | QType::F32 if w.rows % 2 == 0 && acts.ntok >= 2 && w.cols % 16 == 0 => {
            let f16 = w.qtype == QType::F16;
            let kind = if f16 { ActKind::F16 } else { ActKind::F32 };
            acts.prepare(kind)?;
            let x = acts.floats(kind);
            // SAFETY (both): the tier was detected; `rows` holds two rows of
            // `w.cols` (a multiple of 16), `x` the tokens' values.
            if f16 {
                matmul_rows::<float::BlockF16, 2>(w, acts.ntok, out, &|rows, o| unsafe {
                    tier!(f16_rows2(bytemuck::cast_slice(rows), x, o))
                });
            } else {
                matmul_rows::<float::BlockF32, 2>(w, acts.ntok, out, &|rows, o| unsafe {
                    tier!(f32_rows2(bytemuck::cast_slice(rows), x, o))
                });
            }
        }
        QType::Q6_K if acts.ntok >= TILED_MIN_TOKENS => {
            acts.prepare(ActKind::Q8K)?;
            let a = acts.q8k();
            matmul_with::<k_quants::BlockQ6K>(w, acts, out, &|row, _, o| {
                // SAFETY: as above, the activations prepared as Q8K.
                unsafe { tier!(q6_k_tiled(row, a, o)) }
            });
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// From how many tokens llama.cpp's CPU backend multiplies K-quant weights
/// (those not repacked) with its tiled matmul (`ggml_tiled_min_batch`).
pub const TILED_MIN_TOKENS: usize = 8;

/// Whether llama.cpp's x86 build (AVX2 and up) moves these weights to its
/// CPU "repack" buffer (`ggml_repack_get_optimal_repack_type`, repack.cpp)
/// and we follow its kernels: Q4_0 with a multiple of 8 rows becomes
/// `block_q4_0x8` (`ggml_gemm/gemv_q4_0_8x8_q8_0`), Q4_K `block_q4_Kx8`
/// (`ggml_gemm/gemv_q4_K_8x8_q8_K`), IQ4_NL `block_iq4_nlx8` (the Q4_0
/// kernels with the code book), whose orders of float operations differ from
/// `ggml_vec_dot_*`'s. (It also repacks MXFP4, and Q2_K with AVX-512; no
/// kernel of ours follows those.)
pub fn repacked_by_ggml(w: &WeightView) -> bool {
    matches!(w.qtype, QType::Q4_0 | QType::Q4_K | QType::IQ4_NL) && w.rows % 8 == 0
}

fn matmul_typed<B: RowDot>(w: &WeightView, acts: &Acts, out: &mut [f32], isa: Isa) {
    matmul_with::<B>(w, acts, out, &|row, a, o| B::row_dot(row, a, o, isa))
}

type RowKernel<'k, B> = dyn Fn(&[B], &Acts, &mut [f32]) + Sync + 'k;

fn matmul_with<B: Block>(w: &WeightView, acts: &Acts, out: &mut [f32], kernel: &RowKernel<B>) {
    let blocks: Cow<[B]> = blocks_of::<B>(w.bytes);
    let per_row = w.cols / B::BLOCK_SIZE;
    let ntok = acts.ntok;
    let threads = rayon::current_num_threads().max(1);
    // Enough rows per task to amortize scheduling, enough tasks to balance.
    let chunk = if threads == 1 {
        w.rows
    } else {
        (w.rows / (threads * 8)).clamp(16, 4096)
    };
    let run = |row: usize, dst: &mut [f32]| {
        kernel(&blocks[row * per_row..(row + 1) * per_row], acts, dst)
    };
    if ntok == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, dst)| {
            for (i, o) in dst.iter_mut().enumerate() {
                run(ci * chunk + i, std::slice::from_mut(o));
            }
        });
        return;
    }
    // Row-major [row][token] first, so each task writes one contiguous piece.
    let mut tmp = vec![0f32; w.rows * ntok];
    tmp.par_chunks_mut(chunk * ntok)
        .enumerate()
        .for_each(|(ci, dst)| {
            for (i, o) in dst.chunks_exact_mut(ntok).enumerate() {
                run(ci * chunk + i, o);
            }
        });
    out.par_chunks_mut(w.rows)
        .with_min_len(8)
        .enumerate()
        .for_each(|(t, o)| {
            for (r, v) in o.iter_mut().enumerate() {
                *v = tmp[r * ntok + t];
            }
        });
}

/// `K` weight rows (row k's blocks at `k * nb..`) and the `[token][K]`
/// outputs; the kernel holds the activations.
#[cfg(target_arch = "x86_64")]
type RowsKernel<'k, B> = dyn Fn(&[B], &mut [f32]) + Sync + 'k;

/// [`matmul_with`] for a kernel that takes `K` rows at once and writes
/// `out[K t + k]` (row k, token t) for the `ntok` tokens; `w.rows` must be a
/// multiple of `K`.
#[cfg(target_arch = "x86_64")]
fn matmul_rows<B: Block, const K: usize>(
    w: &WeightView,
    ntok: usize,
    out: &mut [f32],
    kernel: &RowsKernel<B>,
) {
    debug_assert!(w.rows % K == 0);
    let blocks: Cow<[B]> = blocks_of::<B>(w.bytes);
    let group = K * (w.cols / B::BLOCK_SIZE);
    let groups = w.rows / K;
    let threads = rayon::current_num_threads().max(1);
    // Groups of K rows per task, as `matmul_with` chooses rows.
    let chunk = if threads == 1 {
        groups.max(1)
    } else {
        (groups / (threads * 8)).clamp((16 / K).max(2), 4096 / K)
    };
    let run = |g: usize, dst: &mut [f32]| kernel(&blocks[g * group..(g + 1) * group], dst);
    if ntok == 1 {
        out.par_chunks_mut(chunk * K)
            .enumerate()
            .for_each(|(ci, dst)| {
                for (i, o) in dst.chunks_exact_mut(K).enumerate() {
                    run(ci * chunk + i, o);
                }
            });
        return;
    }
    // [group][token][K] first, so each task writes one contiguous piece.
    let mut tmp = vec![0f32; w.rows * ntok];
    tmp.par_chunks_mut(chunk * K * ntok)
        .enumerate()
        .for_each(|(ci, dst)| {
            for (i, o) in dst.chunks_exact_mut(K * ntok).enumerate() {
                run(ci * chunk + i, o);
            }
        });
    out.par_chunks_mut(w.rows)
        .with_min_len(8)
        .enumerate()
        .for_each(|(t, o)| {
            for (g, ok) in o.chunks_exact_mut(K).enumerate() {
                ok.copy_from_slice(&tmp[(g * ntok + t) * K..(g * ntok + t + 1) * K]);
            }
        });
}

/// `Σ q[i] · k[i]` for f32 `q` and f16 `k` (the attention scores).
pub fn dot_f32_f16(q: &[f32], k: &[u16]) -> f32 {
    assert!(k.len() >= q.len());
    #[cfg(target_arch = "x86_64")]
    match isa_level() {
        // SAFETY: the tier was detected; the lengths were checked above.
        Isa::Avx512 => return unsafe { avx512::dot_f32_f16(q, k) },
        Isa::Avx2 => return unsafe { avx2::dot_f32_f16(q, k) },
        _ => {}
    }
    q.iter()
        .zip(k)
        .map(|(&a, &b)| a * half::f16::from_bits(b).to_f32())
        .sum()
}

/// `o[i] += w · v[i]` for f16 `v` (the attention-weighted values).
pub fn axpy_f16(o: &mut [f32], w: f32, v: &[u16]) {
    assert!(v.len() >= o.len());
    #[cfg(target_arch = "x86_64")]
    match isa_level() {
        // SAFETY: the tier was detected; the lengths were checked above.
        Isa::Avx512 => return unsafe { avx512::axpy_f16(o, w, v) },
        Isa::Avx2 => return unsafe { avx2::axpy_f16(o, w, v) },
        _ => {}
    }
    for (a, &b) in o.iter_mut().zip(v) {
        *a += w * half::f16::from_bits(b).to_f32();
    }
}

/// Dequantize row `row` of a weight matrix into `dst` (`cols` values).
pub fn dequantize_row(w: &WeightView, row: usize, dst: &mut [f32]) -> Result<()> {
    if row >= w.rows {
        return Err(Error::Value(format!(
            "row {row} out of range ({} rows)",
            w.rows
        )));
    }
    let rb = w.qtype.row_bytes(w.cols)?;
    crate::quants::dequantize(w.qtype, &w.bytes[row * rb..(row + 1) * rb], w.cols, dst)
}

#[cfg(test)]
mod tests;
