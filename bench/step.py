"""The training step: what the loop, ``bench perf`` and the contract tests all run.

:class:`Step` owns one optimizer step: the method's loss under autocast and its backward over the micro-batches,
the adapter's hooks, gradient clipping, the optimizer at the rate of its schedule, and clearing the gradients. The
only host sync is one read of the losses per step, queued after the optimizer; ``train.compile: step`` captures the
device part as one graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench.adapter import Adapter
from bench.config import OptimConfig
from bench.slot_optim import SlotAdamW

Batch = Mapping[str, Tensor]
"""A training batch: ``image``, ``label`` and ``forgery`` (the forgery method's index, -1 for reals)."""
BATCH_KEYS = ("image", "label", "forgery")


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


def build_optimizer(
    model: Adapter, optim: OptimConfig, device: torch.device, traceable: bool = False
) -> torch.optim.Optimizer:
    """``optim.name`` over the method's parameters; fused on CUDA (one kernel per step for all parameters).

    AdamW decays the tensors of the method's :meth:`~bench.adapter.Adapter.param_groups`; Adam and SGD add coupled
    L2 to the gradient of every trainable tensor, as the papers that use them do. A method whose parameters hold
    slots (:meth:`~bench.adapter.Adapter.slots`) gets :class:`~bench.slot_optim.SlotAdamW`, which steps only the
    live slots; so does a ``traceable`` optimizer (torch's own break a compiled graph at their step), whatever the
    method: without slots it is torch's AdamW or Adam, to float rounding.
    """
    slots = model.slots()
    fused = True if device.type == "cuda" else None
    if (slots or traceable) and optim.name != "sgd":
        coupled = optim.name == "adam"
        groups = model.param_groups(0.0 if coupled else optim.weight_decay)
        return SlotAdamW(groups, slots, optim.lr, betas(optim), optim.eps, optim.weight_decay if coupled else None)
    if slots:
        raise TrainingError("optim.name=sgd cannot step a method that masks slots of its parameters: use adamw or adam")
    if traceable:
        raise TrainingError("optim.name=sgd cannot run in a compiled step (train.compile=step): use adamw or adam")
    if optim.name == "adamw":
        groups = model.param_groups(optim.weight_decay)
        return torch.optim.AdamW(groups, lr=optim.lr, betas=betas(optim), eps=optim.eps, fused=fused)
    params = [p for _, p in model.trainable_parameters()]
    if optim.name == "adam":
        return torch.optim.Adam(params, optim.lr, betas(optim), optim.eps, optim.weight_decay, fused=fused)
    return torch.optim.SGD(params, optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, fused=fused)


def read_losses(values: Mapping[str, Tensor]) -> dict[str, float]:
    """Losses as floats, read from the device in one transfer (the step's one host sync)."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, numbers, strict=True))


LossFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Mapping[str, Tensor]]]


def backward(loss_fn: LossFn | nn.Module, batch: Batch, amp: bool = True, parts: int = 1) -> dict[str, Tensor]:
    """Loss and backward of one micro-batch (on the model's device) of ``parts``, its gradient divided by that; the
    loss and its named parts, detached, on the device.

    Args:
        loss_fn: ``(images, labels, forgeries) -> (loss, parts)``, e.g. an adapter's ``training_loss``.
    """
    images = batch["image"]
    with autocast(images.device, amp):
        loss, named = loss_fn(images, batch["label"], batch["forgery"])
    (loss / parts).backward()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in named.items()}}


def _plain_rates(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """A checkpoint's rates as floats, whatever the step that saved it held them in (a compiled step: tensors)."""
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])


COMPILE_STEP = {"trace_autograd_ops": True}
"""Dynamo settings of a compiled step: trace ``Tensor.backward()`` into the graph instead of refusing it."""


