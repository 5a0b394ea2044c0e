"""PEFT's tuner layers injected in place (``inject_adapter_in_model``), the machinery every PEFT method shares.

The backbone's own weights are frozen; the tuner's parameters and the two-class head train. Evaluation runs merged
weights where PEFT can merge them (the plain backbone's cost); on exit the base weights are restored from a copy
rather than by unmerging, so no rounding drift builds up over many validations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.adapter import Adapter
from bench.backbone import classifier
from bench.diagnostics import weight_report
from bench.registry import UnsupportedBackbone


class PeftAdapter(Adapter):
    """A backbone with the PEFT tuner of ``config`` in place.

    Args:
        backbone: a timm model with a two-class head.
        config: a PEFT tuner config with its ``target_modules``.
        merge: evaluate with merged weights (``False`` for tuners whose merge swaps modules, e.g. LN tuning).
    """

    def __init__(self, backbone: nn.Module, config: Any, merge: bool = True) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.inject(config)  # marks the tuner's own parameters trainable
        self.tuned = {n: m for n, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)}
        classifier(backbone).requires_grad_(True)
        self.merges = merge

    def inject(self, config: Any) -> None:
        """Put the tuner layers of ``config`` into the backbone (a tuner that trains through state of its own model
        object overrides this to keep it)."""
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, self.backbone)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: _weight(m.get_base_layer()) for n, m in self.tuned.items()}

    @contextmanager
    def merged(self) -> Iterator[None]:
        """The tuned modules' base weights replaced by the merged ones, restored exactly on exit."""
        pristine = {n: w.detach().clone() for n, w in self._weights().items()}
        try:
            for m in self.tuned.values():
                m.merge()
            yield
        finally:
            for n, m in self.tuned.items():
                if m.merged:
                    m.unmerge()
                _weight(m.get_base_layer()).data.copy_(pristine[n])

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with super().evaluating():
            if not self.merges:
                yield
                return
            with self.merged():
                yield

    @torch.no_grad()
    def diagnostics(self, folder: Path) -> dict[str, float]:
        """Drift and spectrum change of every merged weight against its base (nothing for unmergeable tuners)."""
        if not self.merges:
            return {}
        before = {n: w.detach().clone() for n, w in self._weights().items()}
        with self.merged():
            named = {n: (before[n], w.detach().clone()) for n, w in self._weights().items()}
        scalars, _ = weight_report(named)
        return scalars


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def linear_only(backbone: nn.Module, targets: str, method: str) -> None:
    """Refuse, in one line, a backbone whose target modules are not all ``nn.Linear``."""
    other = sorted(
        {
            type(m).__name__
            for n, m in backbone.named_modules()
            if re.fullmatch(targets, n) and not isinstance(m, nn.Linear)
        }
    )
    if other:
        raise UnsupportedBackbone(
            f"method {method} adapts Linear layers only, and this backbone's targets are {', '.join(other)} "
            "(use a ViT, or another method)"
        )
