"""GGUF output of GPTQ onto GGUF grids: the GPTQ'd linears go in as the block bytes the Rust
core made (``blocks``), everything else through the HF→GGUF converter with the file type's
usual choices (:func:`ferroquant.convert.convert`, ``pre_quantized``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from ..convert import Summary, convert

PathLike = Union[str, Path]


def write_gguf_model(
    model_dir: PathLike,
    out: PathLike,
    results: dict[str, dict[str, Any]],
    qtype: str,
    progress: bool = True,
) -> Summary:
    """Write ``model_dir`` as a GGUF of file type ``qtype`` with the GPTQ ``results``' blocks
    (each result names its own block type in ``qtype``, from :func:`plan_linear_types`)."""
    pre: dict[str, tuple[str, np.ndarray]] = {}
    for prefix, res in results.items():
        blocks = res.get("blocks")
        if blocks is None:
            raise ValueError(f"{prefix}: GPTQ result has no GGUF blocks (not a GGUF grid)")
        pre[f"{prefix}.weight"] = (res.get("qtype") or qtype, np.ascontiguousarray(blocks))
    return convert(model_dir, out, qtype, progress=progress, pre_quantized=pre)


def plan_linear_types(model_dir: PathLike, type_name: str) -> dict[str, str]:
    """The GGUF type the converter gives each HF weight for file type ``type_name``
    (llama-quantize's rules and fallbacks, :func:`ferroquant.presets.plan`)."""
    import gguf

    from .. import presets
    from ..arch import arch_for_config
    from ..convert import _base_float_type, read_config
    from ..safetensors_io import SafetensorsDir

    model_dir = Path(model_dir)
    ft = presets.file_type(type_name)
    config = read_config(model_dir)
    arch = arch_for_config(config, str(model_dir / "config.json"))
    if hasattr(arch, "set_model_dir"):
        arch.set_model_dir(model_dir)
    st = SafetensorsDir(model_dir)
    try:
        hf_of: dict[str, str] = {}
        entries: list[tuple[str, tuple[int, ...], Any]] = []
        for name, arr in arch.extra_tensors():
            entries.append((name, tuple(arr.shape), None))
        for h in st.names():
            if arch.skip_tensor(h):
                continue
            g = arch.gguf_name(h)
            hf_of[g] = h
            entries.append((g, tuple(arch.out_shape(g, st.tensors[h].shape)), None))
    finally:
        st.close()
    n_head = int(arch.cfg.get("num_attention_heads") or 1)
    shape = presets.ModelShape(
        arch=arch.gguf_arch_name(),
        n_layer=arch.block_count,
        n_head=n_head,
        n_head_kv=int(arch.cfg.get("num_key_value_heads") or n_head),
        n_expert=int(arch.cfg.get("num_local_experts") or 0),
    )
    if arch.gguf_arch == gguf.MODEL_ARCH.PHI3:
        raise ValueError("GPTQ to GGUF: fused-QKV architectures (phi3) are not supported yet")
    plan = presets.plan([(n, s, _base_float_type(n, s, ft)) for n, s, _ in entries], ft.name, shape)
    return {hf_of[p.name]: p.dst_type.name for p in plan if p.name in hf_of}
