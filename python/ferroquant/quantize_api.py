"""One call to quantize a Hugging Face checkpoint with GPTQ or RTN.

>>> from ferroquant.quantize_api import QuantConfig, quantize
>>> quantize("SmolLM2-f32/", "SmolLM2-gptq-4bit/", QuantConfig(bits=4, group_size=128))

``format="gptq"`` writes a Hugging Face GPTQ checkpoint (see
:mod:`ferroquant.export.gptq_checkpoint`); ``format="gguf"`` writes a GGUF of file type
``gguf_type`` (any llama-quantize preset): each linear gets the type the preset's rules give it
(fallbacks included); on Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K..Q6_K GPTQ rounds
onto the GGUF block grid with error feedback: each block's scales (a K-quant's whole super-block)
are fitted when the column loop reaches it, by llama.cpp's own scale search on the weights as
updated so far, weighted by the Hessian diagonal (``weighted_fit``, as ``llama-quantize
--imatrix``); IQ4 types use llama.cpp's own quantizer for now.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .calib import DEFAULT_SOURCE, load_calibration
from .methods.gptq import GridSpec, quantize_model

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
GGUF_GRIDS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@dataclass
class QuantConfig:
    method: str = "gptq"  # gptq | rtn
    bits: int = 4
    group_size: int = 128  # -1: one grid per row
    sym: bool = True
    act_order: bool = False
    static_groups: bool = False
    percdamp: float = 0.01
    block_size: int = 128
    weighted_fit: bool = True  # GGUF grids: Hessian-diagonal-weighted block scale search
    format: str = "gptq"  # gptq | gguf
    gguf_type: Optional[str] = None  # with format="gguf"
    calib: Optional[str] = None  # file, "self" or "wikitext-tail"; None: the default
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0
    device: str = "cpu"
    batch: int = 8
    progress: bool = True

    def check(self) -> None:
        if self.method not in ("gptq", "rtn"):
            raise ValueError(f"unknown method {self.method!r} (gptq, rtn)")
        if self.format not in ("gptq", "gguf"):
            raise ValueError(f"unknown format {self.format!r} (gptq, gguf)")
        if self.format == "gptq" and self.bits not in (2, 3, 4, 8):
            raise ValueError(f"GPTQ checkpoints hold 2, 3, 4 or 8 bits, not {self.bits}")
        if self.group_size == 0 or self.group_size < -1:
            raise ValueError(f"group size must be -1 or positive, got {self.group_size}")
        if self.format == "gguf":
            from . import presets

            presets.file_type(self.gguf_type or "")  # ValueError naming the supported ones

    def grid(self) -> GridSpec:
        return GridSpec(
            bits=self.bits,
            group_size=self.group_size,
            sym=self.sym,
            act_order=self.act_order,
            static_groups=self.static_groups,
            percdamp=self.percdamp,
            block_size=self.block_size,
            qtype=None,
            weighted_fit=self.weighted_fit,
        )


@dataclass
class QuantSummary:
    output: Path
    linears: int
    seconds: float
    peak_rss_mb: float
    mean_rel_err: float
    config: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return (
            f"{self.output}: {self.linears} linears quantized ({self.config.get('method')}), "
            f"mean relative error {self.mean_rel_err:.3e}, {self.seconds:.1f} s, "
            f"peak RSS {self.peak_rss_mb:.0f} MiB"
        )


def load_hf(model_dir: PathLike, device: str = "cpu") -> tuple[Any, Any]:
    """The float model (float32, eval mode, on the CPU) and its tokenizer."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ImportError("quantizing a HF checkpoint needs torch and transformers") from err
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir}: no config.json (not a Hugging Face checkpoint)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model, tok


def quantize(
    model_dir: PathLike, out: PathLike, config: Optional[QuantConfig] = None
) -> QuantSummary:
    """Quantize the checkpoint in ``model_dir`` and write it to ``out``."""
    import torch

    cfg = config or QuantConfig()
    cfg.check()
    t0 = time.perf_counter()
    model, tok = load_hf(model_dir)
    spec = cfg.grid()
    gguf_types: dict[str, str] = {}
    if cfg.format == "gguf":
        from .export.gguf_export import plan_linear_types

        gguf_types = plan_linear_types(model_dir, cfg.gguf_type or "")

    def spec_for(name: str) -> Optional[GridSpec]:
        if cfg.format != "gguf":
            return spec
        t = gguf_types.get(f"{name}.weight")
        if t is None or t in ("F32", "F16", "BF16"):
            return None
        return replace(spec, qtype=t)

    if cfg.method == "gptq":
        src = cfg.calib or DEFAULT_SOURCE
        gen_model = model
        if src == "self" and cfg.device != "cpu":
            gen_model = model.to(cfg.device)
        calib = load_calibration(src, tok, cfg.nsamples, cfg.seqlen, cfg.seed, model=gen_model)
        model = model.to("cpu")
        log.info("calibration: %s, %d x %d tokens", src, *calib.shape)
        with torch.no_grad():
            results = quantize_model(
                model, calib, spec_for, cfg.device, cfg.batch, progress=cfg.progress
            )
    else:
        from .methods.rtn import rtn_model

        results = rtn_model(model, spec_for, progress=cfg.progress)

    out = Path(out)
    if cfg.format == "gptq":
        from .export.gptq_checkpoint import quantization_config, write_checkpoint

        qc = quantization_config(
            cfg.bits, cfg.group_size, cfg.sym, cfg.act_order, cfg.static_groups,
            cfg.percdamp, False,
        )  # fmt: skip
        write_checkpoint(out, model, results, qc, source_dir=model_dir)
    else:
        from .export.gguf_export import write_gguf_model

        write_gguf_model(model_dir, out, results, cfg.gguf_type or "", progress=cfg.progress)
    errs = [r["rel_err"] for r in results.values() if "rel_err" in r]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return QuantSummary(
        out,
        len(results),
        time.perf_counter() - t0,
        peak,
        float(np.mean(errs)) if errs else float("nan"),
        asdict(cfg),
    )
