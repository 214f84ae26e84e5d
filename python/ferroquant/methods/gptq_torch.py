"""GPTQ in torch, for ``--device cuda`` (and as the plain CPU peer of the Rust core).

The same algorithm and the same grid rules as ``rust/gptq`` (Frantar et al. 2022 and the
reference ``gptq.py``): dead columns, damping ``percdamp * mean(diag H)``, act-order with or
without static groups, ``H⁻¹``'s upper Cholesky factor, lazy blocks of 128 columns rounded up
to a multiple of the group size, and group grids fitted from the error-updated weights when
the loop reaches each group start. It returns the same dictionary as
``ferroquant._native.gptq_quantize`` (uniform grids only; GGUF grids run on the Rust core).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional dependency
    torch = None  # type: ignore[assignment]


def _require_torch() -> Any:
    if torch is None:
        raise ImportError("the torch GPTQ path needs torch (pip install torch)")
    return torch


def _fit(x: Any, maxq: float, sym: bool) -> tuple[Any, Any]:
    """Per-row (scale, zero) of the reference ``Quantizer.find_params`` (rows, 1) each."""
    zero_t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(dim=1).values, zero_t)
    xmax = torch.maximum(x.max(dim=1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both_zero, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def _quant(x: Any, scale: Any, zero: Any, maxq: float) -> tuple[Any, Any]:
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def effective_block_size(block_size: int, group_size: int) -> int:
    """The lazy block rounded up to a multiple of the group size (as the Rust core)."""
    if group_size >= block_size:
        return group_size
    return -(-block_size // group_size) * group_size


def inverse_upper_cholesky(h: Any) -> Any:
    """``U`` upper with ``H⁻¹ = UᵀU``, the reference's three steps."""
    t = _require_torch()
    lower, info = t.linalg.cholesky_ex(h)
    if int(info.max()) != 0:
        raise ValueError(
            "Hessian is not positive definite after damping; "
            "raise the damping or give more calibration tokens"
        )
    return t.linalg.cholesky(t.cholesky_inverse(lower), upper=True)


def gptq_torch(
    w: Any,
    h: Any,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    device: Optional[str] = None,
) -> dict[str, Any]:
    """GPTQ of ``w`` (out, in) with Hessian ``h`` (in, in); numpy or torch inputs.

    Returns numpy arrays: codes (out, in) uint8, scales/zeros (out, groups), g_idx (in,),
    perm (in,) or None, dequant (out, in) float32, and the reference loss.
    """
    t = _require_torch()
    if not 2 <= bits <= 8:
        raise ValueError(f"GPTQ bits must be 2..8, got {bits}")
    dev = t.device(device) if device else None
    W = t.as_tensor(w).to(device=dev, dtype=t.float32).clone()
    H = t.as_tensor(h).to(device=dev, dtype=t.float32).clone()
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight {rows}x{cols}")
    if not bool(t.isfinite(W).all()) or not bool(t.isfinite(H).all()):
        raise ValueError("weight or Hessian has non-finite values (NaN in the activations?)")
    maxq = float(2**bits - 1)
    per_row = group_size <= 0
    gs = cols if per_row else group_size
    n_groups = max(1, -(-cols // gs))
    scales = t.zeros(rows, n_groups, device=W.device)
    zeros = t.zeros(rows, n_groups, device=W.device)
    if per_row:
        s, z = _fit(W, maxq, sym)
        scales[:, 0:1], zeros[:, 0:1] = s, z

    dead = t.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups and not per_row:
        for g in range(n_groups):
            s, z = _fit(W[:, g * gs : (g + 1) * gs], maxq, sym)
            scales[:, g : g + 1], zeros[:, g : g + 1] = s, z

    perm = None
    if act_order:
        # Stable, ties in the original order (as the Rust core).
        perm = t.argsort(t.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    damp = percdamp * float(t.mean(t.diag(H)))
    H += damp * t.eye(cols, device=H.device)
    Hinv = inverse_upper_cholesky(H)
    del H

    perm_list = perm.tolist() if perm is not None else None

    def group_of(p: int) -> int:
        if per_row:
            return 0
        if static_groups:
            return (perm_list[p] if perm_list is not None else p) // gs
        return p // gs

    bs = effective_block_size(block_size, 1 if per_row else gs)
    Q = t.zeros_like(W)
    codes = t.zeros_like(W)
    loss = t.zeros(rows, dtype=t.float64, device=W.device)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = t.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            p = i1 + i
            if not per_row and not static_groups and p % gs == 0:
                s, z = _fit(W1[:, i : i + gs], maxq, sym)
                scales[:, p // gs : p // gs + 1], zeros[:, p // gs : p // gs + 1] = s, z
            g = group_of(p)
            x = W1[:, i]
            c, q = _quant(x.unsqueeze(1), scales[:, g : g + 1], zeros[:, g : g + 1], maxq)
            q = q.flatten()
            d = Hinv1[i, i]
            err = (x - q) / d
            loss += err.double() ** 2
            Q[:, p] = q
            codes[:, p] = c.flatten()
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    g_idx = np.zeros(cols, dtype=np.int32)
    for p in range(cols):
        g_idx[perm_list[p] if perm_list is not None else p] = group_of(p)
    if perm is not None:
        inv = t.argsort(perm)
        Q = Q[:, inv]
        codes = codes[:, inv]
    return {
        "codes": codes.to("cpu", t.uint8).numpy(),
        "scales": scales.cpu().numpy(),
        "zeros": zeros.cpu().numpy(),
        "mins": np.zeros((rows, n_groups), dtype=np.float32),
        "g_idx": g_idx,
        "perm": None if perm is None else perm.cpu().numpy().astype(np.int64),
        "dequant": Q.cpu().numpy(),
        "loss": float(loss.sum()) / 2,
        "damp": damp,
        "dead": int(dead.sum()),
        "blocks": None,
    }
