"""Round-to-nearest on GPTQ's grids: the baseline every GPTQ report compares against.

The same grids fitted to the original weights, with no calibration data and no error
feedback: uniform min/max per group, or for a GGUF block type llama.cpp's own quantizer
without an importance matrix (byte-identical with ``llama-quantize``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import _native
from .gptq import GridSpec, decoder_layers, gguf_rtn


def rtn_model(
    model: Any, spec_for: Callable[[str], Optional[GridSpec]], progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Round-to-nearest on the same grids (the baseline): no calibration data."""
    import torch
    from tqdm import tqdm

    layers = decoder_layers(model)
    results: dict[str, dict[str, Any]] = {}
    for li in tqdm(range(len(layers)), desc="rtn", unit="layer", disable=not progress):
        for n, mod in layers[li].named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            full = f"model.layers.{li}.{n}"
            spec = spec_for(full)
            if spec is None:
                continue
            w = np.ascontiguousarray(mod.weight.detach().float().cpu().numpy())
            if spec.qtype is not None:
                res = gguf_rtn(w, spec.qtype)
            else:
                res = _native.rtn_quantize(
                    w, bits=spec.bits, group_size=spec.group_size, sym=spec.sym, qtype=spec.qtype
                )
                res["qtype"] = spec.qtype
            mod.weight.data = torch.from_numpy(res["dequant"]).to(
                dtype=mod.weight.dtype, device=mod.weight.device
            )
            del res["dequant"]
            results[full] = res
    return results
