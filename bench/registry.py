"""The method registry: one name per fine-tuning strategy or named ablation, filled when ``methods`` is imported.

>>> from bench.registry import get_method
>>> model = get_method("linear-probe").apply(backbone)            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.schema import build_dataclass

Builder = Callable[[nn.Module, Any], Adapter]


class UnsupportedBackbone(ConfigError):
    """A method that cannot adapt this backbone's layers (as its registration's ``limits`` says); the message says
    which and why."""


@dataclass(frozen=True)
class Method:
    """A registered strategy: a builder, its options dataclass, preset overrides (for named ablations) and, for a
    method that cannot adapt every backbone, what it cannot (its builder then raises :class:`UnsupportedBackbone`)."""

    name: str
    summary: str
    options: type
    build: Builder
    preset: dict[str, Any] = field(default_factory=dict)
    limits: str = ""

    def resolve(
        self,
        overrides: dict[str, Any] | None = None,
        forgery_methods: list[str] | None = None,
        total_steps: int | None = None,
    ) -> Any:
        """The options dataclass with the preset, then ``overrides``, applied and checked.

        A run gives ``forgery_methods`` and, where its config fixes it, its number of optimizer steps. Options that
        depend on the training data (an options class with ``bind(forgery_methods)``, e.g. MASM's number of
        subspaces) are completed from the first, options that depend on the run's length (``bind_steps(total_steps)``,
        e.g. AdaLoRA's rank schedule) from the second, ``None`` when the config leaves it to the data. Outside a run
        (no ``forgery_methods``), nothing is bound.
        """
        values = {**self.preset, **(overrides or {})}
        try:
            options = build_dataclass(self.options, values, "method.options", "config")
            bind, bind_steps = getattr(options, "bind", None), getattr(options, "bind_steps", None)
            if bind is not None and forgery_methods is not None:
                bind(forgery_methods)
            if bind_steps is not None and forgery_methods is not None:
                bind_steps(total_steps)
        except ConfigError as err:
            raise ConfigError(f"{err} (method '{self.name}')") from None
        return options

    def apply(self, backbone: nn.Module, **overrides: Any) -> Adapter:
        """Adapt ``backbone`` (a timm model with a two-class head); the result is ready to train."""
        return self.build(backbone, self.resolve(overrides))


_METHODS: dict[str, Method] = {}


def register_method(
    name: str, options: type, summary: str, limits: str = "", **preset: Any
) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(backbone, options) -> Adapter`` under ``name``; duplicates are an error."""

    def decorator(build: Builder) -> Builder:
        add_method(Method(name, summary, options, build, dict(preset), limits))
        return build

    return decorator


def register_variant(name: str, base: str, summary: str, limits: str = "", **preset: Any) -> None:
    """Register a named ablation: ``base``'s builder with some options fixed (e.g. ``masm/no-mask``)."""
    parent = get_method(base)
    add_method(
        Method(name, summary, parent.options, parent.build, {**parent.preset, **preset}, limits or parent.limits)
    )


def add_method(method: Method) -> None:
    if method.name in _METHODS:
        raise ValueError(f"method '{method.name}' is already registered")
    if not dataclasses.is_dataclass(method.options):
        raise TypeError(f"method '{method.name}': options must be a dataclass, got {method.options!r}")
    method.resolve()  # the preset itself must be valid
    _METHODS[method.name] = method


def _load_builtin() -> None:
    import methods  # noqa: F401  (registers the built-in strategies)


def get_method(name: str) -> Method:
    """The method registered as ``name``; unknown names are an error listing the known ones."""
    _load_builtin()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; registered: {', '.join(sorted(_METHODS))} (see `bench methods`)")
    return _METHODS[name]


def list_methods(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    _load_builtin()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))
