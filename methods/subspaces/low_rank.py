"""The low-rank forward and backward of a subspace Linear, and the compute copies of its factors."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ComputeCopies(NamedTuple):
    """Detached copies of low-rank factors in the compute dtype (bf16 under autocast), as :class:`LowRankLinear`
    reads them: ``u`` (..., B, out/B, c), ``us`` = ``U diag(s)`` and ``vt`` = ``V^T`` (..., B, c, in), contiguous.

    Made once per step for a whole :class:`FactorStack` (a few kernels), so a layer's forward and backward cast
    nothing of their own.
    """

    u: Tensor
    us: Tensor
    vt: Tensor


def compute_copies(u: Tensor, s: Tensor, v: Tensor) -> ComputeCopies:
    """:class:`ComputeCopies` of ``u``, ``s``, ``v`` in the active autocast dtype of their device, else their own."""
    kind = u.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else u.dtype
    with torch.no_grad():
        vt = torch.empty_like(v.mT, dtype=dtype, memory_format=torch.contiguous_format).copy_(v.mT)  # one kernel
        return ComputeCopies(u.to(dtype), (u * s[..., None, :]).to(dtype), vt)


class LayerStep(NamedTuple):
    """One layer's slice of a :class:`FactorStack` for a step: its differentiable factors and, for a low-rank
    Linear, their compute copies."""

    u: Tensor
    s: Tensor
    v: Tensor
    copies: ComputeCopies | None


class LowRankLinear(torch.autograd.Function):
    """``x W_eff^T + b`` with ``W_eff = W_sem + U diag(s) V^T`` per row block, never forming the dense weight gradient.

    ``u`` (B, out/B, c), ``s`` (B, c), ``v`` (B, in, c): block b of ``W_eff``'s rows is
    ``W_sem[b] + U_b diag(s_b) V_b^T``. Forward and input gradient use ``W_eff`` (one matmul each, as a frozen layer
    costs); the factors get ``dU_b = g_b^T (x V_b) diag(s_b)``, ``dV_b = x^T (g_b U_b) diag(s_b)`` and
    ``ds_b = sum (g_b U_b) * (x V_b)``, ``g_b`` the output gradient's columns of block b. ``keep`` (N, c) or None
    weights sample n's share of the factors' gradients of column j (in every block) by ``keep[n, j]`` (routing; 0
    leaves the sample out); the output and the input gradient stay exact. ``copies`` are :func:`compute_copies` of
    the factors (made here when None); the products run on them. ``W_eff`` is saved for the backward where it is in
    a lower precision than ``w_sem`` (autocast) and rebuilt there otherwise.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        w_sem: Tensor,
        bias: Tensor | None,
        u: Tensor,
        s: Tensor,
        v: Tensor,
        keep: Tensor | None,
        copies: ComputeCopies | None = None,
    ) -> Tensor:
        copies = copies if copies is not None else compute_copies(u, s, v)
        w_eff = LowRankLinear.combine(w_sem, copies.us, copies.vt)  # bf16 under autocast
        x = x.to(w_eff.dtype)  # cast once, as F.linear would, and saved in that precision for the backward
        low_precision = w_eff.dtype != w_sem.dtype  # saving W_eff then costs half of w_sem and spares a rebuild
        ctx.save_for_backward(x, w_sem, w_eff if low_precision else None, s, *copies, keep)  # type: ignore[arg-type]
        return F.linear(x, w_eff, bias)

    @staticmethod
    def effective(w_sem: Tensor, u: Tensor, s: Tensor, v: Tensor) -> Tensor:
        """``W_eff`` as a matrix shaped like ``w_sem`` (a conv kernel flattened), differentiable in the factors."""
        return LowRankLinear.combine(w_sem, u * s[:, None], v.mT)

    @staticmethod
    def combine(w_sem: Tensor, us: Tensor, vt: Tensor) -> Tensor:
        """``W_sem + US V^T`` from ``us`` (B, out/B, c) and ``vt`` (B, c, in): one batched multiply-add."""
        return torch.baddbmm(w_sem.view(len(us), -1, w_sem.shape[-1]), us, vt).view(w_sem.shape)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w_sem, w_eff, s, u, us, vt, keep = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        blocks, rows, c = u.shape
        g, flat = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        if w_eff is None and needs[0]:
            w_eff = LowRankLinear.combine(w_sem, us, vt)
        dx = grad @ w_eff if needs[0] else None
        dw = g.mT @ flat if needs[1] else None
        db = g.sum(0) if needs[2] else None
        if not any(needs[3:6]):
            return dx, dw, db, None, None, None, None, None
        # explicit bmm/mm on the compute copies: few dispatches per call (each one is a kernel launch on a GPU)
        g_blocks = g.view(-1, blocks, rows).transpose(0, 1)  # (B, N*T, out/B), a view
        up = torch.bmm(u.mT, g_blocks.mT)  # (B, c, N*T): column-major products run faster on CPU BLAS
        down = torch.mm(vt.view(-1, vt.shape[-1]), flat.mT).view(blocks, c, -1)
        kept_up, kept_down = up, down
        if keep is not None:  # columns of sample n: n*T ... (n+1)*T - 1
            cols = keep.to(up.dtype).mT[:, :, None]  # (c, N, 1)
            kept_up = (up.view(blocks, c, len(keep), -1) * cols).view(blocks, c, -1)
            kept_down = (down.view(blocks, c, len(keep), -1) * cols).view(blocks, c, -1)
        s_cols = s[:, None]
        du = torch.bmm(kept_down, g_blocks).mT * s_cols if needs[3] else None
        # one weighted factor weights the product once; one batched dot product per column
        rows_x = len(flat)
        ds = torch.bmm(kept_up.view(-1, 1, rows_x), down.view(-1, rows_x, 1)).view(blocks, c) if needs[4] else None
        dv = torch.mm(kept_up.view(-1, rows_x), flat).view(blocks, c, -1).mT * s_cols if needs[5] else None
        return dx, dw, db, du, ds, dv, None, None
