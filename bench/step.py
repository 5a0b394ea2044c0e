"""The training step: what the loop, ``bench perf`` and the contract tests all run.

:class:`Step` owns one optimizer step: the method's loss under autocast and its backward over the micro-batches,
the adapter's hooks, gradient clipping, the optimizer and its schedule, and ``zero_grad``. The only host sync is one
read of the losses per micro-batch, queued after its backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from bench.adapter import Adapter
from bench.config import OptimConfig
from bench.slot_optim import SlotAdamW

Batch = Mapping[str, Tensor]
"""A training batch: ``image``, ``label`` and ``method`` (the forgery method's index, -1 for reals)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message is the reason recorded with the run."""


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; nothing elsewhere."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: none (always 1), or a linear warm-up and then constant or cosine
    decay to zero."""

    def factor(step: int) -> float:
        if kind == "none":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def betas(optim: OptimConfig) -> tuple[float, float]:
    first, second = optim.betas
    return first, second


def build_optimizer(model: Adapter, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """``optim.name`` over the method's parameters; fused on CUDA (one kernel per step for all parameters).

    AdamW decays the tensors of the method's :meth:`~bench.adapter.Adapter.param_groups`; Adam and SGD add coupled
    L2 to the gradient of every trainable tensor, as the papers that use them do. A method whose parameters hold
    slots (:meth:`~bench.adapter.Adapter.slots`) gets :class:`~bench.slot_optim.SlotAdamW`, which steps only the
    live slots.
    """
    slots = model.slots()
    fused = True if device.type == "cuda" else None
    if slots and optim.name != "sgd":
        coupled = optim.name == "adam"
        groups = model.param_groups(0.0 if coupled else optim.weight_decay)
        return SlotAdamW(groups, slots, optim.lr, betas(optim), optim.eps, optim.weight_decay if coupled else None)
    if slots:
        raise TrainingError("optim.name=sgd cannot step a method that masks slots of its parameters: use adamw or adam")
    if optim.name == "adamw":
        groups = model.param_groups(optim.weight_decay)
        return torch.optim.AdamW(groups, lr=optim.lr, betas=betas(optim), eps=optim.eps, fused=fused)
    params = [p for _, p in model.trainable_parameters()]
    if optim.name == "adam":
        return torch.optim.Adam(params, optim.lr, betas(optim), optim.eps, optim.weight_decay, fused=fused)
    return torch.optim.SGD(params, optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, fused=fused)


def read_losses(loss: Tensor, parts: Mapping[str, Tensor]) -> dict[str, float]:
    """The loss and its named parts as floats, read from the device in one transfer (one sync per batch)."""
    values = torch.stack([loss.detach().float(), *(v.detach().float().reshape(()) for v in parts.values())])
    return dict(zip(["loss", *parts], values.tolist(), strict=True))


LossFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Mapping[str, Tensor]]]


def backward(
    loss_fn: LossFn | nn.Module, batch: Batch, device: torch.device, amp: bool = True, parts: int = 1
) -> dict[str, float]:
    """Loss and backward of one micro-batch of ``parts`` (its gradient divided by that); its losses as floats.

    Args:
        loss_fn: ``(images, labels, methods) -> (loss, parts)``, e.g. an adapter's ``training_loss``.
    """
    images = batch["image"].to(device, non_blocking=True)
    labels, methods = batch["label"].to(device), batch["method"].to(device)
    with autocast(device, amp):
        loss, named = loss_fn(images, labels, methods)
    (loss / parts).backward()  # queued before the read below waits for the device
    return read_losses(loss, named)


@dataclass
class Step:
    """One optimizer step of a method.

    Attributes:
        model: the adapter (its hooks run in the step).
        optimizer: over the adapter's parameters.
        scheduler: stepped after the optimizer, or None (a constant rate).
        device: where batches go.
        amp: bf16 autocast on CUDA.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        loss: computes ``(loss, parts)`` from images, labels and methods; the adapter's ``training_loss`` when None
            (a distributed wrapper otherwise).
    """

    model: Adapter
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None
    device: torch.device
    amp: bool = True
    grad_clip: float | None = 1.0
    loss: nn.Module | None = None

    def __post_init__(self) -> None:
        self.trainable = [p for _, p in self.model.trainable_parameters()]

    @classmethod
    def build(
        cls,
        model: Adapter,
        optim: OptimConfig,
        device: torch.device,
        total: int,
        amp: bool = True,
        loss: nn.Module | None = None,
    ) -> Step:
        """The step of ``optim`` (optimizer, ``total`` steps of its schedule, clipping) for ``model``."""
        optimizer = build_optimizer(model, optim, device)
        scheduler = LambdaLR(optimizer, schedule(optim.schedule, optim.warmup_steps, total))
        return cls(model, optimizer, scheduler, device, amp, optim.grad_clip, loss)

    def __call__(self, batches: Sequence[Batch], step: int) -> dict[str, float]:
        """Optimizer step ``step`` (0-based) on the mean gradient of ``batches``; the mean losses and the rate used.

        Raises:
            TrainingError: on a non-finite loss.
        """
        compute = self.loss if self.loss is not None else self.model.training_loss
        totals: dict[str, float] = {}
        for batch in batches:
            values = backward(compute, batch, self.device, self.amp, len(batches))
            if not math.isfinite(values["loss"]):
                raise TrainingError(
                    f"non-finite loss ({values['loss']}) at step {step}: lower optim.lr or check the data"
                )
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v / len(batches)
        self.model.before_optimizer_step(step)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step(step)
        return {**totals, "lr": lr}
