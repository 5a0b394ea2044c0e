"""Data cards: one YAML file per data set in ``datasets/`` saying where it lives, its format, splits and methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ConfigError, build_dataclass, read_yaml

CARDS_DIR = Path(__file__).resolve().parents[2] / "datasets"
FORMATS = ("offline", "folder")


@dataclass
class Card:
    """A data set.

    Attributes:
        name: the card's name (its file stem), used as the test-set name in results.
        description: one sentence.
        format: ``offline`` (generated from shipped images) or ``folder`` (``real/<video>/`` and
            ``fake/<method>/<video>/`` under each split's folder).
        root: the data set's folder, relative to the data root unless absolute.
        splits: split name (``train``, ``val``, ``test``) -> folder under ``root``.
        validation: the split that selects checkpoints (required to train on the card).
        methods: the card's forgery methods, in routing order.
        generate: generator settings for ``format: offline``.
    """

    name: str
    description: str = ""
    format: str = "folder"
    root: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    validation: str | None = None
    methods: list[str] = field(default_factory=list)
    generate: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"card {self.name}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.validation is not None and self.validation not in self.splits:
            raise ConfigError(f"card {self.name}: validation split {self.validation!r} is not among its splits")
        if self.format == "offline" and not self.generate:
            raise ConfigError(f"card {self.name}: format offline needs a 'generate' section")

    def location(self, data_root: str | Path) -> Path:
        root = Path(self.root).expanduser()
        return root if root.is_absolute() else Path(data_root) / root

    def split_dir(self, split: str, data_root: str | Path) -> Path:
        if split not in self.splits:
            raise ConfigError(f"card {self.name}: no split {split!r}; it has {', '.join(self.splits) or 'none'}")
        return self.location(data_root) / str(self.splits[split])


def card_path(name_or_path: str) -> Path:
    """A card file: an existing path, or ``datasets/<name>.yaml`` (in the working directory, then the project)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise ConfigError(f"data card {name_or_path}: no such file")
    for folder in (Path("datasets"), CARDS_DIR):
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown data card '{name_or_path}'; cards in datasets/: {', '.join(known)}")


def load_card(name_or_path: str) -> Card:
    """Read and check a card."""
    path = card_path(name_or_path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return build_dataclass(Card, data, "card", str(path))
