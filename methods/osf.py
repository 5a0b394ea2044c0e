"""OSF through PEFT (orthogonal subspace fine-tuning): each target weight's top singular directions are frozen and
the remaining ``rank`` directions train, as factors. The closest relative of Effort in PEFT (Effort trains the
residual of the smallest singular directions at rank 1)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from bench.adapter import Adapter
from bench.options import MethodOptions, bound, per_forgery
from bench.registry import register_method
from bench.targets import resolve_targets
from methods.peft_tuning import PeftAdapter, linear_only


@dataclass
class OSFOptions(MethodOptions):
    """PEFT ``OSFConfig`` settings.

    Attributes:
        rank: trainable directions per target weight (``effective_rank`` is the rest); ``None`` matches MASM's K * r.
        targets: a preset or regex, as for MASM.
    """

    rank: int | None = None
    targets: str = "auto"

    def bind(self, forgeries: Sequence[str] | None) -> None:
        self.rank = per_forgery(self.rank, forgeries)


@register_method(
    "osf",
    OSFOptions,
    "PEFT OSF: top singular directions frozen, the K*r smallest train",
    limits="Linear targets only: PEFT's OSF has no convolution",
)
def build(backbone: nn.Module, options: OSFOptions) -> Adapter:
    from peft import OSFConfig

    targets = resolve_targets(backbone, options.targets)
    linear_only(backbone, targets, "osf")
    rank = bound(options.rank, "rank")
    kept = {  # per module: what stays frozen, so that exactly ``rank`` directions train
        f"^{re.escape(n)}$": min(m.weight.shape) - rank for n, m in backbone.named_modules() if re.fullmatch(targets, n)
    }
    config = OSFConfig(target_modules=targets, rank_pattern=kept, effective_rank=None)
    return PeftAdapter(backbone, config, merge=False)  # its forward rebuilds the weight; PEFT cannot unmerge it
