"""FMSD: our reading of the MASM paper's third version (arXiv 2601.01041v3, "Generalizable Deepfake Detection Based
on Forgery-aware Layer Masking and Multi-artifact Subspace Decomposition"); docs/masm.md, section 3.

Forgery-aware layer masking comes first. Before training, ``select_batches`` training batches pass through the plain,
frozen backbone and its seeded, untrained head (as every method starts), and the gradient of each target layer's
weight is recorded, with no update; the ``keep`` fraction of layers with the highest gradient bias^2 / variance (the
statistic of MASM's ``gradsnr`` mask, :class:`methods.masks.GradStats`) is selected. Only those layers are then
decomposed into a semantic subspace and K artifact subspaces, with routing and both constraints (MASM's own
machinery); every other layer stays frozen and plain. In v1 (``masm``) every target layer is decomposed and a mask
throttles subspaces during training; here the mask decides which layers are decomposed and trained at all.

Why no update while selecting: the statistic then describes the pretrained layers on this training data rather than
a warm-up's drift, and selecting costs no training step. The selection is saved with the checkpoint, so a resumed
run decomposes the same layers without selecting again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.registry import register_method, register_variant
from bench.schema import check_choice
from bench.slot_optim import Slots
from bench.targets import resolve_targets
from methods import masks
from methods.masm import MASM, MASMOptions


@dataclass
class FMSDOptions(MASMOptions):
    """MASM's switches (``mask`` off by default: the selection replaces it), plus the selection's.

    Attributes:
        select: ``gradsnr`` (highest gradient bias^2 / variance), ``gradnorm`` (largest mean squared gradient
            norm), ``random`` (drawn with ``seed``, the control) or ``all`` (no selection: ``masm`` without its mask).
        select_batches: training batches whose gradients the selection reads.
        keep: fraction of the target layers selected (at least one).
    """

    mask: str = "none"
    select: str = "gradsnr"
    select_batches: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method.options.select", self.select, ("gradsnr", "gradnorm", "random", "all"))


def layer_scores(gradients: Iterable[list[Tensor]], layers: int, rule: str, ema: float) -> Tensor:
    """Score per layer from a stream of per-batch gradient lists (one tensor per layer): the EMAs of
    :class:`~methods.masks.GradStats` read as bias^2 / variance (``gradsnr``) or as the squared norm (``gradnorm``)."""
    stats = [masks.GradStats(ema) for _ in range(layers)]
    slots: list[Slots] = []
    for grads in gradients:
        slots = slots or [Slots(torch.ones(1, 1, dtype=torch.bool, device=g.device), g.numel()) for g in grads]
        for layer, grad, slot in zip(stats, grads, slots, strict=True):
            layer.update([grad.reshape(1, -1)], slot, slot.live)
    if not slots:  # no batches
        return torch.zeros(layers, dtype=torch.float64, device="cpu")
    scores = [s.squares(slot) if rule == "gradnorm" else s.snr(slot) for s, slot in zip(stats, slots, strict=True)]
    return torch.cat([score.reshape(1) for score in scores]).cpu()


def choose(scores: Tensor, keep: float, rule: str, seed: int) -> list[int]:
    """Indices of the selected layers, in layer order: the top ``keep`` fraction by score, a random draw of as
    many, or all."""
    n = len(scores)
    if rule == "all":
        return list(range(n))
    kept = masks.gradsnr_mask(scores[:, None], keep)[:, 0]  # the gradsnr mask's own top-keep rule
    if rule == "random":  # as many layers, drawn
        count = int(kept.sum())
        return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu")[:count].tolist())
    return kept.nonzero()[:, 0].tolist()


class FMSD(MASM):
    """The backbone with forgery-aware layer selection, then MASM's subspaces on the selected layers only."""

    options: FMSDOptions

    def __init__(self, backbone: nn.Module, options: FMSDOptions) -> None:
        super().__init__(backbone, options, decompose=False)
        targets = resolve_targets(backbone, options.targets)
        self.candidates = [n for n, _ in backbone.named_modules() if n and re.fullmatch(targets, n)]
        if not self.candidates:
            raise ConfigError(f"no module name matches the targets {targets!r}")
        self.selected: list[str] = []
        self.scores = torch.zeros(len(self.candidates), dtype=torch.float64, device="cpu")

    def prepare(self, batches: Callable[[int], Iterator[dict[str, Tensor]]], saved: dict[str, Any] | None) -> None:
        extra = (saved or {}).get("_extra_state") or {}
        if "selected" in extra:  # a resumed run: the layers chosen before
            self.selected, self.scores = list(extra["selected"]), extra["scores"]
        else:
            o = self.options
            if o.select in ("gradsnr", "gradnorm"):
                self.scores = layer_scores(
                    self._gradients(batches(o.select_batches)), len(self.candidates), o.select, o.ema
                )
            self.selected = [self.candidates[i] for i in choose(self.scores, o.keep, o.select, o.seed)]
        self.decompose([re.escape(n) for n in self.selected])

    def _gradients(self, batches: Iterator[dict[str, Tensor]]) -> Iterator[list[Tensor]]:
        """The cross-entropy gradient of every candidate layer's weight, batch by batch (nothing is updated)."""
        modules = dict(self.backbone.named_modules())
        weights = [modules[n].weight for n in self.candidates]
        was_training = self.training
        self.train()
        try:
            for w in weights:
                w.requires_grad_(True)
            for batch in batches:
                loss = F.cross_entropy(self(batch["image"]), batch["label"])
                yield [g.detach() for g in torch.autograd.grad(loss, weights)]
        finally:
            for w in weights:
                w.requires_grad_(False)
            self.train(was_training)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "selected": list(self.selected), "scores": self.scores.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.selected, self.scores = list(state["selected"]), state["scores"]

    @torch.no_grad()
    def diagnostics(self, folder: Path) -> dict[str, float]:
        scalars = super().diagnostics(folder)
        chosen = np.array([n in self.selected for n in self.candidates])
        np.savez(
            folder / "selection.npz", layers=np.array(self.candidates), scores=self.scores.numpy(), selected=chosen
        )
        _draw_selection(self.candidates, self.scores.numpy(), chosen, self.options.select, folder / "selection.png")
        scalars["selected_layers"] = float(chosen.sum())
        scalars["selected_fraction"] = float(chosen.mean())
        return scalars


