"""AdamW over parameters made of slots that step on their own (MASM's (layer, subspace) factors in one tensor).

A parameter with :class:`Slots` is a stack whose leading axis is the layer and whose last axis holds ``K`` blocks of
``width`` columns (slot ``(l, k)`` is ``p[l, ..., k*width:(k+1)*width]``). Before each step its owner sets
``Slots.live`` (L, K); a slot that is not live keeps its values, both moments and its step count bit for bit, as a
tensor whose gradient is None is left by torch's AdamW. Live slots follow torch's AdamW, each with its own step
count for the bias corrections. Everything runs on the parameters' device: no host sync, whatever the mask; and the
state is made with the optimizer, so a compiled step traces one graph. A parameter without slots keeps torch's
AdamW state (``step``, ``exp_avg``, ``exp_avg_sq``), so its state loads into either optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Slots:
    """The slot layout of a stacked parameter.

    Attributes:
        live: (L, K) booleans, updated in place by the parameter's owner before each optimizer step.
        width: columns of the last axis per slot.
    """

    live: Tensor
    width: int

    def expand(self, values: Tensor, ndim: int) -> Tensor:
        """(L, K) ``values`` as (L, 1, ..., K*width), broadcastable to a parameter of ``ndim`` dimensions."""
        layers, k = values.shape
        columns = values[:, :, None].expand(layers, k, self.width).reshape(layers, k * self.width)
        return columns.view(layers, *([1] * (ndim - 2)), k * self.width)

    def reduce(self, values: Tensor) -> Tensor:
        """The (L, K) sums of ``values`` (shaped like a parameter) over each slot's elements."""
        per_column = values.sum(tuple(range(1, values.ndim - 1))) if values.ndim > 2 else values
        return per_column.unflatten(-1, (-1, self.width)).sum(-1)

    def mask(self, ndim: int) -> Tensor:
        """:meth:`expand` of ``live``."""
        return self.expand(self.live, ndim)


class SlotAdamW(torch.optim.Optimizer):
    """Adam with decoupled (AdamW) or coupled (Adam's L2) weight decay, stepping only the live slots of slotted
    parameters and every other parameter with a gradient as torch's AdamW or Adam would.

    Args:
        params: parameters or groups (a group's ``weight_decay`` is decoupled decay).
        slots: the slot layout of the slotted parameters.
        lr, betas, eps: as torch's AdamW.
        coupled: weight of an L2 term added to every gradient (torch's Adam ``weight_decay``); None for none.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        slots: Mapping[Tensor, Slots],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        coupled: float | None = None,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.slots = dict(slots)
        self.coupled = coupled
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)
        self.register_load_state_dict_post_hook(SlotAdamW._on_device)

    def _init_state(self, p: Tensor) -> None:
        slots = self.slots.get(p)
        count = "step" if slots is None else "steps"
        self.state[p][count] = torch.zeros(() if slots is None else slots.live.shape, device=p.device)
        self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _on_device(optimizer: torch.optim.Optimizer) -> None:
        """After a load: step counts on their parameter's device (torch's AdamW keeps its own on the CPU)."""
        for p, state in optimizer.state.items():
            for key in ("step", "steps"):
                if key in state:
                    state[key] = state[key].to(p.device, torch.float32)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad, lr, beta1, beta2, eps, decay)

    def _update(self, p: Tensor, grad: Tensor, lr: float, beta1: float, beta2: float, eps: float, decay: float) -> None:
        slots = self.slots.get(p)
        state = self.state[p]
        steps, exp_avg, exp_avg_sq = state["step" if slots is None else "steps"], state["exp_avg"], state["exp_avg_sq"]
        if self.coupled:
            grad = grad.add(p, alpha=self.coupled)
        if slots is None:
            steps += 1
            counts = steps.to(p.dtype)
        else:
            steps += slots.live
            counts = slots.expand(steps.clamp_min(1).to(p.dtype), p.ndim)  # 1 where never stepped: not used
        new_avg = exp_avg.lerp(grad, 1 - beta1)
        new_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - torch.pow(beta1, counts))
        denom = (new_sq.sqrt() / (1 - torch.pow(beta2, counts)).sqrt()).add_(eps)
        new_p = p.mul(1 - lr * decay).sub_(step_size * new_avg / denom)
        live = None if slots is None else slots.mask(p.ndim)
        for old, new in ((p, new_p), (exp_avg, new_avg), (exp_avg_sq, new_sq)):
            old.copy_(new if live is None else torch.where(live, new, old))
