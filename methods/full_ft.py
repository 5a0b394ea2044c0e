"""Full fine-tuning: every backbone parameter and the head train (the "no adapter" baseline)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.adapter import Adapter
from bench.diagnostics import weight_report
from bench.options import MethodOptions
from bench.registry import register_method
from bench.targets import resolve_targets


@dataclass
class FullFTOptions(MethodOptions):
    """Full fine-tuning options.

    Attributes:
        watch: layers whose drift is reported (as for the SVD methods: ``auto`` is their default targets).
    """

    watch: str = "auto"


class FullFT(Adapter):
    """Trains everything; keeps a copy of the watched pretrained weights to measure their drift."""

    def __init__(self, backbone: nn.Module, options: FullFTOptions) -> None:
        super().__init__(backbone)
        backbone.requires_grad_(True)
        try:
            pattern = re.compile(resolve_targets(backbone, options.watch))
        except ValueError:  # a backbone without presets: nothing watched
            pattern = None
        self.watched = {
            name: module.weight.detach().clone()
            for name, module in backbone.named_modules()
            if pattern is not None and pattern.fullmatch(name) and isinstance(module, nn.Linear | nn.Conv2d)
        }

    @torch.no_grad()
    def diagnostics(self, folder: Path) -> dict[str, float]:
        modules = dict(self.backbone.named_modules())
        scalars, _ = weight_report({n: (w, modules[n].weight) for n, w in self.watched.items()})
        return scalars


@register_method("full-ft", FullFTOptions, "all backbone parameters and the head train")
def build(backbone: nn.Module, options: FullFTOptions) -> Adapter:
    return FullFT(backbone, options)