def _draw_selection(layers: list[str], scores: np.ndarray, chosen: np.ndarray, rule: str, out: Path) -> None:
    """A bar per candidate layer (its selection score), the selected ones coloured."""
    fig = Figure(figsize=(max(4.0, 0.3 * len(layers)), 3.2))
    ax = fig.subplots()
    ax.bar(range(len(layers)), scores, color=np.where(chosen, "tab:red", "tab:grey"))
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel(rule if rule in ("gradsnr", "gradnorm") else "score (unused)")
    ax.set_title(f"FMSD layer selection ({int(chosen.sum())} of {len(layers)} layers, red)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


@register_method(
    "fmsd",
    FMSDOptions,
    "MASM v3 (our reading): select layers by gradient bias^2/variance, then subspaces",
    artifacts=FMSD.artifacts,
    activity=FMSD.activity,
    perf_rows=(),  # its layers are chosen from training batches, which `bench perf` does not prepare
)
def build(backbone: nn.Module, options: FMSDOptions) -> Adapter:
    return FMSD(backbone, options)


register_variant("fmsd/random-layers", "fmsd", "as many layers, drawn at random (control)", select="random")
register_variant("fmsd/gradnorm", "fmsd", "layers with the largest gradient norm", select="gradnorm")
register_variant("fmsd/no-selection", "fmsd", "every target layer decomposed (masm without its mask)", select="all")
