"""Every tensor of the real SmolLM2 GGUF: our dequantize equals gguf-py's, bit for bit, and
our re-quantization of the dequantized weights gives back the file's bytes for the legacy
types (their quantizers are deterministic functions of the block's values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf import quants as gq

from ferroquant import quants


def test_every_tensor_dequantizes_bit_exactly(smollm2_path: Path) -> None:
    reader = GGUFReader(smollm2_path)
    seen: dict[str, int] = {}
    for t in reader.tensors:
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        cols = int(t.shape[0])
        ours = quants.dequantize(t.data, t.tensor_type.name, (rows, cols))
        ref = gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols)
        np.testing.assert_array_equal(
            ours.view(np.uint32), ref.astype(np.float32).view(np.uint32), err_msg=t.name
        )
        seen[t.tensor_type.name] = seen.get(t.tensor_type.name, 0) + 1
    assert seen == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_requantizing_the_file_values_reproduces_most_blocks(smollm2_path: Path) -> None:
    """Q4_1 of a Q4_1 grid is not always the identity (the f16 scale was rounded), but most
    blocks come back; we and gguf-py must agree on every one."""
    reader = GGUFReader(smollm2_path)
    for t in reader.tensors[:24]:
        if t.tensor_type.name not in ("Q4_1", "Q8_0") or t.n_elements > 2_000_000:
            continue
        rows, cols = int(np.prod(t.shape[1:])), int(t.shape[0])
        values = quants.dequantize(t.data, t.tensor_type.name, (rows, cols))
        ours = quants.quantize(values, t.tensor_type.name)
        ref = np.asarray(gq.quantize(values, t.tensor_type)).reshape(rows, -1)
        np.testing.assert_array_equal(ours, ref, err_msg=t.name)
        same = np.mean(ours == np.asarray(t.data).reshape(rows, -1))
        assert same > 0.9, f"{t.name}: only {same:.3f} of bytes reproduced"
