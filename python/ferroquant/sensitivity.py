"""Sensitivity of a model's output to quantizing one tensor: the damage table of dynamic
mixed precision.

The damage of quantizing tensor ``W`` alone to ``Q`` is the KL divergence it adds to the
model's output distribution, ``KL(P_float || P_quantized)`` averaged over tokens. At the float
weights that divergence is zero with zero gradient, so to second order

    KL ~= 1/2 * vec(dW)^T F vec(dW),        dW = Q - W,

where ``F`` is the Fisher information of the model's own output distribution (the Hessian of
the KL). We keep its diagonal, estimated without bias on calibration windows: for each window,
labels are sampled from the float model's own softmax at every position, the summed
log-likelihood is back-propagated once, and ``grad**2`` is accumulated per weight (the sampled
labels make cross-position terms vanish in expectation). Then

    damage(W, type) = 1/2 * sum_ij F_ij * (Q_ij - W_ij)**2 / n_tokens

with ``Q`` made by the exact GGUF quantizer (imatrix-weighted when one is given), for every
tensor and candidate type: one forward+backward per calibration window, then only
quantize/dequantize passes (reused across all types and budgets). The same forward passes
accumulate an importance matrix (sum of squared inputs per column of every ``blk.*`` linear,
as llama-imatrix does), used for the tensors' own quantization.

Without torch, the Fisher diagonal is replaced by the importance matrix alone (``F_ij ~
imatrix_j``, llama.cpp's own weighting; no cross-tensor calibration) or by ones; the report
says which proxy was used. ``benches/bench_dynamic.py`` measures the real single-tensor KL on
a sample of (tensor, type) pairs and reports how well the proxy tracks it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

log = logging.getLogger(__name__)
PathLike = Union[str, Path]


class SensitivityError(ValueError):
    """Sensitivity statistics that cannot be computed; the message says why."""


@dataclass
class FisherStats:
    """Diagonal Fisher per HF weight name (float32, HF layout) and the importance matrix."""

    fisher: dict[str, np.ndarray]
    n_tokens: int
    n_windows: int
    imatrix: Any  # ferroquant.imatrix.ImportanceMatrix (blk.* linears, GGUF names)
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays = {f"F::{k}": v for k, v in self.fisher.items()}
        for name, e in self.imatrix.entries.items():
            arrays[f"I2::{name}"] = e.in_sum2
            arrays[f"IC::{name}"] = e.counts
        meta = np.array(
            [self.n_tokens, self.n_windows, self.imatrix.chunk_count, self.imatrix.chunk_size],
            dtype=np.int64,
        )
        np.savez(tmp, __meta__=meta, __seconds__=np.array([self.seconds]), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: PathLike) -> FisherStats:
        from .imatrix import ImportanceMatrix

        with np.load(path) as z:
            meta = z["__meta__"]
            fisher = {k[3:]: z[k] for k in z.files if k.startswith("F::")}
            imat = ImportanceMatrix(
                chunk_count=int(meta[2]), chunk_size=int(meta[3]), source=str(path)
            )
            for k in z.files:
                if k.startswith("I2::"):
                    name = k[4:]
                    imat.add(name, z[k], z[f"IC::{name}"])
            seconds = float(z["__seconds__"][0])
        return cls(fisher, int(meta[0]), int(meta[1]), imat, seconds)


def calibration_windows(
    model: Any, tok: Any, calib: Optional[str], nsamples: int, seqlen: int, seed: int
) -> np.ndarray:
    """(nsamples, seqlen) token windows from ``calib`` (see :mod:`ferroquant.calib`)."""
    from .calib import DEFAULT_SOURCE, load_calibration

    return load_calibration(calib or DEFAULT_SOURCE, tok, nsamples, seqlen, seed, model=model)


def fisher_stats(
    model: Any,
    gguf_name: Any,
    windows: np.ndarray,
    seed: int = 0,
    progress: bool = True,
) -> FisherStats:
    """Diagonal Fisher of every 2-D weight (HF names) and an importance matrix of the
    ``blk.*`` linears, from one forward + backward per window (labels sampled from the
    model's own output)."""
    import torch
    from tqdm import tqdm

    from .imatrix import ImportanceMatrix

    t0 = time.perf_counter()
    params: dict[str, Any] = {}
    for name, p in model.named_parameters():
        p.requires_grad_(False)
        if p.ndim == 2:
            params[name] = p
    if not params:
        raise SensitivityError("the model has no 2-D weights")
    for p in params.values():
        p.requires_grad_(True)
    names = list(params)
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(target: str) -> Any:
        def hook(_mod: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            s = (flat * flat).sum(dim=0).to(torch.float64)
            sums[target] = sums[target] + s if target in sums else s
            counts[target] = counts.get(target, 0) + int(flat.shape[0])

        return hook

    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        try:
            target = gguf_name(mod_name + ".weight")
        except ValueError:
            continue
        if target is None or not target.startswith("blk."):
            continue
        hooks.append(mod.register_forward_pre_hook(hook_for(target)))
    gen = torch.Generator().manual_seed(int(seed))
    n_tokens = 0
    model.eval()
    try:
        for w in tqdm(windows, desc="sensitivity: fisher", unit="window", disable=not progress):
            ids = torch.as_tensor(np.asarray(w, dtype=np.int64)).reshape(1, -1)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            with torch.no_grad():
                probs = torch.softmax(logits.detach(), dim=-1)
                labels = torch.multinomial(probs, 1, generator=gen).reshape(-1)
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            for n, g in zip(names, grads):
                fisher[n].addcmul_(g, g)
            n_tokens += int(ids.shape[1])
            del logits, loss, grads
    finally:
        for h in hooks:
            h.remove()
        for p in params.values():
            p.requires_grad_(False)
    imat = ImportanceMatrix(chunk_count=len(windows), chunk_size=int(np.shape(windows)[1]))
    for name in sorted(sums):
        imat.add(name, sums[name].cpu().numpy(), float(counts[name]))
    out = {n: f.cpu().numpy() for n, f in fisher.items()}
    return FisherStats(out, n_tokens, len(windows), imat, time.perf_counter() - t0)


# ---- damage of one tensor in one type ------------------------------------------------------


FLOAT_TYPES = ("F32", "F16", "BF16")


def roundtrip(w: np.ndarray, qtype: str, imatrix: Optional[np.ndarray] = None) -> np.ndarray:
    """``w`` (rows, cols) float32 quantized to ``qtype`` and back, as llama.cpp would read it."""
    from . import quants

    if qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16).astype(np.float32)
    if qtype == "BF16":
        bits = w.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        return rounded.view(np.float32)
    q = quants.quantize(w, qtype, imatrix if qtype != "Q8_0" else None)
    return quants.dequantize(q, qtype, w.shape)


def damage(
    w: np.ndarray, qtype: str, weight: np.ndarray, imatrix: Optional[np.ndarray] = None
) -> float:
    """``sum(weight * (roundtrip(w) - w)**2)`` for a (rows, cols) ``w``: ``weight`` is the
    Fisher diagonal (same shape) or one importance value per column."""
    err = roundtrip(w, qtype, imatrix) - w
    sq = err * err
    if weight.shape == w.shape:
        return float((sq * weight).sum(dtype=np.float64))
    return float(sq.sum(axis=0, dtype=np.float64) @ np.asarray(weight, np.float64).reshape(-1))


# ---- real single-tensor KL (validation, and the few most important tensors) ----------------


class SingleTensorKL:
    """The real KL divergence of the float HF model with one weight replaced, on fixed
    windows: ``kl(hf_name, new_weight)`` (torch; the float model's log-probabilities are
    computed once)."""

    def __init__(self, model: Any, windows: np.ndarray, positions: Optional[slice] = None):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.windows = [
            torch.as_tensor(np.asarray(w, dtype=np.int64)).reshape(1, -1) for w in windows
        ]
        self.positions = positions or slice(None)
        self.params = dict(model.named_parameters())
        with torch.inference_mode():
            self.ref = [self._logp(ids) for ids in self.windows]

    def _logp(self, ids: Any) -> Any:
        out = self.model(input_ids=ids, use_cache=False).logits[0, self.positions].float()
        return self.torch.log_softmax(out, dim=-1)

    def kl(self, hf_name: str, new_weight: np.ndarray) -> float:
        torch = self.torch
        p = self.params[hf_name]
        old = p.data.clone()
        try:
            p.data.copy_(torch.as_tensor(np.asarray(new_weight, dtype=np.float32)).reshape(p.shape))
            total, n = 0.0, 0
            with torch.inference_mode():
                for ids, rp in zip(self.windows, self.ref):
                    lp = self._logp(ids)
                    total += float((rp.exp() * (rp - lp)).sum())
                    n += rp.shape[0]
        finally:
            p.data.copy_(old)
        return total / max(n, 1)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x: Sequence[float]) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
