"""LoRA through PEFT on the same target modules as the SVD methods, with rank matched to K * r."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.adapter import Adapter
from bench.diagnostics import weight_report
from bench.registry import register_method
from methods.masm import DEFAULT_K
from methods.svd_layer import resolve_targets


@dataclass
class LoRAOptions:
    """PEFT ``LoraConfig`` settings.

    Attributes:
        rank: LoRA rank; ``None`` matches MASM's K * r (the number of training forgery methods, at r = 1).
        alpha: scaling numerator (``lora_alpha``); the update is scaled by alpha / rank.
        dropout: dropout on the LoRA branch's input.
        targets: a preset or regex, as for MASM (``auto``: attention for ViTs, projections for EfficientNets).
    """

    rank: int | None = None
    alpha: float = 8.0
    dropout: float = 0.0
    targets: str = "auto"

    def bind(self, forgery_methods: list[str]) -> None:
        if self.rank is None:
            self.rank = len(forgery_methods) or DEFAULT_K


class LoRA(Adapter):
    """PEFT's LoRA layers injected in place; the base weights are frozen, the adapters and the head train.

    Evaluation runs merged weights (PEFT's ``merge``), at the plain backbone's cost. On exit the base weights are
    restored from a copy rather than by subtracting the update again, so no rounding drift builds up over many
    validations.
    """

    def __init__(self, backbone: nn.Module, options: LoRAOptions) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        super().__init__(backbone)
        rank = options.rank or DEFAULT_K
        config = LoraConfig(
            r=rank,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=resolve_targets(backbone, options.targets),
        )
        backbone.requires_grad_(False)
        inject_adapter_in_model(config, backbone)
        self.lora_layers = {n: m for n, m in backbone.named_modules() if isinstance(m, LoraLayer)}
        for layer in self.lora_layers.values():
            for adapter in (layer.lora_A, layer.lora_B):
                adapter.requires_grad_(True)
        backbone.get_classifier().requires_grad_(True)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with super().evaluating():
            layers = list(self.lora_layers.values())
            pristine = [m.get_base_layer().weight.clone() for m in layers]
            try:
                for m in layers:
                    m.merge()
                yield
            finally:
                for m, weight in zip(layers, pristine, strict=True):
                    if m.merged:
                        m.unmerge()
                    m.get_base_layer().weight.copy_(weight)

    @torch.no_grad()
    def diagnostics(self, folder: Path) -> dict[str, float]:
        named = {
            n: (m.get_base_layer().weight, m.get_base_layer().weight + m.get_delta_weight("default"))
            for n, m in self.lora_layers.items()
        }
        scalars, _ = weight_report(named)
        return scalars


@register_method("lora", LoRAOptions, "PEFT LoRA on the SVD methods' target modules, rank K*r")
def build(backbone: nn.Module, options: LoRAOptions) -> Adapter:
    return LoRA(backbone, options)
