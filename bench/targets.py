"""Target layers of the methods that adapt chosen layers (the SVD methods, LoRA and PEFT's methods, full-ft's watch
list): presets per backbone family, or a regex over module names."""

from __future__ import annotations

import re

from torch import nn

from bench.errors import ConfigError

PRESETS: dict[str, dict[str, str]] = {
    "vit": {
        "attn": r"(.*\.)?blocks\.\d+\.attn\.(qkv|proj)",
        "mlp": r"(.*\.)?blocks\.\d+\.mlp\.(fc1|fc2)",
        "all": r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
    },
    "effnet": {
        "proj": r"(.*\.)?(blocks\.\d+\.\d+\.conv_pwl|conv_head)",
        "mlp": r"(.*\.)?blocks\.\d+\.\d+\.conv_pw",
        "all": r"(.*\.)?(blocks\.\d+\.\d+\.(conv_pw|conv_pwl)|conv_head)",
    },
}
"""Target regexes per backbone family (matched with ``re.fullmatch`` against full module names).

timm ViTs: attention projections, MLP layers, or both. timm EfficientNets: the 1x1 projection convs of the blocks
and the head conv, the 1x1 expansion convs (the MLP-like part of an inverted residual), or all pointwise convs
(depthwise convs are not matrices and never targets).
"""

DEFAULTS = {"vit": "attn", "effnet": "proj"}
"""The preset ``auto`` stands for, per family."""


def resolve_targets(model: nn.Module, targets: str) -> str:
    """The regex for ``targets``: a preset of the model's family (``auto`` is its default) or a regex as given."""
    names = [n for n, _ in model.named_modules()]
    family = next((f for f, presets in PRESETS.items() if any(re.fullmatch(presets["all"], n) for n in names)), None)
    if family is None:
        if targets == "auto" or targets in {k for presets in PRESETS.values() for k in presets}:
            raise ConfigError(f"targets {targets!r}: presets exist for {', '.join(PRESETS)} backbones; give a regex")
        return targets
    presets = PRESETS[family]
    key = DEFAULTS[family] if targets == "auto" else targets
    if key not in presets and any(key in other for other in PRESETS.values()):
        raise ConfigError(f"targets {targets!r} is not a preset for {family} backbones ({', '.join(presets)})")
    return presets.get(key, key)
