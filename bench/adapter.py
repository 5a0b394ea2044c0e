"""The contract between a fine-tuning method and the loop.

A method turns a backbone into an :class:`Adapter`. The loop only calls the methods below; whatever a strategy does
differently (extra losses, routing of samples to subspaces, gradient masks, merged evaluation weights) lives in its
adapter, never in the loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.slot_optim import Slots

Draw = Callable[[Mapping[str, Mapping[str, np.ndarray]], Path], Path]
"""A figure of per-label arrays, written as a PNG to the given path, which it returns."""


class Artifact(NamedTuple):
    """An ``.npz`` file that an adapter's :meth:`~Adapter.diagnostics` writes, and how the report draws it: ``draw``
    gets the file's arrays per label (first seed of each) and writes ``figure``, shown under ``caption``."""

    file: str
    draw: Draw
    caption: str

    @property
    def figure(self) -> str:
        """The figure's file name: the artifact's, as a PNG."""
        return str(Path(self.file).with_suffix(".png"))


class Activity(NamedTuple):
    """A run value (its :mod:`bench.metric_keys` key) that says how much of a method acted, shown under ``header``
    beside the method's ablation table (mean over seeds)."""

    key: str
    header: str


class Adapter(nn.Module):
    """A backbone adapted by a method; the default is full fine-tuning with cross-entropy.

    Subclasses freeze or wrap parts of ``self.backbone`` in ``__init__`` and override the hooks they need.
    """

    artifacts: ClassVar[tuple[Artifact, ...]] = ()
    """The files :meth:`diagnostics` may write for the report's figures (its registration passes them on)."""
    activity: ClassVar[tuple[Activity, ...]] = ()
    """The run values the report shows beside its ablations (its registration passes them on)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        """Two-class logits."""
        return self.backbone(images)

    def training_loss(self, images: Tensor, labels: Tensor, forgeries: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and named, detached parts to log.

        Args:
            images: a batch of normalised images.
            labels: 0 real, 1 fake.
            forgeries: index of each fake's forgery method in the training card's list, -1 for reals.
        """
        ce = F.cross_entropy(self(images), labels)
        return ce, {"ce": ce.detach()}

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters this method trains (those with ``requires_grad``)."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def num_trainable(self) -> int:
        return sum(p.numel() for _, p in self.trainable_parameters())

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on matrices and kernels, none on biases, norms and vectors."""
        decay = [p for _, p in self.trainable_parameters() if p.ndim >= 2]
        other = [p for _, p in self.trainable_parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def slots(self) -> dict[Tensor, Slots]:
        """Parameters made of slots that an optimizer step moves only where live (default: none), with their layout;
        the loop then steps them with :class:`~bench.slot_optim.SlotAdamW`."""
        return {}

    def prepare(self, batches: Callable[[int], Iterator[dict[str, Tensor]]], saved: dict[str, Any] | None) -> None:
        """Set-up that needs data, once, before the optimizer is built (default: none).

        Args:
            batches: ``batches(n)`` yields ``n`` training batches (``image``, ``label``, ``forgery`` on the model's
                device), drawn apart from the training stream.
            saved: the :meth:`checkpoint_state` a resumed run will load, whose choices must be reused, not made
                again; ``None`` on a fresh start.
        """

    def before_optimizer_step(self, step: int) -> None:
        """Called after the backward pass(es), before clipping and the optimizer step (e.g. to mask gradients)."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after the optimizer step."""

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode (an adapter with factored weights merges them here and unmerges on exit)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def diagnostics(self, folder: Path) -> dict[str, float]:
        """Scalars describing the adapted weights (drift, diversity, ...) at the end of training: summaries, logged,
        and per-layer values keyed ``<quantity>/<layer>``, which go to the table ``folder/layers.csv``; the
        :attr:`artifacts` declared are written to ``folder``."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint needs: trainable parameters and all persistent buffers (frozen weights are rebuilt)."""
        trainable = {n for n, _ in self.trainable_parameters()}
        params = {n for n, _ in self.named_parameters()}
        state = self.state_dict()  # includes modules' extra state (e.g. a mask history)
        return {
            k: copy.deepcopy(v.detach() if isinstance(v, Tensor) else v)
            for k, v in state.items()
            if k in trainable or k not in params
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`checkpoint_state` output; anything missing must be a frozen parameter."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        wrong = [k for k in missing if k not in frozen]
        if wrong or unexpected:
            raise KeyError(f"checkpoint does not fit this model: missing {wrong[:5]}, unexpected {unexpected[:5]}")
