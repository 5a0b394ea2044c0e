"""SVD subspace layers: a frozen semantic part and K trainable artifact subspaces per target layer (MASM, Effort).

A target ``nn.Linear`` or ``nn.Conv2d`` (groups 1; its kernel read as an ``out x in*kh*kw`` matrix) with weight
``W = U diag(sigma) V^T`` (sigma descending, ``p = min(out, in)``) is wrapped by :class:`SubspaceLayer`:

- the top ``p - K*r`` components form the frozen semantic part ``W_sem`` (never trained);
- the tail ``K*r`` components are split into K contiguous blocks of rank r in descending order: subspace 0 holds the
  largest tail singular values, subspace K-1 the smallest. Subspace k trains ``U[k]``, ``s[k]`` and ``V[k]``;
- ``W_eff = W_sem + sum_k U_k diag(s_k) V_k^T`` equals ``W`` at injection.

``W_sem = W - W_tail0`` replaces the wrapped layer's frozen weight in place (``W_tail0``, the tail at injection, is
kept as thin factors), so a wrapped layer costs no more memory than the pretrained weight plus rank-``K*r`` factors.
The semantic bases that the orthogonality losses need are complements of the tail bases where a factor is square
(``P_sem = I - U_tail0 U_tail0^T``); only the long side of a non-square weight keeps its semantic basis.

A fused attention ``qkv`` Linear can be split into B = 3 row blocks (q, k, v), each decomposed on its own; every
factor and semantic buffer carries that leading block dimension (B = 1 otherwise).

A training step stacks the factors of same-shape layers once (:func:`shared_factors`): each layer's forward reads
its slice, and the constraint losses below run batched over a :class:`FactorStack`, returning one value per layer
(the mean over its blocks); callers average them over layers. On a GPU this turns a few thousand small kernel
launches per step into a few dozen.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.checkpoint import save_atomic

PRESETS: dict[str, dict[str, str]] = {
    "vit": {
        "attn": r"(.*\.)?blocks\.\d+\.attn\.(qkv|proj)",
        "mlp": r"(.*\.)?blocks\.\d+\.mlp\.(fc1|fc2)",
        "all": r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
    },
    "effnet": {
        "proj": r"(.*\.)?(blocks\.\d+\.\d+\.conv_pwl|conv_head)",
        "mlp": r"(.*\.)?blocks\.\d+\.\d+\.conv_pw",
        "all": r"(.*\.)?(blocks\.\d+\.\d+\.(conv_pw|conv_pwl)|conv_head)",
    },
}
"""Target regexes per backbone family (matched with ``re.fullmatch`` against full module names).

timm ViTs: attention projections, MLP layers, or both. timm EfficientNets: the 1x1 projection convs of the blocks
and the head conv, the 1x1 expansion convs (the MLP-like part of an inverted residual), or all pointwise convs
(depthwise convs are not matrices and never targets).
"""

DEFAULTS = {"vit": "attn", "effnet": "proj"}
"""The preset ``auto`` stands for, per family."""


def resolve_targets(model: nn.Module, targets: str) -> str:
    """The regex for ``targets``: a preset of the model's family (``auto`` is its default) or a regex as given."""
    names = [n for n, _ in model.named_modules()]
    family = next((f for f, presets in PRESETS.items() if any(re.fullmatch(presets["all"], n) for n in names)), None)
    if family is None:
        if targets == "auto" or targets in {k for presets in PRESETS.values() for k in presets}:
            raise ValueError(f"targets {targets!r}: presets exist for {', '.join(PRESETS)} backbones; give a regex")
        return targets
    presets = PRESETS[family]
    key = DEFAULTS[family] if targets == "auto" else targets
    if key not in presets and any(key in other for other in PRESETS.values()):
        raise ValueError(f"targets {targets!r} is not a preset for {family} backbones ({', '.join(presets)})")
    return presets.get(key, key)


QKV_PATTERN = r"(.*\.)?qkv"
"""Module names of fused q/k/v projections, split into three blocks when ``split_qkv`` is set."""

Factors = tuple[Tensor, Tensor, Tensor]


