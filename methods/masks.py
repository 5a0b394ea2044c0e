"""Selective layer masks of MASM: which (layer, subspace) factors an optimizer step may move.

A mask is a boolean tensor of shape (layers, subspaces); ``False`` freezes that layer's factors of that subspace
until the next refresh. The rules (masm.md section 2.2):

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


def state_ratios(loss_ema: Tensor, rho_max: float, tau: float) -> Tensor:
    """Mask ratio per subspace from the EMAs of the routed losses (0 for subspaces at or above the mean)."""
    mean = loss_ema.mean()
    if mean <= 0:
        return torch.zeros_like(loss_ema)
    return rho_max * ((mean - loss_ema) / (mean * tau)).clamp(0.0, 1.0)


def n_frozen(ratios: Tensor, layers: int) -> list[int]:
    """Number of layers to freeze per subspace (rounded down, so a tiny ratio freezes nothing)."""
    return [int(torch.floor(r * layers + 1e-9)) for r in ratios]


def freeze_largest(scores: Tensor, counts: list[int]) -> Tensor:
    """Mask freezing, per subspace (column), the ``counts[k]`` layers with the largest ``scores``."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    for k, count in enumerate(counts):
        if count:
            mask[scores[:, k].topk(count).indices, k] = False
    return mask


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
    return freeze_largest(-snr, [layers - n_keep] * snr.shape[1])


class GradStats:
    """EMAs of the gradient's mean (per element) and of its squared norm, per (layer, subspace)."""

    def __init__(self, layers: int, subspaces: int, decay: float) -> None:
        self.decay = decay
        self.mean: dict[tuple[int, int], Tensor] = {}
        self.sq = torch.zeros(layers, subspaces, dtype=torch.float64, device="cpu")  # even under a meta device

    def update(self, layer: int, subspace: int, grad: Tensor) -> None:
        g = grad.detach().flatten().double()
        key = (layer, subspace)
        previous = self.mean.get(key, torch.zeros_like(g))
        self.mean[key] = self.decay * previous + (1 - self.decay) * g
        self.sq[layer, subspace] = self.decay * self.sq[layer, subspace] + (1 - self.decay) * g.square().sum()

    def snr(self) -> Tensor:
        """bias^2 / variance per (layer, subspace); 0 where nothing was seen."""
        out = torch.zeros_like(self.sq)
        for (layer, subspace), mean in self.mean.items():
            bias2 = mean.square().sum()
            variance = (self.sq[layer, subspace] - bias2).clamp_min(1e-30)
            out[layer, subspace] = bias2 / variance
        return out

    def state_dict(self) -> dict[str, object]:
        return {"mean": {f"{k[0]},{k[1]}": v for k, v in self.mean.items()}, "sq": self.sq}

    def load_state_dict(self, state: dict) -> None:
        self.mean = {}
        for key, value in state["mean"].items():
            layer, subspace = key.split(",")
            self.mean[(int(layer), int(subspace))] = value
        self.sq = state["sq"]
