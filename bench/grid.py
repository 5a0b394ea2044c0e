"""Grids: a base config and axes (methods, seeds, training cards, named variants, tune values) expanded into cells.

A grid file::

    name: smoke                      # MLflow experiment (unless tracking.experiment is set)
    description: one line
    base: {model: {...}, data: {...}, train: {...}}    # config sections shared by every cell
    recipe: effort-released          # optional: a paper's values (grids/recipes/), applied over base
    methods: [full-ft, linear-probe]
    seeds: [0, 1, 2]
    train: [offline-ff]              # optional axis over training cards (default: base data.train)
    variants:                        # optional axis of named overrides (default: none)
      lr-high: {optim: {lr: 1.0e-3}}
    per_method:                      # optional overrides for one method's cells only
      linear-probe: {optim: {lr: 1.0e-2}}
    tune:                            # optional axis of dotted keys and the values tried (several keys: their product)
      optim.lr: [1.0e-4, 3.0e-4, 1.0e-3]

A recipe overrides ``base``; ``per_method``, ``variants`` and tune values override the recipe (``bench recipe NAME
--grid GRID`` marks where); ``--set`` overrides everything. Tune values go into
cell names (``masm [optim.lr=0.001] seed=0``) and the runs' ``tune`` tag, not into labels: the report keeps, per
label, the value with the best mean validation AUC (:func:`bench.report.choose_tuned`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import MethodConfig, RunConfig, build_config, merge, nested, parse_set
from bench.data.cards import load_card
from bench.data.synthesis import training_forgeries
from bench.errors import ConfigError
from bench.recipes import load_recipe
from bench.registry import BASELINE, get_method
from bench.schema import build_dataclass, check_name, read_yaml

GRIDS_DIR = Path(__file__).resolve().parents[1] / "grids"


@dataclass
class GridSpec:
    """The grid file's own keys (checked like config sections)."""

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    train: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("grid name", self.name)
        if self.methods == []:  # absent: the base config's method
            raise ConfigError(f"grid {self.name}: 'methods' is empty; list at least one (`bench methods` shows them)")
        if not self.seeds:
            raise ConfigError(f"grid {self.name}: 'seeds' is empty; give at least one, e.g. seeds: [0]")
        for key, values in self.tune.items():
            parts = key.split(".")
            if len(parts) < 2 or not all(parts):
                raise ConfigError(f"tune key '{key}' must be dotted section.key, e.g. optim.lr")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"tune key '{key}' needs a non-empty list of values, got {values!r}")


@dataclass(frozen=True)
class Cell:
    """One run of a grid: its name, its row label in tables (the name without the seed and tune value), its config
    and its tune value (``section.key=value`` pairs, empty without a tune axis)."""

    name: str
    label: str
    seed: int
    config: RunConfig
    tune: str = ""

    @property
    def run_id(self) -> str:
        return self.config.run_id()


def grid_path(name_or_path: str) -> Path:
    """A grid file: an existing path, or a bare name (with or without ``.yaml``) looked up in ``grids/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    for folder in (Path("grids"), GRIDS_DIR):
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))
    raise ConfigError(f"grid {name_or_path}: no such file, and not a grid in grids/ ({', '.join(known)})")


def load_grid(name_or_path: str) -> GridSpec:
    path = grid_path(name_or_path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return build_dataclass(GridSpec, data, "grid", str(path))


def _tune_text(value: Any) -> str:
    """A tune value as it appears in cell names and the ``tune`` tag (YAML spelling for booleans and None)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def tune_choices(tune: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the tune axis as ``(text, overrides)``: text like ``optim.lr=0.001`` (keys sorted,
    joined by ``, ``); one empty choice without a tune axis."""
    keys = sorted(tune)
    choices = []
    for values in itertools.product(*(tune[k] for k in keys)):
        pairs = list(zip(keys, values, strict=True))
        changes: dict[str, Any] = {}
        for key, value in pairs:
            changes = merge(changes, nested(key.split("."), value))
        choices.append((", ".join(f"{k}={_tune_text(v)}" for k, v in pairs), changes))
    return choices


def expand(spec: GridSpec, sets: list[str] | tuple[str, ...] = (), where: str = "grid") -> list[Cell]:
    """All cells of the grid: methods x variants x training cards x tune values x seeds, with ``--set`` applied
    last; the tune value goes into the cell name, not its label."""
    methods = spec.methods or [spec.base.get("method", {}).get("name", BASELINE)]
    unknown = sorted(set(spec.per_method) - set(methods))
    if unknown:
        raise ConfigError(f"{where}: per_method names methods not in the grid: {', '.join(unknown)}")
    override: dict[str, Any] = {}
    for assignment in sets:
        override = merge(override, parse_set(assignment))
    base = merge(spec.base, load_recipe(spec.recipe).overrides()) if spec.recipe else spec.base
    variants: list[tuple[str, dict[str, Any]]] = list(spec.variants.items()) or [("", {})]
    trains = spec.train or [""]
    cells = []
    axes = itertools.product(methods, variants, trains, tune_choices(spec.tune), spec.seeds)
    for method, (variant, changes), train, (tune, tuned), seed in axes:
        data = merge(base, {"method": {"name": method}})
        data = merge(data, spec.per_method.get(method, {}))
        data = merge(data, changes or {})
        data = merge(data, tuned)
        if train:
            data = merge(data, {"data": {"train": train}})
        data = merge(data, {"train": {"seed": seed}})
        data = merge(data, override)
        cfg = resolve_config(build_config(data, where))
        label = method + (f"[{variant}]" if variant else "") + (f"@{train}" if len(trains) > 1 else "")
        name = f"{label} [{tune}] seed={seed}" if tune else f"{label} seed={seed}"
        cells.append(Cell(name, label, seed, cfg, tune))
    ids = [c.run_id for c in cells]
    duplicates = {c.name for c in cells if ids.count(c.run_id) > 1}
    if duplicates:
        raise ConfigError(f"{where}: cells with identical configs: {', '.join(sorted(duplicates))}")
    return cells


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its method options checked and completed (defaults, and what depends on the training card's
    forgery methods or on the run's length), so that equal runs hash equal."""
    forgeries = training_forgeries(load_card(cfg.data.train).forgeries, cfg.data.synthesis)
    options = get_method(cfg.method.name).resolve(cfg.method.options, forgeries, cfg.train.total_steps)
    return dataclasses.replace(cfg, method=MethodConfig(cfg.method.name, dataclasses.asdict(options)))


def experiment_name(spec: GridSpec, cfg: RunConfig) -> str:
    return cfg.tracking.experiment or spec.name
