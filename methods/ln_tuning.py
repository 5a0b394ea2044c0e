"""LN tuning through PEFT: only the normalisation layers (and the head) train. Reported to generalise well for
CLIP-based deepfake detection ("CLIPping the Deception", 2024); on a CNN it tunes the batch norms."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.options import MethodOptions
from bench.registry import register_method
from methods.peft_tuning import PeftAdapter

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclass
class LNTuningOptions(MethodOptions):
    """No options: every normalisation layer of the backbone with parameters (LayerNorm, GroupNorm, BatchNorm) is
    tuned."""


@register_method("ln-tuning", LNTuningOptions, "PEFT LN tuning: only the normalisation layers and the head train")
def build(backbone: nn.Module, options: LNTuningOptions) -> Adapter:
    from peft import LNTuningConfig

    norms = [n for n, m in backbone.named_modules() if isinstance(m, NORMS) and any(True for _ in m.parameters())]
    exactly = "|".join(re.escape(n) for n in norms)  # a regex matches whole names; a list would match suffixes
    return PeftAdapter(backbone, LNTuningConfig(target_modules=exactly), merge=False)
