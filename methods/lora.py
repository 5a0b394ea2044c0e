"""LoRA through PEFT on the same target modules as the SVD methods, with rank matched to K * r; DoRA and PiSSA are
LoRA with PEFT's ``use_dora`` and ``init_lora_weights="pissa"``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bench.adapter import Adapter
from bench.options import MethodOptions, bound, per_forgery
from bench.registry import register_method, register_variant
from bench.schema import check_choice
from bench.targets import resolve_targets
from methods.peft_tuning import PeftAdapter, linear_only

INITS: dict[str, Any] = {"default": True, "pissa": "pissa"}
"""``init`` -> PEFT's ``init_lora_weights``: A random and B zero, or both from the principal singular directions
(the base weight then holds the residual, so the output at initialisation is unchanged)."""


@dataclass
class LoRAOptions(MethodOptions):
    """PEFT ``LoraConfig`` settings.

    Attributes:
        rank: LoRA rank; ``None`` matches MASM's K * r (the number of training forgery methods, at r = 1).
        alpha: scaling numerator (``lora_alpha``); the update is scaled by alpha / rank.
        dropout: dropout on the LoRA branch's input.
        targets: a preset or regex, as for MASM (``auto``: attention for ViTs, projections for EfficientNets).
        dora: weight-decomposed LoRA (``use_dora``): a trainable magnitude per output, LoRA on the direction.
        init: ``default`` or ``pissa`` (see :data:`INITS`).
    """

    rank: int | None = None
    alpha: int = 8
    dropout: float = 0.0
    targets: str = "auto"
    dora: bool = False
    init: str = "default"

    def __post_init__(self) -> None:
        check_choice("method.options.init", self.init, tuple(INITS))

    def bind(self, forgeries: Sequence[str] | None) -> None:
        self.rank = per_forgery(self.rank, forgeries)


class LoRA(PeftAdapter):
    """PEFT's LoRA layers in place; the base weights are frozen, the adapters and the head train."""

    def __init__(self, backbone: nn.Module, options: LoRAOptions) -> None:
        from peft import LoraConfig

        rank, targets = bound(options.rank, "rank"), resolve_targets(backbone, options.targets)
        if options.init == "pissa":
            linear_only(backbone, targets, "pissa")
        config = LoraConfig(
            r=rank,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=targets,
            use_dora=options.dora,
            init_lora_weights=INITS[options.init],
        )
        super().__init__(backbone, config)


@register_method("lora", LoRAOptions, "PEFT LoRA on the SVD methods' target modules, rank K*r")
def build(backbone: nn.Module, options: LoRAOptions) -> Adapter:
    return LoRA(backbone, options)


register_variant("dora", "lora", "PEFT DoRA: LoRA on the direction plus a trainable magnitude per output", dora=True)
register_variant(
    "pissa",
    "lora",
    "PEFT PiSSA: LoRA started on the principal singular directions",
    limits="Linear targets only: PEFT's PiSSA initialisation has no convolution",
    init="pissa",
)
