"""Same-shape subspace layers side by side for a training step: their factors, tails and Gram matrices stacked."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from methods.subspaces.layer import SubspaceLayer
from methods.subspaces.low_rank import ComputeCopies, LayerStep, compute_copies

T = TypeVar("T")


def _memo(build: Callable[[FactorStack], T]) -> property:
    """A property built on first use and kept on the stack (functools' ``cached_property`` takes a lock, which
    ``torch.compile`` cannot trace)."""

    def get(stack: FactorStack) -> T:
        if build.__name__ not in stack.memo:
            stack.memo[build.__name__] = build(stack)
        return cast(T, stack.memo[build.__name__])

    return property(get, doc=build.__doc__)


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
    memo: dict[str, object] = field(default_factory=dict, repr=False)

    @_memo
    def u_tail0(self) -> Tensor:
        return torch.stack([m.u_tail0 for m in self.layers])

    @_memo
    def sigma_tail(self) -> Tensor:
        return torch.stack([m.sigma_tail for m in self.layers])

    @_memo
    def v_tail0(self) -> Tensor:
        return torch.stack([m.v_tail0 for m in self.layers])

    @property
    def u_sem(self) -> list[Tensor] | None:
        return [m.u_sem for m in self.layers if m.u_sem is not None] or None

    @property
    def v_sem(self) -> list[Tensor] | None:
        return [m.v_sem for m in self.layers if m.v_sem is not None] or None

    @_memo
    def copies(self) -> ComputeCopies:
        """The stack's :func:`compute_copies` (in the autocast dtype active at first use)."""
        return compute_copies(self.u, self.s, self.v)

    @_memo
    def grams(self) -> tuple[Tensor, Tensor]:
        """``U_A^T U_A`` and ``V_A^T V_A`` per (layer, block), shared by the losses of the step."""
        return self.u.mT @ self.u, self.v.mT @ self.v


def stack_factors(layers: Sequence[SubspaceLayer]) -> list[FactorStack]:
    """The layers' factors as one :class:`FactorStack` per :class:`FactorGroup` (in first-seen order): the group's
    parameters themselves when every layer of the group is asked for, their rows of these layers otherwise."""
    asked = {id(m) for m in layers}
    groups = list({id(m.home[0]): m.home[0] for m in layers}.values())
    stacks = []
    for group in groups:
        rows = [i for i, m in enumerate(group.layers) if id(m) in asked]
        if len(rows) == len(group.layers):
            stacks.append(FactorStack(group.layers, group.u, group.s, group.v))
        else:
            index = torch.tensor(rows, device=group.u.device)
            u, s, v = (p.index_select(0, index) for p in (group.u, group.s, group.v))
            stacks.append(FactorStack([group.layers[i] for i in rows], u, s, v))
    return stacks


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


def subspace_drift(stack: FactorStack) -> Tensor:
    """(L, K) ``||U_k diag(s_k) V_k^T - U0_k diag(sigma_k) V0_k^T||_F`` per layer and subspace, over all blocks.

    The difference is written as ``(U - U0) S V^T + U0 (S - sigma) V^T + U0 sigma (V - V0)^T``, a product of rank
    3r whose norm comes from two small Gram matrices: no dense weight, and no cancellation of large terms.
    """
    k, r = stack.layers[0].K, stack.layers[0].r

    def split(t: Tensor) -> Tensor:  # (..., K*r) -> (..., K, r)
        return t.unflatten(-1, (k, r))

    u, s, v = split(stack.u), split(stack.s), split(stack.v)
    u0, sigma, v0 = split(stack.u_tail0), split(stack.sigma_tail), split(stack.v_tail0)
    left = torch.cat([u - u0, u0, u0], -1)
    right = torch.cat([v, v, v - v0], -1)
    mid = torch.cat([s, s - sigma, sigma], -1)
    gram_left = torch.einsum("lbnkr,lbnkq->lbkrq", left, left)
    gram_right = torch.einsum("lbnkr,lbnkq->lbkrq", right, right)
    squared = torch.einsum("lbkr,lbkrq,lbkq,lbkrq->lbk", mid, gram_left, mid, gram_right)
    return squared.sum(1).clamp_min(0).sqrt()
