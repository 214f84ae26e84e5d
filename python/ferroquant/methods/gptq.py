"""The layer-streaming GPTQ pipeline (torch + transformers), and one-linear GPTQ.

1. Run the calibration windows through the model up to its first decoder layer and keep that
   layer's inputs (hidden states and keyword arguments: position embeddings, masks). The model
   runs with ``use_cache=False``: a KV cache handed to the decoder layers would mix batches.
2. For each decoder layer in turn (only it and its activations on the device; the rest stays
   on the CPU): for each group of linears in true-sequential order (q/k/v, o, gate/up, down),
   hooks accumulate each linear's Hessian ``H = 2 XᵀX / n`` while the layer runs on the
   current inputs, then the group's linears are quantized (Rust core on CPU, torch on CUDA)
   and their weights replaced by the dequantized ones, so later groups see quantized upstream
   activations. Finally the quantized layer runs once more and its outputs are the next
   layer's inputs.

Each linear's reconstruction error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` is logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import _native

log = logging.getLogger(__name__)

# True-sequential order of a Llama-style decoder layer; linears not listed run last, together.
SEQUENTIAL_GROUPS: list[list[str]] = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]


# GGUF types GPTQ rounds onto with error feedback (the Rust core's GGUF grids).
GPTQ_GGUF_GRIDS = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip


@dataclass
class GridSpec:
    """What one linear is quantized onto (a uniform grid or a GGUF block type)."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    act_order: bool = False
    static_groups: bool = False
    percdamp: float = 0.01
    block_size: int = 128
    qtype: Optional[str] = None  # a GGUF block type (GPTQ_GGUF_GRIDS)
    # GGUF grids: block scales from llama.cpp's importance-weighted search with diag(H) as
    # the importance matrix (what llama-quantize --imatrix does), instead of its plain rule.
    weighted_fit: bool = True


def gptq_linear(
    w: np.ndarray, h: np.ndarray, spec: GridSpec, device: str = "cpu"
) -> dict[str, Any]:
    """GPTQ of one weight (out, in) with its Hessian (in, in): Rust on CPU, torch elsewhere."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    h = np.ascontiguousarray(h, dtype=np.float32)
    if spec.qtype is not None and spec.qtype not in GPTQ_GGUF_GRIDS:
        # A GGUF type without a GPTQ grid yet (IQ4): llama.cpp's own quantizer.
        return gguf_rtn(w, spec.qtype)
    if device == "cpu" or spec.qtype is not None:
        res = _native.gptq_quantize(
            w,
            h,
            bits=spec.bits,
            group_size=spec.group_size,
            sym=spec.sym,
            act_order=spec.act_order,
            static_groups=spec.static_groups,
            percdamp=spec.percdamp,
            block_size=spec.block_size,
            qtype=spec.qtype,
            weighted_fit=spec.weighted_fit,
        )
        res["qtype"] = spec.qtype
        return res
    from .gptq_torch import gptq_torch

    return gptq_torch(
        w,
        h,
        bits=spec.bits,
        group_size=spec.group_size,
        sym=spec.sym,
        act_order=spec.act_order,
        static_groups=spec.static_groups,
        percdamp=spec.percdamp,
        block_size=spec.block_size,
        device=device,
    )


def gguf_rtn(w: np.ndarray, qtype: str) -> dict[str, Any]:
    """llama.cpp's reference quantizer for ``qtype`` (blocks, dequant), as a GPTQ-like result."""
    rows, cols = w.shape
    blocks = _native.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)
    deq = _native.dequantize(blocks, qtype, rows, cols)
    return {
        "blocks": blocks,
        "dequant": deq,
        "qtype": qtype,
        "loss": float(((w - deq).astype(np.float64) ** 2).sum() / 2),
        "gptq": False,
    }


def relative_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``: the share of the layer output's energy lost."""
    d = (w - q).astype(np.float64)
    hd = h.astype(np.float64)
    w64 = w.astype(np.float64)
    num = float(((d @ hd) * d).sum())
    den = float(((w64 @ hd) * w64).sum())
    return num / den if den > 0 else 0.0


def decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__}: no decoder layers at model.model.layers; "
            "only Llama-style causal LMs are supported"
        )
    return layers


