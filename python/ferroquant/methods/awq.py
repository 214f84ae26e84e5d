"""AWQ: activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978), in torch.

Per decoder layer, for each group of linears fed by one op (the scaling pairs):

  input_layernorm  -> q_proj, k_proj, v_proj   (block: self_attn)
  v_proj           -> o_proj                   (only when v's outputs are o's inputs: no GQA)
  post_attention_layernorm -> gate_proj, up_proj (block: mlp)
  up_proj          -> down_proj                (block: down_proj)

the per-input-channel scale is ``s = mean|x|**alpha`` (normalised by sqrt(max * min)), with
``alpha`` searched on the paper's grid of 20 points in [0, 1) for the lowest mean squared
error of the block's output when the group's weights ``W * s`` are fake-quantized (group-wise
round-to-nearest with a zero point) and divided back by ``s`` (sec. 3.2). The chosen ``s`` is
folded exactly into the float model: the preceding op's weights are divided by ``s``, the
group's weight columns multiplied by it, so the float model computes the same function. Then,
per linear (not q/k, whose error attention's softmax hides), the weight clipping range of each
output row and group is shrunk on a grid (up to 50%) to the value minimising the group's
output error (AutoAWQ's ``auto_clip``).

The result is a float model whose weights quantize better: export it to GGUF at any type
(:func:`ferroquant.quantize_api`'s gguf route through ``convert``), or fake-quantize it with
:func:`fake_quantize` for the AWQ int grid itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .gptq import _layer_out, _param_device, _to, capture_layer0_inputs, decoder_layers

log = logging.getLogger(__name__)

# HF model types whose decoder layers have the llama layout (plain RMSNorm weight, the four
# scaling pairs above). Gemma's norms scale by (1 + w) and Phi-3 fuses qkv/gate-up; they are
# not supported yet.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class AWQConfig:
    bits: int = 4
    group_size: int = 64
    zero_point: bool = True
    n_grid: int = 20  # alpha grid: 0, 1/20, ..., 19/20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512  # tokens used by the clipping search (per linear)

    def check(self) -> None:
        if self.bits not in (2, 3, 4, 5, 6, 8):
            raise ValueError(f"AWQ bits must be 2..8, got {self.bits}")
        if self.group_size <= 0 and self.group_size != -1:
            raise ValueError(f"group size must be -1 or positive, got {self.group_size}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ValueError(f"max_shrink must be in [0, 1), got {self.max_shrink}")


@dataclass
class ScaleGroup:
    """One scaling pair: ``prev`` (a norm or linear) feeds ``linears``; ``block`` is the
    module whose output error is measured (its name in the layer)."""

    prev: str
    linears: list[str]
    block: str


def scale_groups(layer: Any) -> list[ScaleGroup]:
    """The scaling pairs of one llama-layout decoder layer (see the module docstring)."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = [
        ScaleGroup(
            "input_layernorm",
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            "self_attn",
        )
    ]
    if attn.v_proj.weight.shape[0] == attn.o_proj.weight.shape[1]:
        groups.append(ScaleGroup("self_attn.v_proj", ["self_attn.o_proj"], "self_attn.o_proj"))
    groups.append(ScaleGroup("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], "mlp"))
    if mlp.up_proj.weight.shape[0] == mlp.down_proj.weight.shape[1]:
        groups.append(ScaleGroup("mlp.up_proj", ["mlp.down_proj"], "mlp.down_proj"))
    return groups


def fake_quantize(w: Any, bits: int, group_size: int, zero_point: bool = True) -> Any:
    """Round-to-nearest onto the AWQ grid along the input dimension, dequantized (torch).
    With a zero point: ``scale = (max - min) / (2**bits - 1)`` over the group's range
    extended to hold 0, ``zero = round(-min / scale)``, codes ``round(w / scale) + zero``
    clamped to the grid (:mod:`ferroquant.export.awq_checkpoint` writes the same grid)."""
    import torch

    shape = w.shape
    gs = shape[-1] if group_size == -1 else group_size
    if shape[-1] % gs:
        raise ValueError(f"{shape[-1]} input columns do not split into groups of {gs}")
    g = w.reshape(-1, gs).float()
    if zero_point:
        qmax = 2**bits - 1
        # the range always holds 0 (as GPTQ's asymmetric grid): a one-signed group keeps
        # its far end, where AutoAWQ's plain min/max would clip it at max - min
        hi = g.amax(dim=1, keepdim=True).clamp(min=0)
        lo = g.amin(dim=1, keepdim=True).clamp(max=0)
        scale = ((hi - lo).clamp(min=1e-5)) / qmax
        zero = torch.round(-lo / scale).clamp(0, qmax)
        q = torch.clamp(torch.round(g / scale) + zero, 0, qmax)
        deq = (q - zero) * scale
    else:
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / qmax
        deq = torch.clamp(torch.round(g / scale), -qmax - 1, qmax) * scale
    return deq.reshape(shape).to(w.dtype)


def apply_scales(layer: Any, group: ScaleGroup, s: Any) -> None:
    """Fold per-input-channel scales ``s`` into the float layer: prev / s, linears * s."""
    prev = layer.get_submodule(group.prev)
    s = s.to(prev.weight.dtype)
    if prev.weight.ndim == 1:  # RMSNorm: y = x_hat * w
        prev.weight.div_(s)
    else:  # a linear's output rows
        prev.weight.div_(s.view(-1, 1))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s)
    for name in group.linears:
        lin = layer.get_submodule(name)
        lin.weight.mul_(s.view(1, -1).to(lin.weight.dtype))


class _Inputs:
    """What the modules of one layer receive over the calibration batches."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[tuple, dict]]] = {}

    def hook(self, name: str) -> Any:
        def pre(_m: Any, args: tuple, kwargs: dict) -> None:
            kw = {k: v for k, v in kwargs.items() if k != "past_key_values"}
            self.calls.setdefault(name, []).append((tuple(a.detach() for a in args), kw))

        return pre

    def x(self, name: str) -> Any:
        import torch

        return torch.cat(
            [a[0].reshape(-1, a[0].shape[-1]) for a, _ in self.calls[name]], dim=0
        ).float()


def _block_out(block: Any, calls: list[tuple[tuple, dict]]) -> list[Any]:
    return [_layer_out(block(*a, **kw)) for a, kw in calls]


def _mse(a: list[Any], b: list[Any]) -> float:
    num = sum(float(((x - y).float() ** 2).sum()) for x, y in zip(a, b))
    den = sum(x.numel() for x in a)
    return num / max(den, 1)


def search_scale(
    layer: Any, group: ScaleGroup, inputs: _Inputs, cfg: AWQConfig
) -> tuple[float, Any, list[float]]:
    """The grid search of sec. 3.2: (best alpha, its scales, the loss at every alpha)."""
    import torch

    block = layer.get_submodule(group.block)
    calls = inputs.calls[group.block]
    x = inputs.x(group.linears[0])
    x_mean = x.abs().mean(dim=0)
    linears = [layer.get_submodule(n) for n in group.linears]
    originals = [lin.weight.detach().clone() for lin in linears]
    with torch.no_grad():
        ref = _block_out(block, calls)
        losses: list[float] = []
        best = (float("inf"), 0.0, None)
        for i in range(cfg.n_grid):
            alpha = i / cfg.n_grid
            s = x_mean.pow(alpha).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for lin, w in zip(linears, originals):
                sw = w * s.view(1, -1).to(w.dtype)
                q = fake_quantize(sw, cfg.bits, cfg.group_size, cfg.zero_point)
                lin.weight.copy_(q / s.view(1, -1).to(w.dtype))
            loss = _mse(_block_out(block, calls), ref)
            losses.append(loss)
            if loss < best[0]:
                best = (loss, alpha, s.clone())
        for lin, w in zip(linears, originals):
            lin.weight.copy_(w)
    assert best[2] is not None
    return best[1], best[2], losses


def search_clip(w: Any, x: Any, cfg: AWQConfig) -> Any:
    """Per output row and group, the clipping bound (<= max|w|) minimising the group's output
    error ``sum_t (x_t . (Q(clamp(w)) - w))**2`` over the sample tokens ``x`` (AutoAWQ)."""
    import torch

    out_f, in_f = w.shape
    gs = in_f if cfg.group_size == -1 else cfg.group_size
    n_g = in_f // gs
    wg = w.float().reshape(out_f, n_g, gs)
    xg = x.float().reshape(-1, n_g, gs)  # (tokens, groups, gs)
    org_max = wg.abs().amax(dim=2, keepdim=True)  # (out, groups, 1)
    ref = torch.einsum("tgk,ogk->otg", xg, wg)
    best_err = torch.full((out_f, n_g), float("inf"), device=w.device)
    best_max = org_max.clone()
    for i in range(int(cfg.max_shrink * cfg.clip_grid)):
        max_val = org_max * (1 - i / cfg.clip_grid)
        cur = torch.clamp(wg, -max_val, max_val)
        q = fake_quantize(cur.reshape(out_f, in_f), cfg.bits, cfg.group_size, cfg.zero_point)
        out = torch.einsum("tgk,ogk->otg", xg, q.reshape(out_f, n_g, gs))
        err = ((out - ref) ** 2).mean(dim=1)  # (out, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better.unsqueeze(-1), max_val, best_max)
    return best_max  # (out, groups, 1)


def apply_clip(lin: Any, max_val: Any, group_size: int) -> None:
    import torch

    out_f, in_f = lin.weight.shape
    gs = in_f if group_size == -1 else group_size
    w = lin.weight.data.reshape(out_f, in_f // gs, gs)
    mv = max_val.to(w.dtype)
    lin.weight.data = torch.clamp(w, -mv, mv).reshape(out_f, in_f)


def check_model(model: Any) -> None:
    mt = getattr(model.config, "model_type", "?")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"AWQ supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, not {mt!r}")


def awq_model(
    model: Any,
    calib: np.ndarray,
    cfg: Optional[AWQConfig] = None,
    batch: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Run AWQ over every decoder layer of ``model`` (in place, float weights stay float:
    scaled and clipped). ``calib``: (nsamples, seqlen) token ids. Returns per scaling group
    the chosen alpha and the loss at alpha = 0 and at the chosen alpha."""
    import torch
    from tqdm import tqdm

    cfg = cfg or AWQConfig()
    cfg.check()
    check_model(model)
    model.config.use_cache = False
    layers = decoder_layers(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        batches = capture_layer0_inputs(model, calib, batch)
    results: dict[str, Any] = {}
    dev = _param_device(model)
    bar = tqdm(range(len(layers)), desc="awq", unit="layer", disable=not progress)
    for li in bar:
        layer = layers[li]
        groups = scale_groups(layer)
        inputs = _Inputs()
        names = {g.block for g in groups} | {n for g in groups for n in g.linears}
        hooks = [
            layer.get_submodule(n).register_forward_pre_hook(inputs.hook(n), with_kwargs=True)
            for n in sorted(names)
        ]
        try:
            with torch.no_grad():
                for hs, kw in batches:
                    layer(hs, **_to(kw, dev))
        finally:
            for h in hooks:
                h.remove()
        for g in groups:
            alpha, s, losses = search_scale(layer, g, inputs, cfg)
            with torch.no_grad():
                apply_scales(layer, g, s)
            # the captured inputs of the scaled linears change by 1/s (the block outputs not)
            for n in g.linears:
                inputs.calls[n] = [
                    ((a[0] / s.to(a[0].dtype), *a[1:]), kw) for a, kw in inputs.calls[n]
                ]
            if g.block in g.linears:
                inputs.calls[g.block] = inputs.calls[g.linears[0]]
            key = f"model.layers.{li}.{g.prev}"
            results[key] = {
                "alpha": alpha,
                "loss_alpha0": losses[0],
                "loss": min(losses),
                "linears": g.linears,
            }
            bar.set_postfix_str(f"{g.prev} alpha {alpha:.2f}", refresh=False)
        if cfg.clip:
            with torch.no_grad():
                for g in groups:
                    for n in g.linears:
                        if n.endswith(("q_proj", "k_proj")):
                            continue
                        x = inputs.x(n)
                        if x.shape[0] > cfg.clip_tokens:
                            step = x.shape[0] // cfg.clip_tokens
                            x = x[::step][: cfg.clip_tokens]
                        lin = layer.get_submodule(n)
                        apply_clip(lin, search_clip(lin.weight.data, x, cfg), cfg.group_size)
        del inputs
        with torch.no_grad():
            batches = [(_layer_out(layer(hs, **_to(kw, dev))), kw) for hs, kw in batches]
    bar.close()
    log.info("awq: %d layers in %.1f s", len(layers), time.perf_counter() - t0)
    return results


def fake_quantize_model(model: Any, cfg: AWQConfig) -> None:
    """Replace every decoder-layer linear's weight by its AWQ-grid dequantized value."""
    import torch

    with torch.no_grad():
        for layer in decoder_layers(model):
            for _n, m in layer.named_modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(
                        fake_quantize(m.weight, cfg.bits, cfg.group_size, cfg.zero_point)
                    )


__all__ = [
    "AWQConfig",
    "ScaleGroup",
    "apply_scales",
    "awq_model",
    "fake_quantize",
    "fake_quantize_model",
    "scale_groups",
    "search_clip",
    "search_scale",
]


# ---- whole checkpoints ----------------------------------------------------------------------


def check_group_size(model: Any, group_size: int) -> None:
    """Every decoder-layer linear's input width must split into whole groups."""
    import torch

    if group_size == -1:
        return
    for li, layer in enumerate(decoder_layers(model)):
        for n, m in layer.named_modules():
            if isinstance(m, torch.nn.Linear) and m.in_features % group_size:
                raise ValueError(
                    f"model.layers.{li}.{n}: {m.in_features} input columns do not split into "
                    f"groups of {group_size} (AWQ needs whole groups; try 64 or 32)"
                )


def check_imatrix(model: Any, model_dir: Any, imatrix: Any) -> None:
    """Raise ``ImatrixError`` (a ValueError naming the file) unless ``imatrix`` reads and its
    tensor names and widths are those of ``model`` (GGUF names, through the architecture)."""
    import json
    from pathlib import Path

    from ..arch import arch_for_config
    from ..imatrix import ImportanceMatrix

    cfg_path = Path(model_dir) / "config.json"
    arch = arch_for_config(json.loads(cfg_path.read_text()), str(cfg_path))
    shapes: dict[str, tuple[int, ...]] = {}
    for name, p in model.state_dict().items():
        try:
            gname = arch.gguf_name(name)
        except ValueError:
            continue
        if gname:
            shapes[gname] = tuple(p.shape)
    ImportanceMatrix.load(imatrix).check_against(shapes)


def quantize_awq(
    model_dir: Any,
    out: Any,
    gguf_type: str,
    cfg: Optional[AWQConfig] = None,
    calib: Optional[str] = None,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    imatrix: Optional[str] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """AWQ-scale the HF checkpoint in ``model_dir`` on the calibration windows and write it as
    a GGUF of file type ``gguf_type`` (any preset ``convert`` takes), through a temporary HF
    checkpoint of the scaled float weights next to ``out``."""
    import shutil
    import tempfile
    from pathlib import Path

    from .. import presets
    from ..calib import load_calibration
    from ..convert import convert
    from ..quantize_api import load_hf

    cfg = cfg or AWQConfig()
    cfg.check()
    presets.file_type(gguf_type)  # a clear error before the slow part
    model_dir, out = Path(model_dir), Path(out)
    t0 = time.perf_counter()
    model, tok = load_hf(model_dir)
    check_model(model)
    check_group_size(model, cfg.group_size)
    if imatrix:  # a clear error before the slow part, not after it
        check_imatrix(model, model_dir, imatrix)
    windows = load_calibration(calib, tok, nsamples, seqlen, seed, model=model)
    log.info("awq calibration: %s, %d x %d tokens", calib or "default", *windows.shape)
    results = awq_model(model, windows, cfg, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.awq-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in model_dir.iterdir():  # tokenizer and generation files
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".json.index")):
                if not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
        summary = convert(tmp, out, gguf_type, imatrix=imatrix, progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    alphas = [r["alpha"] for r in results.values()]
    return {
        "summary": summary,
        "groups": results,
        "mean_alpha": float(np.mean(alphas)) if alphas else float("nan"),
        "seconds": time.perf_counter() - t0,
    }


def quantize_awq_checkpoint(
    model_dir: Any,
    out: Any,
    cfg: Optional[AWQConfig] = None,
    calib: Optional[str] = None,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """AWQ-scale the HF checkpoint in ``model_dir`` on the calibration windows and write it as
    an AutoAWQ GEMM checkpoint (:mod:`ferroquant.export.awq_checkpoint`) in ``out``."""
    from pathlib import Path

    from ..calib import load_calibration
    from ..export.awq_checkpoint import BITS, write_checkpoint
    from ..quantize_api import load_hf

    cfg = cfg or AWQConfig()
    cfg.check()
    if cfg.bits != BITS or not cfg.zero_point:
        raise ValueError(
            f"the AutoAWQ GEMM checkpoint holds 4-bit zero-point groups, not {cfg.bits} bits"
            f"{'' if cfg.zero_point else ' without zero point'}; use --format gguf for others"
        )
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not an empty directory")
    t0 = time.perf_counter()
    model, tok = load_hf(model_dir)
    check_model(model)
    check_group_size(model, cfg.group_size)
    windows = load_calibration(calib, tok, nsamples, seqlen, seed, model=model)
    log.info("awq calibration: %s, %d x %d tokens", calib or "default", *windows.shape)
    results = awq_model(model, windows, cfg, progress=progress)
    written = write_checkpoint(out, model, cfg.group_size, source_dir=model_dir)
    alphas = [r["alpha"] for r in results.values()]
    return {
        "dir": written["dir"],
        "linears": written["linears"],
        "groups": results,
        "mean_alpha": float(np.mean(alphas)) if alphas else float("nan"),
        "seconds": time.perf_counter() - t0,
    }


def run_cli(args: Any) -> int:
    """``ferroquant quantize HF_DIR -o OUT --method awq [--format awq | --format gguf --type T]``
    (``--format awq``, the default for this method: an AutoAWQ GEMM checkpoint directory)."""
    fmt = getattr(args, "format", None) or "awq"
    if fmt not in ("awq", "gguf"):
        raise ValueError(
            f"--method awq writes --format awq (an AutoAWQ checkpoint) or --format gguf "
            f"--type TYPE, not --format {fmt}"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = AWQConfig(bits=args.bits, group_size=args.group_size)
    common = dict(
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        progress=not getattr(args, "no_progress", False),
    )
    if fmt == "awq":
        if getattr(args, "imatrix", None):
            raise ValueError("--imatrix applies to --format gguf, not to an AWQ checkpoint")
        res = quantize_awq_checkpoint(args.input, args.output, cfg, **common)
        print(
            f"{res['dir']}: AWQ checkpoint, {res['linears']} linears ({cfg.bits}-bit, groups "
            f"of {cfg.group_size}), {res['seconds']:.1f} s"
        )
    else:
        res = quantize_awq(args.input, args.output, args.type, cfg, imatrix=args.imatrix, **common)
        print(res["summary"].text())
    print(f"awq: {len(res['groups'])} scaling groups, mean alpha {res['mean_alpha']:.3f}")
    return 0
