"""Recipes: a paper's training values as data (``grids/recipes/<name>.yaml``), each with where its source says it.

A recipe file::

    name: effort-released
    summary: one paragraph
    method: effort                      # the method whose paper or code it comes from
    source: {paper: ..., repository: owner/name, commit: <sha>, files: [...]}
    fields:                             # our config key -> our value and what the source says, where
      optim.lr: {value: 2.0e-4, source: "effort.yaml: optimizer.adam.lr: 0.0002"}
    deliberate:                         # where the harness departs on purpose (the protocol), said once
      - {what: checkpoint selection, source: "...", ours: "..."}

A grid's ``recipe: NAME`` applies the fields over its ``base`` (``per_method``, variants, tune values and ``--set``
still override them); :func:`differences` lists every field a resolved config does not hold, which ``bench recipe``
prints beside the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import RunConfig, build_config, merge, nested
from bench.errors import ConfigError
from bench.schema import check_name, read_yaml

RECIPES_DIR = Path(__file__).resolve().parents[1] / "grids" / "recipes"


@dataclass(frozen=True)
class Field:
    """One value of a recipe: our config key and value, and the source's words for it."""

    key: str
    value: Any
    source: str


@dataclass
class Recipe:
    name: str
    summary: str
    method: str
    source: dict[str, Any]
    fields: list[Field]
    deliberate: list[dict[str, str]] = field(default_factory=list)

    def overrides(self) -> dict[str, Any]:
        """The fields as nested config sections, to merge over a grid's base."""
        out: dict[str, Any] = {}
        for f in self.fields:
            out = merge(out, nested(f.key.split("."), f.value))
        return out

    def origin(self) -> str:
        """``owner/name @ <short sha>``, or the paper, for one line of output."""
        if "repository" in self.source:
            return f"{self.source['repository']} @ {str(self.source.get('commit', '?'))[:10]}"
        return str(self.source.get("paper", "?"))


def recipe_path(name: str) -> Path:
    check_name("recipe", name)
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"recipe {name!r}: no such recipe in grids/recipes/ ({', '.join(known)})")
    return path


def load_recipe(name: str) -> Recipe:
    """The recipe ``name``; its fields are checked as config values (a wrong key or type is one line)."""
    path = recipe_path(name)
    data = read_yaml(path)
    missing = {"name", "summary", "method", "source", "fields"} - set(data)
    if missing:
        raise ConfigError(f"{path}: missing keys {', '.join(sorted(missing))}")
    fields = []
    for key, entry in data["fields"].items():
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise ConfigError(f"{path}: fields.{key} must be a mapping of value and source, got {entry!r}")
        fields.append(Field(key, entry["value"], str(entry["source"])))
    recipe = Recipe(data["name"], data["summary"], data["method"], data["source"], fields, data.get("deliberate", []))
    build_config(recipe.overrides(), str(path))  # every key exists and every value has its type
    return recipe


def value(cfg: RunConfig, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg``."""
    node: Any = cfg.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def same(ours: Any, theirs: Any) -> bool:
    """Equal as config values: numbers compare as floats (YAML's ``2.0e-4`` and ``0.0002`` are one value)."""
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs, strict=True))
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool):
        return float(ours) == float(theirs)
    return bool(ours == theirs)


def differences(recipe: Recipe, cfg: RunConfig) -> list[tuple[Field, Any]]:
    """The recipe's fields that ``cfg`` does not hold, each with the value ``cfg`` has instead."""
    return [(f, value(cfg, f.key)) for f in recipe.fields if not same(value(cfg, f.key), f.value)]


def table(recipe: Recipe, cfg: RunConfig) -> str:
    """Every field of ``recipe``: ours in ``cfg``, the recipe's, the source's words; ``!=`` marks a difference."""
    rows = [("", "key", "ours", "recipe", "source")]
    for f in recipe.fields:
        ours = value(cfg, f.key)
        rows.append(("" if same(ours, f.value) else "!=", f.key, _text(ours), _text(f.value), f.source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
    ).rstrip()


def _text(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
