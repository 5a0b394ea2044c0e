"""Selective layer masks of MASM: which (layer, subspace) factors an optimizer step may move.

A mask is a boolean tensor of shape (layers, subspaces); ``False`` freezes that layer's factors of that subspace
until the next refresh. The rules (docs/masm.md, section 2.2):

- ``state``: a subspace whose routed loss (EMA) runs below the mean gets a mask ratio
  ``rho_k = rho_max * clip((mean - L_k) / (mean * tau), 0, 1)``; its ``rho_k`` fraction of layers with the largest
  relative drift is frozen.
- ``gradsnr``: per (layer, subspace), EMAs of the gradient's mean and of its squared norm give bias^2 / variance;
  the ``keep`` fraction of layers with the highest ratio is updated, the rest frozen.
- ``random``: the ratios of ``state``, layers drawn at random (the control).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.slot_optim import Slots


def state_ratios(loss_ema: Tensor, rho_max: float, tau: float) -> Tensor:
    """Mask ratio per subspace from the EMAs of the routed losses (0 for subspaces at or above the mean)."""
    mean = loss_ema.mean()
    ratios = rho_max * ((mean - loss_ema) / (mean * tau)).clamp(0.0, 1.0)
    return torch.where(mean > 0, ratios, torch.zeros_like(ratios))  # a choice on the device, not on the host


def n_frozen(ratios: Tensor, layers: int) -> Tensor:
    """Number of layers to freeze per subspace (rounded down, so a tiny ratio freezes nothing)."""
    return torch.floor(ratios * layers + 1e-9).long()


def freeze_largest(scores: Tensor, counts: Tensor) -> Tensor:
    """Mask freezing, per subspace (column), the ``counts[k]`` layers with the largest ``scores`` (the first of
    equal scores first); computed from ranks, with no host sync."""
    ranks = scores.argsort(dim=0, descending=True, stable=True).argsort(dim=0)
    return ranks >= counts.to(scores.device)[None, :]


def state_mask(loss_ema: Tensor, drift: Tensor, rho_max: float, tau: float) -> Tensor:
    """The ``state`` rule: ``drift`` is (layers, subspaces) relative drift ``||dW_lk|| / ||W_l||``."""
    return freeze_largest(drift, n_frozen(state_ratios(loss_ema, rho_max, tau), drift.shape[0]))


def random_mask(loss_ema: Tensor, layers: int, rho_max: float, tau: float, generator: torch.Generator) -> Tensor:
    """The ``random`` control: as many frozen layers per subspace as ``state`` would freeze, drawn at random."""
    scores = torch.rand(layers, loss_ema.numel(), generator=generator)
    return freeze_largest(scores, n_frozen(state_ratios(loss_ema, rho_max, tau), layers))


def gradsnr_mask(snr: Tensor, keep: float) -> Tensor:
    """The ``gradsnr`` rule: per subspace keep the ``keep`` fraction of layers with the highest bias^2 / variance."""
    layers = snr.shape[0]
    n_keep = max(1, round(keep * layers))
    return freeze_largest(-snr, torch.full((snr.shape[1],), layers - n_keep, device=snr.device))


class GradStats:
    """Per slot (see :class:`bench.slot_optim.Slots`), EMAs of the gradient (per element) and of its squared norm,
    over a list of tensors that share one slot layout (e.g. a group's U, s and V)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.mean: list[Tensor] = []
        self.sq: Tensor | None = None

    def update(self, grads: list[Tensor], slots: Slots, seen: Tensor) -> None:
        """Fold in ``grads`` at the slots where ``seen`` (L, K) is set; the others keep their EMAs."""
        grads = [g.detach().double() for g in grads]
        if self.sq is None:
            self.mean = [torch.zeros_like(g) for g in grads]
            self.sq = torch.zeros(seen.shape, dtype=torch.float64, device=seen.device)
        d = self.decay
        for mean, g in zip(self.mean, grads, strict=True):
            mean.copy_(torch.where(slots.expand(seen, g.ndim), d * mean + (1 - d) * g, mean))
        norms = sum(slots.reduce(g.square()) for g in grads)
        self.sq.copy_(torch.where(seen, d * self.sq + (1 - d) * norms, self.sq))

    def squares(self, slots: Slots) -> Tensor:
        """(L, K) EMA of the gradient's squared norm; 0 where nothing was seen."""
        if self.sq is None:
            return torch.zeros(slots.live.shape, dtype=torch.float64, device=slots.live.device)
        return self.sq

    def snr(self, slots: Slots) -> Tensor:
        """(L, K) bias^2 / variance; 0 where nothing was seen."""
        if self.sq is None:
            return self.squares(slots)
        bias2 = sum(slots.reduce(m.square()) for m in self.mean)
        return torch.where(self.sq > 0, bias2 / (self.sq - bias2).clamp_min(1e-30), torch.zeros_like(self.sq))

    def state_dict(self) -> dict[str, object]:
        return {"mean": list(self.mean), "sq": self.sq}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.sq = list(state["mean"]), state["sq"]
