"""The constraint losses of the SVD methods, batched over a :class:`~methods.subspaces.stack.FactorStack`: one
value per layer (the mean over its blocks); callers average them over layers."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.subspaces.stack import FactorStack


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
    factor's Gram matrix (the R of its QR decomposition up to signs), found by :func:`small_svdvals`: batched, with
    no host sync.
    """
    gram_u, gram_v = stack.grams
    chol_u, chol_v = torch.linalg.cholesky_ex(gram_u).L, torch.linalg.cholesky_ex(gram_v).L  # gram = L L^T
    core = (chol_u.mT * stack.s[..., None, :]) @ chol_v
    ref = stack.sigma_tail
    return ((small_svdvals(core) - ref).square().sum(-1) / ref.square().sum(-1)).mean(-1)


@functools.cache
def _jacobi_orders(n: int, device: torch.device) -> tuple[Tensor, list[Tensor]]:
    """Column orders for parallel Jacobi on ``n`` (even) columns: in every round, column p of the first half pairs
    with column p of the second; the pairs of the ``n - 1`` rounds of a sweep (a round-robin tournament) cover all.

    Returns the first round's order and, per round, the permutation from its order to the next round's.
    """
    players, orders = list(range(n)), []
    for _ in range(n - 1):
        half = n // 2
        orders.append([players[a] for a in range(half)] + [players[n - 1 - a] for a in range(half)])
        players = [players[0], players[-1], *players[1:-1]]
    steps = [[orders[r].index(p) for p in orders[(r + 1) % len(orders)]] for r in range(len(orders))]
    return torch.tensor(orders[0], device=device), [torch.tensor(p, device=device) for p in steps]


def small_svdvals(core: Tensor) -> Tensor:
    """Singular values (descending) of a batch of small square matrices, differentiable, with no host sync.

    ``torch.linalg.svdvals`` checks its solver's status on the host every call; here one-sided Jacobi sweeps
    (Hestenes, all disjoint column pairs of a round rotated at once) find the right singular vectors ``V`` without
    autograd, and ``sigma_i = ||core v_i||`` with ``V`` held fixed has the gradient of the singular values,
    ``u_i v_i^T``. A fixed number of sweeps: Jacobi converges quadratically, to float64 precision in 4 sweeps on
    4 x 4 and 7 on 16 x 16 random matrices.
    """
    c = core.shape[-1]
    odd = c % 2
    if odd:  # a zero row and column: one more singular value, 0, dropped below
        core = F.pad(core, (0, 1, 0, 1))
    n = c + odd
    first, steps = _jacobi_orders(n, core.device)
    with torch.no_grad():
        v = torch.eye(n, dtype=core.dtype, device=core.device).index_select(-1, first).expand_as(core)
        for _ in range(max(4, math.ceil(math.log2(n)) + 3)):
            for permutation in steps:
                a = core @ v
                a_i, a_j, v_i, v_j = a[..., : n // 2], a[..., n // 2 :], v[..., : n // 2], v[..., n // 2 :]
                gamma = (a_i * a_j).sum(-2, keepdim=True)
                zeta = (a_j.square().sum(-2, keepdim=True) - a_i.square().sum(-2, keepdim=True)) / (2 * gamma)
                t = torch.copysign((zeta.abs() + torch.sqrt(1 + zeta * zeta)).reciprocal(), zeta).nan_to_num(0.0)
                cos = torch.rsqrt(1 + t * t)  # t = 0 where a pair is orthogonal already: no rotation
                v = torch.cat([cos * (v_i - t * v_j), cos * (t * v_i + v_j)], -1).index_select(-1, permutation)
    values = (core @ v).norm(dim=-2).sort(-1, descending=True).values
    return values[..., :c]


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