def _to(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class _Caught(Exception):
    pass


def capture_layer0_inputs(model: Any, calib: np.ndarray, batch: int) -> list[tuple[Any, dict]]:
    """(hidden_states, kwargs) that the first decoder layer receives, per batch of windows."""
    import torch

    layers = decoder_layers(model)
    caught: list[tuple[Any, dict]] = []

    def hook(_mod: Any, args: tuple, kwargs: dict) -> None:
        hs = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")}
        kw["use_cache"] = False
        caught.append((hs.detach(), kw))
        raise _Caught

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for b0 in range(0, calib.shape[0], batch):
                ids = torch.as_tensor(calib[b0 : b0 + batch], device=_param_device(model))
                try:
                    model(input_ids=ids, use_cache=False)
                except _Caught:
                    pass
    finally:
        handle.remove()
    if len(caught) != -(-calib.shape[0] // batch):
        raise RuntimeError("the first decoder layer was not reached for every batch")
    return caught


def _param_device(model: Any) -> Any:
    return next(model.parameters()).device


def _layer_out(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _groups(names: list[str]) -> list[list[str]]:
    left = list(names)
    groups = []
    for g in SEQUENTIAL_GROUPS:
        present = [n for n in g if n in left]
        if present:
            groups.append(present)
            left = [n for n in left if n not in present]
    if left:
        groups.append(left)
    return groups


def quantize_model(
    model: Any,
    calib: np.ndarray,
    spec_for: Callable[[str], Optional[GridSpec]],
    device: str = "cpu",
    batch: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """GPTQ over every decoder layer; returns each quantized linear's result by module name.

    ``spec_for(module_name)`` gives the grid of one linear, or None to leave it in float.
    The model's weights are replaced by their dequantized values in place.
    """
    import torch
    from tqdm import tqdm

    model.config.use_cache = False
    dev = torch.device(device)
    layers = decoder_layers(model)
    home = _param_device(model)
    t0 = time.perf_counter()
    batches = capture_layer0_inputs(model, calib, batch)
    batches = [(hs.to(dev), _to(kw, dev)) for hs, kw in batches]
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(range(len(layers)), desc="gptq", unit="layer", disable=not progress)
    for li in bar:
        layer = layers[li].to(dev)
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear) and n}
        for group in _groups(list(linears)):
            specs = {n: spec_for(f"model.layers.{li}.{n}") for n in group}
            todo = [n for n in group if specs[n] is not None]
            if not todo:
                continue
            hess: dict[str, Any] = {}
            counts = dict.fromkeys(todo, 0)
            # Linears fed the same tensor (q/k/v, gate/up) share one Hessian.
            alias: dict[str, str] = {}
            state: dict[str, Any] = {"seen": {}, "left": set()}
            hooks = []
            for n in todo:

                def hook(
                    _m: Any,
                    inp: tuple,
                    n: str = n,
                    where: str = f"model.layers.{li}.{n}",
                    hess: dict = hess,
                    counts: dict = counts,
                    alias: dict = alias,
                    state: dict = state,
                ) -> None:
                    x0 = inp[0]
                    owner = state["seen"].get(id(x0))
                    if owner is not None and owner != n:
                        alias.setdefault(n, owner)
                    else:
                        state["seen"][id(x0)] = n
                        x = x0.detach().reshape(-1, x0.shape[-1]).float()
                        if not bool(torch.isfinite(x).all()):
                            raise ValueError(
                                f"non-finite activations entering {where}: "
                                "the float model overflows on the calibration data"
                            )
                        if n not in hess:
                            hess[n] = torch.zeros(
                                x.shape[1], x.shape[1], dtype=torch.float32, device=x.device
                            )
                        hess[n].addmm_(x.t(), x)
                        counts[n] += x.shape[0]
                    state["left"].discard(n)
                    if not state["left"]:
                        # Every linear of the group has its input: the rest of the
                        # layer is not needed for this batch.
                        raise _Caught

                hooks.append(linears[n].register_forward_pre_hook(hook))
            try:
                with torch.no_grad():
                    for hs, kw in batches:
                        state["seen"] = {}
                        state["left"] = set(todo)
                        try:
                            layer(hs, **kw)
                        except _Caught:
                            pass
            finally:
                for hk in hooks:
                    hk.remove()
            for n, owner in alias.items():
                hess[n] = hess[owner]
                counts[n] = counts[owner]
            for n in todo:
                full = f"model.layers.{li}.{n}"
                h = (hess[n] * (2.0 / max(counts[n], 1))).cpu().numpy()
                mod = linears[n]
                w = mod.weight.detach().float().cpu().numpy()
                res = gptq_linear(w, h, specs[n], device)  # type: ignore[arg-type]
                res["rel_err"] = relative_error(w, res["dequant"], h)
                res["tokens"] = counts[n]
                mod.weight.data = torch.from_numpy(res["dequant"]).to(
                    dtype=mod.weight.dtype, device=mod.weight.device
                )
                log.info(
                    "%s: %s loss %.4g, relative error %.3e",
                    full,
                    specs[n].qtype or f"{specs[n].bits}-bit",  # type: ignore[union-attr]
                    res["loss"],
                    res["rel_err"],
                )
                bar.set_postfix_str(f"{n} err {res['rel_err']:.2e}", refresh=False)
                del res["dequant"]  # the model holds it now
                results[full] = res
        with torch.no_grad():
            batches = [(_layer_out(layer(hs, **kw)), kw) for hs, kw in batches]
        layers[li] = layer.to(home)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    log.info("gptq: %d linears in %.1f s", len(results), time.perf_counter() - t0)
    return results
