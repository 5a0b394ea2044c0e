"""OFT through PEFT (orthogonal fine-tuning): each target weight is multiplied by a trainable block-diagonal
orthogonal matrix (Cayley parametrised), so its singular values, and the angles between its neurons, are kept."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.options import MethodOptions
from bench.registry import register_method
from bench.targets import resolve_targets
from methods.peft_tuning import PeftAdapter


@dataclass
class OFTOptions(MethodOptions):
    """PEFT ``OFTConfig`` settings.

    Attributes:
        block_size: side of each orthogonal block (``oft_block_size``); a layer trains ``in * (block - 1) / 2``
            numbers, so 32 matches LoRA at rank 4 on a ViT-L's attention (15,872 against 16,384 on its qkv).
        targets: a preset or regex, as for MASM.
    """

    block_size: int = 32
    targets: str = "auto"


@register_method("oft", OFTOptions, "PEFT OFT: a block-diagonal orthogonal rotation of each target weight")
def build(backbone: nn.Module, options: OFTOptions) -> Adapter:
    from peft import OFTConfig

    config = OFTConfig(
        oft_block_size=options.block_size, r=0, target_modules=resolve_targets(backbone, options.targets)
    )
    return PeftAdapter(backbone, config)
