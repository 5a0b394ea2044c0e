"""AdaLoRA through PEFT (adaptive budget allocation, Zhang et al., ICLR 2023): LoRA in SVD form, ``B diag(E) A``, on
the SVD methods' target modules. Each layer starts with ``init_rank`` triplets; during training the triplets of least
sensitivity are pruned (their ``E`` entry set to zero) until the layers hold ``rank`` (K*r, LoRA's rank) on average,
with PEFT's orthogonality regulariser on ``A`` and ``B``.

PEFT allocates in ``AdaLoraModel.update_and_allocate(step)``, called after ``optimizer.step()`` and before
``zero_grad()``: it smooths the sensitivity ``|p * grad|`` of every factor entry (the updated weight with the gradient
just applied, as clipped) and, on the schedule's steps, zeroes the pruned ``E`` entries in place, so that the next
forward runs at the budget. The loop calls ``after_optimizer_step`` after ``zero_grad``, so ``before_optimizer_step``
keeps a reference to each factor's gradient (clipping then scales it in place) and ``after_optimizer_step`` lends them
back for PEFT's call: PEFT's order exactly, with no copy. In the last ``tfinal`` steps the budget is fixed and PEFT
zeroes the pruned entries after every step, so they stay at zero.

The schedule spans ``total_step``, which a run binds to its number of optimizer steps (``train.epochs`` x
``train.steps_per_epoch``; a config that leaves the steps to the data is refused in one line). Built outside a run
(``bench params``, the contract tests) it has no schedule and keeps every triplet.

The allocator's smoothed scores and the rank pattern are the adapter's extra state, so they travel with every
checkpoint and a resumed run prunes as the uninterrupted one. The checkpoint selected on validation may date from
before the final allocation, with more triplets than the target (``diag/rank_mean`` gives the selected weights').
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.options import MethodOptions, bound, per_forgery
from bench.registry import register_method
from bench.targets import resolve_targets
from methods.peft_tuning import PeftAdapter

if TYPE_CHECKING:
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraLayer

ADAPTER = "default"
SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")
"""The rank allocator's per-entry state: the last sensitivity, its smoothed value and its smoothed uncertainty."""


@dataclass
class AdaLoRAOptions(MethodOptions):
    """PEFT ``AdaLoraConfig`` settings.

    Attributes:
        rank: average rank per target layer once pruned (``target_r``); ``None`` matches LoRA's K * r.
        init_rank: triplets per layer before pruning (``init_r``); ``None`` is 1.5 x ``rank``, rounded up (the
            ratio of the paper's and PEFT's defaults, 12 to 8).
        alpha: scaling numerator (``lora_alpha``); the update is scaled by alpha / init_rank.
        targets: a preset or regex, as for MASM.
        total_step: optimizer steps the schedule spans; ``None`` is bound to the run's.
        tinit: first steps, before any pruning; ``None`` is a tenth of ``total_step``.
        tfinal: last steps, at the final budget; ``None`` is a fifth of ``total_step`` (with ``tinit``, the
            proportions of ``AdaLoraConfig``'s own example).
        delta_t: steps between two allocations while pruning (``deltaT``).
        orth_reg_weight: weight of the orthogonality regulariser (the ``orth`` loss part); 0 switches it off.
    """

    rank: int | None = None
    init_rank: int | None = None
    alpha: int = 8
    targets: str = "auto"
    total_step: int | None = None
    tinit: int | None = None
    tfinal: int | None = None
    delta_t: int = 1
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.rank is not None and self.init_rank is not None and self.init_rank < self.rank:
            raise ConfigError(f"method.options.init_rank={self.init_rank} is below rank={self.rank}")
        if self.delta_t < 1 or self.orth_reg_weight < 0:
            raise ConfigError("method.options: delta_t must be at least 1 and orth_reg_weight at least 0")
        self.schedule()

    def bind(self, forgeries: Sequence[str] | None) -> None:
        self.rank = per_forgery(self.rank, forgeries)

    def bind_steps(self, total_steps: int | None) -> None:
        if self.total_step is not None:
            return
        if total_steps is None:
            raise ConfigError(
                "method.options.total_step: adalora schedules its pruning over the run's optimizer steps, which this "
                "config leaves to the size of the data; set train.steps_per_epoch (or method.options.total_step)"
            )
        self.total_step = total_steps
        self.schedule()

    def schedule(self) -> tuple[int, int, int]:
        """``total_step``, ``tinit`` and ``tfinal`` with their defaults (outside a run: a one-step schedule, which PEFT
        needs and no allocation follows); a schedule that leaves no step to prune in is an error."""
        if self.total_step is None:
            return 1, 0, 0
        total = self.total_step
        tinit = total // 10 if self.tinit is None else self.tinit
        tfinal = total // 5 if self.tfinal is None else self.tfinal
        if min(tinit, tfinal) < 0 or tinit >= total - tfinal:
            raise ConfigError(
                f"method.options: tinit={tinit} and tfinal={tfinal} leave no step to prune in of total_step={total}"
            )
        return total, tinit, tfinal


