"""BitFit: only the biases of the backbone (and the head) train."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.backbone import classifier
from bench.options import MethodOptions
from bench.registry import register_method


@dataclass
class BitFitOptions(MethodOptions):
    """No options: every bias of the backbone trains."""


class BitFit(Adapter):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone)
        for name, p in backbone.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        classifier(backbone).requires_grad_(True)


@register_method("bitfit", BitFitOptions, "BitFit: only the biases and the head train")
def build(backbone: nn.Module, options: BitFitOptions) -> Adapter:
    return BitFit(backbone)