@dataclass
class Step:
    """One optimizer step of a method.

    :meth:`update` is the part on the device: the micro-batches' losses and backward, the adapter's
    ``before_optimizer_step``, clipping, the optimizer and clearing the gradients. ``compiled`` captures it whole,
    as one ``torch.compile(fullgraph=True)`` graph (``reduce-overhead``, i.e. CUDA graphs, on CUDA); the rate is then
    a device tensor that each step fills. Around it, on the host: the rate of the step, the adapter's
    ``after_optimizer_step`` (which may branch on the step number) and the one read of the losses.

    Attributes:
        model: the adapter (its hooks run in the step).
        optimizer: over the adapter's parameters.
        rate: the learning rate of each optimizer step (0-based), or None for the optimizer's rate as built.
        device: where batches go.
        amp: bf16 autocast on CUDA.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        loss: computes ``(loss, parts)`` from images, labels and forgeries; the adapter's ``training_loss`` when None
            (a distributed wrapper otherwise).
        compiled: capture :meth:`update` as one graph.
    """

    model: Adapter
    optimizer: torch.optim.Optimizer
    rate: Callable[[int], float] | None
    device: torch.device
    amp: bool = True
    grad_clip: float | None = 1.0
    loss: nn.Module | None = None
    compiled: bool = False

    def __post_init__(self) -> None:
        self.trainable = [p for _, p in self.model.trainable_parameters()]
        self.base_rate = float(self.optimizer.param_groups[0]["lr"])
        self._rates: list[Tensor] = []  # a compiled step's rates, on the device
        self._update: Callable[[Sequence[Batch], int], dict[str, Tensor]] = self.update
        if self.compiled:
            self._update = self._captured()

    def _captured(self) -> Callable[[Sequence[Batch], int], dict[str, Tensor]]:
        """:meth:`update` as one graph, whose capture failures are one-line :class:`TrainingError` s.

        Refused for parameters with gradient hooks (measured: PEFT's OSF projects its gradients so, and trains
        otherwise compiled). The optimizer's rates become device tensors: a float would be a constant of the graph.
        """
        hooked = [name for name, p in self.model.trainable_parameters() if p._backward_hooks]
        if hooked:
            raise TrainingError(
                f"train.compile=step: {hooked[0]} has a gradient hook, which a captured step does not run as the eager "
                "step does; use train.compile=blocks"
            )
        self._rates = [torch.tensor(float(group["lr"]), device=self.device) for group in self.optimizer.param_groups]
        self._in_place()
        self.optimizer.register_load_state_dict_post_hook(lambda _: self._in_place())
        self.optimizer.register_state_dict_post_hook(_plain_rates)
        graph = torch.compile(
            self.update, fullgraph=True, mode="reduce-overhead" if self.device.type == "cuda" else None
        )

        def captured(batches: Sequence[Batch], step: int) -> dict[str, Tensor]:
            try:
                with torch._dynamo.config.patch(COMPILE_STEP):
                    return graph(batches, step)
            except torch._dynamo.exc.TorchDynamoException as err:  # a graph break, a guard on data, a backend failure
                reason = str(err).strip().splitlines()[0]
                raise TrainingError(
                    f"train.compile=step: this method's step cannot be captured as one graph ({reason}); "
                    "use train.compile=blocks"
                ) from err

        return captured

    def _in_place(self) -> None:
        """Keep what the graph reads and writes at one address, so that CUDA graphs replay the step in place: the
        rates are the step's own tensors (a loaded optimizer's would be floats, then graph inputs), and the
        optimizer's state is static (otherwise CUDA graphs are skipped for "mutated inputs", measured: all of it)."""
        for group, rate in zip(self.optimizer.param_groups, self._rates, strict=True):
            group["lr"] = rate
        for value in [*self._rates, *(v for state in self.optimizer.state.values() for v in state.values())]:
            if isinstance(value, Tensor):
                torch._dynamo.mark_static_address(value)

    @classmethod
    def build(
        cls,
        model: Adapter,
        optim: OptimConfig,
        device: torch.device,
        total: int,
        amp: bool = True,
        loss: nn.Module | None = None,
        compiled: bool = False,
    ) -> Step:
        """The step of ``optim`` (optimizer, ``total`` steps of its schedule, clipping) for ``model``."""
        optimizer = build_optimizer(model, optim, device, traceable=compiled)
        factor = schedule(optim.schedule, optim.warmup_steps, total)
        return cls(model, optimizer, lambda step: optim.lr * factor(step), device, amp, optim.grad_clip, loss, compiled)

    def update(self, batches: Sequence[Batch], step: int) -> dict[str, Tensor]:
        """The step on the device, on the mean gradient of ``batches`` (on the device); the mean losses there."""
        compute = self.loss if self.loss is not None else self.model.training_loss
        means: dict[str, Tensor] = {}
        for batch in batches:
            for name, value in backward(compute, batch, self.amp, len(batches)).items():
                share = value / len(batches)
                means[name] = means[name] + share if name in means else share
        self.model.before_optimizer_step(step)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.optimizer.step()
        for p in self.trainable:  # the optimizer's zero_grad is not traceable
            p.grad = None
        return means

    def __call__(self, batches: Sequence[Batch], step: int) -> dict[str, float]:
        """Optimizer step ``step`` (0-based) on the mean gradient of ``batches``; the mean losses and the rate used.

        Raises:
            TrainingError: on a non-finite loss, or a ``compiled`` step that cannot be captured.
        """
        lr = self.base_rate if self.rate is None else self.rate(step)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)  # on the device, queued: no sync
            else:
                group["lr"] = lr
        on_device = [{k: b[k].to(self.device, non_blocking=True) for k in BATCH_KEYS} for b in batches]
        means = self._update(on_device, step)
        self.model.after_optimizer_step(step)
        values = read_losses(means)
        if not math.isfinite(values["loss"]):
            raise TrainingError(f"non-finite loss ({values['loss']}) at step {step}: lower optim.lr or check the data")
        return {**values, "lr": lr}
