"""The options of a fine-tuning method: a dataclass of ``method.options`` switches, completed before a builder sees
them by :meth:`bench.registry.Method.resolve` with what depends on the training data and on the run's length."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_K = 4
"""Forgery methods assumed where no training card says (outside a run): FaceForensics++'s four."""


@dataclass
class MethodOptions:
    """Base of every method's options dataclass; its fields are the method's config keys."""

    def bind(self, forgeries: Sequence[str] | None) -> None:
        """Complete the options that depend on the training card's ``forgeries`` (``None`` outside a run:
        defaults stand in); check those against it. Nothing by default."""

    def bind_steps(self, total_steps: int | None) -> None:
        """Complete the options that depend on the run's optimizer steps (``None``: the config leaves them to the
        size of the data); called in a run only. Nothing by default."""


def per_forgery(value: int | None, forgeries: Sequence[str] | None) -> int:
    """``value``, or one per training forgery method when it is ``None`` (:data:`DEFAULT_K` outside a run): the
    default of MASM's K and of the matched ranks of LoRA, AdaLoRA and OSF."""
    return value if value is not None else len(forgeries or ()) or DEFAULT_K


def bound(value: int | None, key: str) -> int:
    """A builder's view of an option that :meth:`MethodOptions.bind` completes."""
    if value is None:
        raise RuntimeError(f"method.options.{key} is unbound: options reach a builder through Method.resolve")
    return value