def block_svd(weight: Tensor, blocks: int = 1) -> Factors:
    """Thin SVD of each of ``blocks`` equal row blocks of a weight read as a matrix.

    Runs in float64 on the CPU and in float32 on an accelerator, and returns that precision.

    Returns:
        ``U`` (B, out/B, p), ``S`` (B, p) descending and ``V`` (B, in, p), with ``W_b = U_b diag(S_b) V_b^T``.
    """
    matrix = weight.detach().reshape(blocks, weight.shape[0] // blocks, -1)
    dtype = torch.float64 if weight.device.type == "cpu" else torch.float32
    u, s, vh = torch.linalg.svd(matrix.to(dtype), full_matrices=False)
    return u, s, vh.mT


def fingerprint(weight: Tensor, samples: int = 4096) -> str:
    """A cheap content hash of a weight: shape, dtype, a strided sample of values and position-weighted sums.

    The sums are rounded to 12 significant digits, so the same weights give the same hash on any device.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1)
    flat = matrix.reshape(-1)
    sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float64)
    wide = matrix.to(torch.float64)
    rows, cols = wide.sum(1), wide.sum(0)
    sums = (
        rows.sum(),
        wide.square().sum(),
        (rows * torch.arange(len(rows), device=rows.device)).sum(),
        (cols * torch.arange(len(cols), device=cols.device)).sum(),
    )
    digest = hashlib.sha1(f"{tuple(weight.shape)}|{weight.dtype}|".encode())
    digest.update(sample.numpy().tobytes())
    digest.update("|".join(f"{v.item():.11e}" for v in sums).encode())
    return digest.hexdigest()


class SVDCache:
    """Block SVDs on disk, computed once per backbone and weights.

    One file per target layer, named by a hash of the layer name, the block count and :func:`fingerprint` of its
    weight, so changed weights never hit a stale entry. A file is a ``torch.save`` archive of the full factors ``U``,
    ``S``, ``V`` in the weight's dtype, written atomically and loaded memory-mapped (semantic buffers of a model
    left on the CPU stay backed by the file's pages; replacing a file by rename never changes them).

    Attributes:
        hits: lookups answered from disk.
        misses: lookups that ran the SVD.
    """

    version = 1

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, name: str, weight: Tensor, blocks: int) -> Path:
        """The file holding the factors of ``weight`` (layer ``name``, split into ``blocks``)."""
        key = f"{self.version}|{name}|{blocks}|{fingerprint(weight)}"
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"

    def get(self, name: str, weight: Tensor, blocks: int = 1) -> Factors:
        """:func:`block_svd` of ``weight`` in its dtype and on its device, from disk when cached.

        Weights on the meta device (shapes only, e.g. for parameter counts) bypass the cache.
        """
        if weight.is_meta:
            return block_svd(weight, blocks)
        path = self.path(name, weight, blocks)
        if path.is_file():
            self.hits += 1
            entry = torch.load(path, map_location=weight.device, mmap=True, weights_only=True)
            return entry["U"], entry["S"], entry["V"]
        self.misses += 1
        u, s, v = (t.to(weight.dtype).contiguous() for t in block_svd(weight, blocks))
        save_atomic({"name": name, "U": u.cpu(), "S": s.cpu(), "V": v.cpu()}, path)
        return u, s, v


def _check_wrappable(module: nn.Module, name: str = "module") -> None:
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise TypeError(f"{name} is a {type(module).__name__}; only nn.Linear and nn.Conv2d can be wrapped")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(f"{name} is a grouped convolution (groups={module.groups}); only groups=1 can be wrapped")


class SubspaceLayer(nn.Module):
    """A Linear or Conv2d whose weight is ``W_sem`` (frozen) plus K trainable rank-r subspaces.

    Forward paths, in order of precedence:

    - merged (:meth:`merge`, eval only): one plain linear/conv with ``W_eff``;
    - ``dense``: ``W_eff`` materialised each call and differentiated by autograd, which forms the dense weight
      gradient ``g^T x`` (Effort's released code does this);
    - low rank (default): ``x W_sem^T + ((x V_A) * s_A) U_A^T + b`` without a dense weight gradient. Linears run
      :class:`LowRankLinear`; convolutions add a low-rank branch to the frozen ``W_sem`` convolution.

    Routing: when ``route`` is an (N, K) tensor of weights in [0, 1], subspace k's factors get sample n's gradient
    scaled by ``route[n, k]`` (0: none of it); the output and the gradient with respect to the input stay exact.
    Linears weight the samples in :class:`LowRankLinear`'s factor gradients; convolutions run live factors scaled by
    the route beside detached factors scaled by its complement, as one branch of twice the rank. ``route`` applies to
    every forward while set (see :func:`routing`) and is ignored without autograd. ``shared``, when set (see
    :func:`shared_factors`), holds this step's factors and their compute copies as slices of a :class:`FactorStack`
    and takes the place of :meth:`factors`.

    ``base_layer.weight`` holds ``W_sem`` after injection (frozen, in ``state_dict``). Frozen, non-persistent buffers
    (rebuilt from the SVD, never in ``state_dict``): ``sigma_tail`` (B, K*r), the tail factors at injection
    ``u_tail0`` (B, out/B, K*r) and ``v_tail0`` (B, in, K*r); ``u_sem`` (B, out/B, p - K*r) only when ``out/B > in``
    and ``v_sem`` (B, in, p - K*r) only when ``in > out/B`` (else None: the tail's complement is the semantic basis);
    and ``merged_weight`` (None unless merged).

    Args:
        base: the layer to wrap; its parameters are frozen and kept as ``base_layer``, its weight becomes ``W_sem``.
        K: number of artifact subspaces.
        r: rank of each subspace; ``K * r`` must not exceed ``min(out / blocks, in)``.
        blocks: equal row blocks decomposed separately (3 for a fused qkv Linear).
        dense: use the dense forward.
        svd: precomputed :func:`block_svd` of ``base.weight`` (e.g. from :class:`SVDCache`).
    """

    adapter_layer_names = ("U", "s", "V")
    base_layer: nn.Linear | nn.Conv2d
    u_sem: Tensor | None
    v_sem: Tensor | None
    sigma_tail: Tensor
    u_tail0: Tensor
    v_tail0: Tensor
    merged_weight: Tensor | None

    def __init__(
        self,
        base: nn.Linear | nn.Conv2d,
        K: int,
        r: int,
        blocks: int = 1,
        dense: bool = False,
        svd: Factors | None = None,
    ) -> None:
        super().__init__()
        _check_wrappable(base)
        weight = base.weight.detach()
        out = weight.shape[0]
        matrix = weight.reshape(out, -1)
        if (isinstance(base, nn.Conv2d) and blocks != 1) or out % blocks:
            raise ValueError(f"cannot split a {type(base).__name__} with {out} outputs into {blocks} row blocks")
        p = min(out // blocks, matrix.shape[1])
        if K < 1 or r < 1 or K * r > p:
            raise ValueError(f"K={K}, r={r}: need K, r >= 1 and K*r <= {p} (the rank of each weight block)")
        base.requires_grad_(False)
        self.base_layer = base
        self.K, self.r, self.blocks, self.dense = K, r, blocks, dense
        self.route: Tensor | None = None
        self.shared: LayerStep | None = None
        self._custom_conv = isinstance(base, nn.Conv2d) and type(base).forward is not nn.Conv2d.forward

        u, sigma, v = (t.to(weight) for t in (svd if svd is not None else block_svd(weight, blocks)))
        if u.shape != (blocks, out // blocks, p) or v.shape != (blocks, matrix.shape[1], p):
            raise ValueError(
                f"svd factors {tuple(u.shape)}, {tuple(v.shape)} do not fit the weight {tuple(weight.shape)}"
            )
        t = p - K * r
        own = torch.contiguous_format  # own storage, never a view of the full factors (e.g. a memory-mapped file)
        self.register_buffer("u_sem", u[..., :t].clone(memory_format=own) if u.shape[1] > p else None, False)
        self.register_buffer("v_sem", v[..., :t].clone(memory_format=own) if v.shape[1] > p else None, False)
        self.register_buffer("sigma_tail", sigma[:, t:].clone(memory_format=own), persistent=False)
        self.register_buffer("u_tail0", u[..., t:].clone(memory_format=own), persistent=False)
        self.register_buffer("v_tail0", v[..., t:].clone(memory_format=own), persistent=False)
        self.register_buffer("merged_weight", None, persistent=False)
        with torch.no_grad():
            base.weight.sub_(self.initial_tail().reshape(weight.shape))  # W_sem, in place of W
        columns = [slice(t + k * r, t + (k + 1) * r) for k in range(K)]
        self.U = nn.ParameterList(nn.Parameter(u[..., c].clone(memory_format=own)) for c in columns)
        self.s = nn.ParameterList(nn.Parameter(sigma[:, c].clone(memory_format=own)) for c in columns)
        self.V = nn.ParameterList(nn.Parameter(v[..., c].clone(memory_format=own)) for c in columns)
        # the same parameters in plain lists: a ParameterList's indexing costs microseconds, read every step
        self.factor_parameters = (list(self.U), list(self.s), list(self.V))
        self.train(base.training)

    def extra_repr(self) -> str:
        return f"K={self.K}, r={self.r}, blocks={self.blocks}, dense={self.dense}, merged={self.merged}"

    @property
    def merged(self) -> bool:
        return self.merged_weight is not None

    def subspace_parameters(self, k: int) -> list[nn.Parameter]:
        """The trainable factors ``U[k]``, ``s[k]``, ``V[k]`` of subspace k."""
        return [factor[k] for factor in self.factor_parameters]

    def factors(self) -> Factors:
        """All subspaces side by side: ``U_A`` (B, out/B, K*r), ``s_A`` (B, K*r), ``V_A`` (B, in, K*r)."""
        u, s, v = (torch.cat(factor, -1) for factor in self.factor_parameters)
        return u, s, v

    def semantic_weight(self) -> Tensor:
        """``W_sem`` as an (out, in) matrix (a conv kernel flattened to in*kh*kw columns)."""
        weight = self.base_layer.weight
        return weight.reshape(weight.shape[0], -1)

    def initial_tail(self) -> Tensor:
        """``W_tail0 = U_0 diag(sigma_tail) V_0^T``, the tail at injection, as an (out, in) matrix."""
        tail = (self.u_tail0 * self.sigma_tail[:, None]) @ self.v_tail0.mT
        return tail.reshape(-1, tail.shape[-1])

    def pretrained_weight(self) -> Tensor:
        """The wrapped layer's weight before injection, ``W = W_sem + W_tail0``, as an (out, in) matrix."""
        return self.semantic_weight() + self.initial_tail()

    def effective_weight(self, factors: Factors | None = None) -> Tensor:
        """``W_eff = W_sem + U_A diag(s_A) V_A^T`` as an (out, in) matrix, from ``factors`` or :meth:`factors`."""
        return LowRankLinear.effective(self.semantic_weight(), *(factors if factors is not None else self.factors()))

    def delta_weight(self, k: int) -> Tensor:
        """How far subspace k's term ``U_k diag(s_k) V_k^T`` moved since injection, as an (out, in) matrix.

        The K deltas sum to ``W_eff - W``.
        """
        b = slice(k * self.r, (k + 1) * self.r)
        now = (self.U[k] * self.s[k][:, None]) @ self.V[k].mT
        init = (self.u_tail0[..., b] * self.sigma_tail[:, None, b]) @ self.v_tail0[..., b].mT
        return (now - init).reshape(self.semantic_weight().shape)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``W_eff`` into one weight used by the forward; evaluation only (``train()`` unmerges)."""
        if self.training:
            raise RuntimeError("merge() is for evaluation: call eval() first (training needs the factored weights)")
        self.merged_weight = self.effective_weight()

    def unmerge(self) -> None:
        """Back to the factored forward."""
        self.merged_weight = None

    def train(self, mode: bool = True) -> SubspaceLayer:
        if mode:
            self.unmerge()
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        bias, route = self.base_layer.bias, self.route
        if self.merged_weight is not None:
            return self._op(x, self.merged_weight, bias)
        shared = self.shared
        factors = (shared.u, shared.s, shared.v) if shared is not None else self.factors()
        if self.dense:
            if route is not None:
                raise ValueError("routing needs the low-rank forward; set dense=False")
            return self._op(x, self.effective_weight(factors), bias)
        keep = self._route_mask(route, x) if route is not None and torch.is_grad_enabled() else None
        if isinstance(self.base_layer, nn.Linear):
            copies = shared.copies if shared is not None else None
            return LowRankLinear.apply(x, self.semantic_weight(), bias, *factors, keep, copies)
        u, s, v = (f[0] for f in factors)  # a convolution has one block
        if keep is not None:  # live factors weighted by the route beside detached ones weighted by the rest
            u, v = torch.cat([u, u.detach()], -1), torch.cat([v, v.detach()], -1)
            s = torch.cat([s * keep, s.detach() * (1 - keep)], -1)  # (N, 2c)
        low_rank = self._op(x, v.mT, None) * s[..., None, None]
        return self._op(x, self.semantic_weight(), bias) + F.conv2d(low_rank, u[..., None, None])

    def _op(self, x: Tensor, matrix: Tensor, bias: Tensor | None) -> Tensor:
        """The base layer's operation (with its stride, padding and dilation for a conv) with weight ``matrix``."""
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, matrix, bias)
        kernel = matrix.reshape(-1, *base.weight.shape[1:])
        if self._custom_conv:  # e.g. timm's Conv2dSame pads by input size in its own forward
            params = {"weight": kernel, "bias": bias}  # a None bias switches the base's off
            return torch.func.functional_call(base, params, (x,))  # type: ignore[arg-type]
        return base._conv_forward(x, kernel, bias)

    def _route_mask(self, route: Tensor, x: Tensor) -> Tensor:
        """``route`` (N, K) as (N, K*r) weights over the low-rank columns of every block."""
        if route.shape != (x.shape[0], self.K):
            raise ValueError(f"route has shape {tuple(route.shape)}; expected (batch, K) = ({x.shape[0]}, {self.K})")
        route = route.to(x.device)  # in the dtype routing() gave it
        return route[:, :, None].expand(-1, -1, self.r).flatten(1)  # no repeat_interleave: it syncs on CUDA


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


def subspace_layers(model: nn.Module) -> Iterator[tuple[str, SubspaceLayer]]:
    """The :class:`SubspaceLayer` modules of ``model`` with their names."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, SubspaceLayer))


@contextmanager
def routing(layers: Sequence[SubspaceLayer], route: Tensor | None) -> Iterator[None]:
    """Set ``route`` (N, K) on each of ``layers`` for the forward passes inside the block.

    The route is cast once to the autocast dtype active on its device, the dtype the layers' products run in.
    """
    if route is not None and torch.is_autocast_enabled(route.device.type):
        route = route.to(torch.get_autocast_dtype(route.device.type))
    for layer in layers:
        layer.route = route
    try:
        yield
    finally:
        for layer in layers:
            layer.route = None


@contextmanager
def merged(model: nn.Module) -> Iterator[None]:
    """Merge every subspace layer (the model must be in eval mode) and unmerge on exit."""
    layers = [m for _, m in subspace_layers(model)]
    try:
        for layer in layers:
            layer.merge()
        yield
    finally:
        for layer in layers:
            layer.unmerge()


def inject(
    model: nn.Module,
    targets: str | list[str],
    K: int,
    r: int,
    split_qkv: bool = True,
    dense: bool = False,
    cache: SVDCache | None = None,
    qkv_pattern: str = QKV_PATTERN,
) -> list[str]:
    """Replace every module whose full name matches a target with a :class:`SubspaceLayer` wrapping it.

    Args:
        model: modified in place; the wrapped layers' own parameters are frozen, nothing else is touched.
        targets: presets or regexes (:func:`resolve_targets`), matched with ``re.fullmatch`` against
            ``named_modules()``.
        K: number of artifact subspaces.
        r: rank of each subspace.
        split_qkv: decompose the q, k and v row blocks of Linears matching ``qkv_pattern`` separately.
        dense: give the layers the dense forward.
        cache: where SVDs are read from and written to; None computes them.
        qkv_pattern: regex (``re.fullmatch``) of fused qkv projections.

    Returns:
        The names of the replaced modules.
    """
    patterns = [resolve_targets(model, t) for t in ([targets] if isinstance(targets, str) else targets)]
    compiled = [re.compile(p) for p in patterns]
    modules = dict(model.named_modules())
    names = [n for n in modules if n and any(c.fullmatch(n) for c in compiled)]
    if not names:
        candidates = [n for n, m in modules.items() if isinstance(m, nn.Linear | nn.Conv2d)][:6]
        raise ValueError(f"no module name matches {patterns}; layer names look like {candidates}")
    for name in names:
        if isinstance(modules[name], SubspaceLayer):
            raise ValueError(f"{name} is already a SubspaceLayer")
        _check_wrappable(modules[name], name)
    for name in names:
        module = modules[name]
        blocks = 3 if split_qkv and re.fullmatch(qkv_pattern, name) else 1
        svd = cache.get(name, module.weight, blocks) if cache is not None else None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SubspaceLayer(module, K, r, blocks, dense, svd))
    return names


@dataclass
class FactorStack:
    """Same-shape subspace layers side by side: their factors along a leading layer axis, one tensor each.

    ``u`` (L, B, out/B, c), ``s`` (L, B, c), ``v`` (L, B, in, c) are differentiable stacks of the layers' parameters
    (columns ordered subspace by subspace, as :meth:`SubspaceLayer.factors`). Built on first use and kept for the
    stack's step: ``u_tail0``, ``sigma_tail`` and ``v_tail0`` stack the frozen tails, ``grams`` holds ``U_A^T U_A``
    and ``V_A^T V_A``. ``u_sem`` and ``v_sem`` list each layer's explicit semantic basis, or are None where the tail's
    complement is the basis (same shapes: all layers of a stack are alike).
    """

    layers: list[SubspaceLayer]
    u: Tensor
    s: Tensor
    v: Tensor

    @cached_property
    def u_tail0(self) -> Tensor:
        return torch.stack([m.u_tail0 for m in self.layers])

    @cached_property
    def sigma_tail(self) -> Tensor:
        return torch.stack([m.sigma_tail for m in self.layers])

    @cached_property
    def v_tail0(self) -> Tensor:
        return torch.stack([m.v_tail0 for m in self.layers])

    @property
    def u_sem(self) -> list[Tensor] | None:
        return [m.u_sem for m in self.layers if m.u_sem is not None] or None

    @property
    def v_sem(self) -> list[Tensor] | None:
        return [m.v_sem for m in self.layers if m.v_sem is not None] or None

    @cached_property
    def copies(self) -> ComputeCopies:
        """The stack's :func:`compute_copies` (in the autocast dtype active at first use)."""
        return compute_copies(self.u, self.s, self.v)

    @cached_property
    def grams(self) -> tuple[Tensor, Tensor]:
        """``U_A^T U_A`` and ``V_A^T V_A`` per (layer, block), shared by the losses of the step."""
        return self.u.mT @ self.u, self.v.mT @ self.v


def _stack_subspaces(params: list[Tensor], layers: int) -> Tensor:
    """``layers * K`` tensors (B, ..., r), layer-major, as one (layers, B, ..., K*r) tensor."""
    stacked = torch.stack(params)
    return stacked.unflatten(0, (layers, -1)).movedim(1, -2).flatten(-2)


def stack_factors(layers: Sequence[SubspaceLayer]) -> list[FactorStack]:
    """The layers grouped by kind, forward path, factor shapes, dtype and device (in first-seen order), one stack per
    group."""
    groups: dict[tuple[object, ...], list[SubspaceLayer]] = {}
    for m in layers:
        (u, *_), _, (v, *_) = m.factor_parameters
        key = (type(m.base_layer), m.dense, m.K, u.shape, v.shape, u.dtype, u.device)
        groups.setdefault(key, []).append(m)
    return [
        FactorStack(
            group,
            *(_stack_subspaces([p for m in group for p in m.factor_parameters[i]], len(group)) for i in range(3)),
        )
        for group in groups.values()
    ]


@contextmanager
def shared_factors(layers: Sequence[SubspaceLayer]) -> Iterator[list[FactorStack]]:
    """Stack the layers' factors once and let every layer's forward inside the block read its slice.

    Yields the stacks, for the constraint losses of the same step; gradients reach the parameters through them.
    """
    stacks = stack_factors(layers)
    for stack in stacks:
        first = stack.layers[0]
        reads_copies = isinstance(first.base_layer, nn.Linear) and not first.dense  # only LowRankLinear does
        copies = zip(*(c.unbind(0) for c in stack.copies), strict=True) if reads_copies else [None] * len(stack.layers)
        slices = (f.unbind(0) for f in (stack.u, stack.s, stack.v))
        for m, u, s, v, c in zip(stack.layers, *slices, copies, strict=True):
            m.shared = LayerStep(u, s, v, None if c is None else ComputeCopies(*c))
    try:
        yield stacks
    finally:
        for m in layers:
            m.shared = None


def semantic_part(a: Tensor, semantic: list[Tensor] | None, tail0: Tensor) -> Tensor:
    """A tensor whose Frobenius norm per (layer, block) is ``||S^T a||_F``, ``S`` the semantic basis on one side.

    ``a`` and ``tail0`` are stacked (L, B, n, c). ``S`` is given per layer (``semantic``) on the long side of a
    non-square weight. On a square side the semantic and initial tail bases together span the whole space, so
    ``||S^T a|| = ||a - T_0 T_0^T a||`` and ``S`` is not needed.
    """
    if semantic is not None:
        return torch.stack([basis.mT @ part for basis, part in zip(semantic, a.unbind(0), strict=True)])
    return a - tail0 @ (tail0.mT @ a)


def orth_loss(stack: FactorStack) -> Tensor:
    """Per layer ``||U_A^T U_A - I||^2 + ||V_A^T V_A - I||^2 + ||U_sem^T U_A||^2 + ||V_sem^T V_A||^2`` (squared
    Frobenius, mean over blocks)."""
    gram_u, gram_v = stack.grams
    eye = torch.eye(gram_u.shape[-1], dtype=gram_u.dtype, device=gram_u.device)
    terms = (
        gram_u - eye,
        gram_v - eye,
        semantic_part(stack.u, stack.u_sem, stack.u_tail0),
        semantic_part(stack.v, stack.v_sem, stack.v_tail0),
    )
    return sum(t.square().sum((-2, -1)) for t in terms).mean(-1)  # type: ignore[union-attr]


def spectral_loss(stack: FactorStack) -> Tensor:
    """Per layer ``||svdvals(U_A diag(s_A) V_A^T) - sigma_tail||^2 / ||sigma_tail||^2`` (mean over blocks).

    The singular values are those of the small ``R_U diag(s) R_V^T``, with ``R`` the Cholesky factor of each
    factor's Gram matrix (the R of its QR decomposition up to signs): batched, with no host sync of its own.
    """
    gram_u, gram_v = stack.grams
    chol_u, chol_v = torch.linalg.cholesky_ex(gram_u).L, torch.linalg.cholesky_ex(gram_v).L  # gram = L L^T
    core = (chol_u.mT * stack.s[..., None, :]) @ chol_v
    ref = stack.sigma_tail
    return ((torch.linalg.svdvals(core) - ref).square().sum(-1) / ref.square().sum(-1)).mean(-1)


def energy_loss(stack: FactorStack) -> Tensor:
    """Per layer Effort's keep-singular-value loss ``| ||W_eff||_F^2 - ||W||_F^2 |`` without forming ``W_eff``.

    Uses ``||W||^2 = ||W_sem||^2 + ||sigma_tail||^2`` and
    ``||W_eff||^2 = ||W_sem||^2 + 2 <W_sem, W_A> + ||W_A||^2``, with ``<W_sem, W_A> = sum_j s_j u_j^T W_sem v_j``.
    """
    u, s, v = stack.u, stack.s, stack.v
    blocks, rows = u.shape[1:3]
    w_sem_v = torch.stack(
        [m.semantic_weight().view(blocks, rows, -1) @ part for m, part in zip(stack.layers, v.unbind(0), strict=True)]
    )
    cross = (w_sem_v * u).sum(-2)
    gram_u, gram_v = stack.grams
    own = (s[..., :, None] * gram_u * gram_v * s[..., None, :]).sum((-2, -1))
    return (2 * (cross * s).sum(-1) + own - stack.sigma_tail.square().sum(-1)).abs().mean(-1)


def effort_orth_loss(stack: FactorStack) -> Tensor:
    """Per layer Effort's ``0.5 ||[U_r, U_res]^T [U_r, U_res] - I||_F + 0.5 ||[V_r, V_res]^T [V_r, V_res] - I||_F``
    (not squared, mean over blocks).

    ``U_r`` is the semantic basis, ``U_res = U_A``. The Gram matrix is assembled from its blocks; the semantic
    diagonal block ``U_r^T U_r - I`` is zero by construction (orthonormal SVD factors) and left out.
    """
    gram_u, gram_v = stack.grams
    eye = torch.eye(gram_u.shape[-1], dtype=gram_u.dtype, device=gram_u.device)

    def deviation(gram: Tensor, a: Tensor, semantic: list[Tensor] | None, tail0: Tensor) -> Tensor:
        cross = semantic_part(a, semantic, tail0) * math.sqrt(2)  # the off-diagonal blocks count twice
        return torch.linalg.vector_norm(torch.cat([(gram - eye).flatten(-2), cross.flatten(-2)], -1), dim=-1)

    u_dev = deviation(gram_u, stack.u, stack.u_sem, stack.u_tail0)
    v_dev = deviation(gram_v, stack.v, stack.v_sem, stack.v_tail0)
    return (0.5 * u_dev + 0.5 * v_dev).mean(-1)
