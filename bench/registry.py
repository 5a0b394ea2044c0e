"""The method registry: one name per fine-tuning strategy or named ablation, filled when ``methods`` is imported.

>>> from bench.registry import get_method
>>> model = get_method("linear-probe").apply(backbone)            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from bench.adapter import Activity, Adapter, Artifact
from bench.config import MethodConfig
from bench.errors import ConfigError
from bench.options import MethodOptions
from bench.schema import build_dataclass

Opts = TypeVar("Opts", bound=MethodOptions)
Builder = Callable[[nn.Module, Opts], Adapter]
BASELINE = MethodConfig.name
"""The method a config runs unless it names one (full fine-tuning), and the one others are measured against where one
is needed: ``bench perf``'s ratios, a grid's default method."""


class UnsupportedBackbone(ConfigError):
    """A method that cannot adapt this backbone's layers (as its registration's ``limits`` says); the message says
    which and why."""


@dataclass(frozen=True)
class Method(Generic[Opts]):
    """A registered strategy: a builder, its options dataclass, preset overrides (for named ablations) and, for a
    method that cannot adapt every backbone, what it cannot (its builder then raises :class:`UnsupportedBackbone`).

    ``parent`` is the method a variant presets; a variant named ``<parent>/<what>`` is an ablation of it
    (:attr:`ablates`). ``artifacts`` are the diagnostics files its adapter writes for the report's figures,
    ``perf_rows`` the rows ``bench perf`` measures of it by default (``name[:key=value...]``), ``activity`` the run
    values shown beside its ablations.
    """

    name: str
    summary: str
    options: type[Opts]
    build: Builder[Opts]
    preset: dict[str, Any] = field(default_factory=dict)
    limits: str = ""
    parent: str = ""
    artifacts: tuple[Artifact, ...] = ()
    perf_rows: tuple[str, ...] = ()
    activity: tuple[Activity, ...] = ()

    @property
    def ablates(self) -> str:
        """The method this one is an ablation of, or ``""``."""
        return self.parent if self.name.startswith(f"{self.parent}/") else ""

    def resolve(
        self,
        overrides: dict[str, Any] | None = None,
        forgeries: Sequence[str] | None = None,
        total_steps: int | None = None,
    ) -> Opts:
        """The options dataclass with the preset, then ``overrides``, applied, checked and bound.

        A run gives ``forgeries`` and, where its config fixes it, its number of optimizer steps. Options that
        depend on the training data (:meth:`~bench.options.MethodOptions.bind`, e.g. MASM's number of subspaces) are
        completed from the first, defaults standing in outside a run (no ``forgeries``); options that depend on
        the run's length (:meth:`~bench.options.MethodOptions.bind_steps`, e.g. AdaLoRA's rank schedule) from the
        second in a run only, ``None`` when the config leaves it to the data.
        """
        values = {**self.preset, **(overrides or {})}
        try:
            options: Opts = build_dataclass(self.options, values, "method.options", "config")
            options.bind(forgeries)
            if forgeries is not None:
                options.bind_steps(total_steps)
        except ConfigError as err:
            raise ConfigError(f"{err} (method '{self.name}')") from None
        return options

    def apply(self, backbone: nn.Module, **overrides: Any) -> Adapter:
        """Adapt ``backbone`` (a timm model with a two-class head); the result is ready to train."""
        return self.build(backbone, self.resolve(overrides))


_METHODS: dict[str, Method[Any]] = {}


def register_method(
    name: str,
    options: type[Opts],
    summary: str,
    limits: str = "",
    artifacts: tuple[Artifact, ...] = (),
    perf_rows: tuple[str, ...] | None = None,
    activity: tuple[Activity, ...] = (),
    **preset: Any,
) -> Callable[[Builder[Opts]], Builder[Opts]]:
    """Decorator registering ``build(backbone, options) -> Adapter`` under ``name``, ``options`` (a dataclass
    subclassing :class:`~bench.options.MethodOptions`) being the type ``build`` takes; duplicates are an error.

    ``artifacts`` and ``activity``: its adapter's (:attr:`Adapter.artifacts`, :attr:`Adapter.activity`);
    ``perf_rows``: ``bench perf``'s default rows of it (``(name,)`` unless given).
    """

    def decorator(build: Builder[Opts]) -> Builder[Opts]:
        rows = (name,) if perf_rows is None else perf_rows
        add_method(Method(name, summary, options, build, dict(preset), limits, "", artifacts, rows, activity))
        return build

    return decorator


def register_variant(
    name: str, base: str, summary: str, limits: str = "", perf_rows: tuple[str, ...] | None = None, **preset: Any
) -> None:
    """Register ``base``'s builder with some options fixed under ``name``: an ablation of ``base`` when named
    ``<base>/<what>`` (e.g. ``masm/no-mask``), else a method of its own (e.g. ``dora`` of ``lora``).

    It writes ``base``'s artifacts and activity; ``bench perf`` measures it by default unless it is an ablation (or
    ``perf_rows`` says otherwise).

    Raises:
        ValueError: ``name`` has a ``/`` but does not start with ``<base>/``.
    """
    parent = get_method(base)
    if "/" in name and not name.startswith(f"{base}/"):
        raise ValueError(f"variant '{name}' of '{base}': an ablation's name starts with '{base}/'")
    rows = ((name,) if "/" not in name else ()) if perf_rows is None else perf_rows
    preset = {**parent.preset, **preset}
    limits = limits or parent.limits
    add_method(
        Method(
            name, summary, parent.options, parent.build, preset, limits, base, parent.artifacts, rows, parent.activity
        )
    )


def add_method(method: Method[Any]) -> None:
    if method.name in _METHODS:
        raise ValueError(f"method '{method.name}' is already registered")
    if not (dataclasses.is_dataclass(method.options) and issubclass(method.options, MethodOptions)):
        raise TypeError(f"method '{method.name}': options must be a MethodOptions dataclass, got {method.options!r}")
    method.resolve()  # the preset itself must be valid
    _METHODS[method.name] = method


def _load_builtin() -> None:
    import methods  # noqa: F401  (registers the built-in strategies)


def get_method(name: str) -> Method[MethodOptions]:
    """The method registered as ``name``; unknown names are an error listing the known ones."""
    _load_builtin()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; registered: {', '.join(sorted(_METHODS))} (see `bench methods`)")
    return _METHODS[name]


def list_methods(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    _load_builtin()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def ablations() -> dict[str, list[str]]:
    """Each method that has ablations -> their names, both sorted."""
    found: dict[str, list[str]] = {}
    for name in list_methods():
        if reference := _METHODS[name].ablates:
            found.setdefault(reference, []).append(name)
    return dict(sorted(found.items()))


def artifacts(names: Iterable[str]) -> list[Artifact]:
    """The artifacts of the registered methods among ``names``, each file once, in the order of sorted names."""
    wanted = set(names)
    found: dict[str, Artifact] = {}
    for name in list_methods():
        if name in wanted:
            found.update({a.file: a for a in _METHODS[name].artifacts if a.file not in found})
    return list(found.values())


def activity() -> dict[str, str]:
    """Every registered method's :class:`~bench.adapter.Activity`, key -> header, each key once, in the order of
    sorted names."""
    found: dict[str, str] = {}
    for name in list_methods():
        found.update({a.key: a.header for a in _METHODS[name].activity if a.key not in found})
    return found


def perf_rows() -> list[str]:
    """``bench perf``'s default rows: :data:`BASELINE`'s, then every other method's in sorted order."""
    names = [BASELINE, *(n for n in list_methods() if n != BASELINE)]
    return [row for name in names for row in _METHODS[name].perf_rows]
