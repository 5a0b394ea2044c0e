"""Linear probe: the pretrained backbone is frozen (normalisation statistics too); only the head trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.backbone import classifier
from bench.options import MethodOptions
from bench.registry import register_method


@dataclass
class LinearProbeOptions(MethodOptions):
    """The linear probe has no options."""


class LinearProbe(Adapter):
    """Freezes everything but timm's classifier and keeps the backbone in eval mode while training."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone)
        backbone.requires_grad_(False)
        classifier(backbone).requires_grad_(True)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()
        classifier(self.backbone).train(mode)
        return self


@register_method("linear-probe", LinearProbeOptions, "frozen backbone, only the two-class head trains")
def build(backbone: nn.Module, options: LinearProbeOptions) -> Adapter:
    return LinearProbe(backbone)