class AdaLoRA(PeftAdapter):
    """PEFT's AdaLoRA layers in place, their rank allocator driven by the optimizer-step hooks (module docstring)."""

    def __init__(self, backbone: nn.Module, options: AdaLoRAOptions) -> None:
        from peft import AdaLoraConfig

        rank = bound(options.rank, "rank")
        total, tinit, tfinal = options.schedule()
        config = AdaLoraConfig(
            init_r=options.init_rank or math.ceil(1.5 * rank),
            target_r=rank,
            lora_alpha=options.alpha,
            target_modules=resolve_targets(backbone, options.targets),
            total_step=total,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=options.delta_t,
            orth_reg_weight=options.orth_reg_weight,
        )
        super().__init__(backbone, config)
        self.scheduled = options.total_step is not None
        self.orth_weight = options.orth_reg_weight
        self.factors = [p for n, p in backbone.named_parameters() if "lora_" in n]  # what the allocator scores
        self._kept: list[Tensor | None] = []

    def inject(self, config: Any) -> None:
        from peft.tuners.adalora import AdaLoraModel

        tuner = AdaLoraModel(self.backbone, config, ADAPTER)  # inject_adapter_in_model would drop its allocator
        self.allocate = tuner.update_and_allocate  # held as bound methods and objects: no second module tree
        self.allocator = tuner.rankallocator
        self.config = cast("AdaLoraConfig", tuner.peft_config[ADAPTER])  # PEFT records the rank pattern here

    @property
    def svd_layers(self) -> dict[str, AdaLoraLayer]:
        """The tuned layers, each ``B diag(E) A``."""
        return cast("dict[str, AdaLoraLayer]", self.tuned)

    def training_loss(self, images: Tensor, labels: Tensor, forgeries: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, parts = super().training_loss(images, labels, forgeries)
        if not self.orth_weight:
            return loss, parts
        with torch.autocast(images.device.type, enabled=False):  # in the factors' precision, never bf16
            orth = self.orthogonality()
        return loss + self.orth_weight * orth, {**parts, "orth": orth.detach()}

    def orthogonality(self) -> Tensor:
        """The mean over the factors of ``||A A^T - I||_F`` and ``||B^T B - I||_F``: the formula of
        ``AdaLoraModel.forward`` (peft/tuners/adalora/model.py), which adds it only to a model output's ``.loss``, and
        a timm backbone's logits have none."""
        named = self.backbone.named_parameters()
        grams = [p @ p.T if ".lora_A." in n else p.T @ p for n, p in named if ".lora_A." in n or ".lora_B." in n]
        stacked = torch.stack(grams)
        eye = torch.eye(stacked.shape[-1], device=stacked.device, dtype=stacked.dtype)
        return torch.linalg.matrix_norm(stacked - eye).mean()

    def before_optimizer_step(self, step: int) -> None:
        if self.scheduled:
            self._kept = [p.grad for p in self.factors]  # references: clipping scales them in place, as PEFT sees them

    def after_optimizer_step(self, step: int) -> None:
        if self.scheduled:
            with self._gradients_kept():
                self.allocate(step)

    @contextmanager
    def _gradients_kept(self) -> Iterator[None]:
        """The factors' gradients as :meth:`before_optimizer_step` kept them, then as they were."""
        now = [p.grad for p in self.factors]
        for p, grad in zip(self.factors, self._kept, strict=True):
            p.grad = grad
        try:
            yield
        finally:
            for p, grad in zip(self.factors, now, strict=True):
                p.grad = grad
            self._kept = []

    def ranks(self) -> dict[str, int]:
        """Unpruned triplets (nonzero ``E`` entries) per tuned layer."""
        return {n: int(m.lora_E[ADAPTER].count_nonzero()) for n, m in self.svd_layers.items()}

    def diagnostics(self, folder: Path) -> dict[str, float]:
        """The weight report, and each layer's rank and their mean as pruning left them."""
        ranks = self.ranks()
        return {
            **super().diagnostics(folder),
            **{f"rank/{n}": float(r) for n, r in ranks.items()},
            "rank_mean": sum(ranks.values()) / len(ranks),
        }

    def get_extra_state(self) -> dict[str, Any]:
        """The allocator's scores and the rank pattern, so that a resumed run prunes as the uninterrupted one."""
        return {**{k: getattr(self.allocator, k) for k in SCORES}, "rank_pattern": self.config.rank_pattern}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        devices = {n: p.device for n, p in self.backbone.named_parameters()}
        for key in SCORES:
            setattr(self.allocator, key, {n: t.to(devices[n]) for n, t in state[key].items()})
        self.config.rank_pattern = state["rank_pattern"]


@register_method(
    "adalora", AdaLoRAOptions, "PEFT AdaLoRA: SVD-form LoRA pruned by sensitivity from 1.5*K*r to K*r triplets a layer"
)
def build(backbone: nn.Module, options: AdaLoRAOptions) -> Adapter:
    return AdaLoRA(backbone, options)
