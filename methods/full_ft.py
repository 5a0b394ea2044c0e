"""Full fine-tuning: every backbone parameter and the head train (the "no adapter" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.registry import register_method


@dataclass
class FullFTOptions:
    """Full fine-tuning has no options."""


@register_method("full-ft", FullFTOptions, "all backbone parameters and the head train")
def build(backbone: nn.Module, options: FullFTOptions) -> Adapter:
    backbone.requires_grad_(True)
    return Adapter(backbone)
