"""Data cards: one YAML file per data set in ``datasets/`` saying where it lives, its format, splits and forgeries."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.deepfakebench import COMPRESSIONS, resolve_labels
from bench.errors import ConfigError
from bench.schema import build_dataclass, check_name, read_yaml

CARDS_DIR = Path(__file__).resolve().parents[2] / "datasets"
FORMATS = ("offline", "folder", "deepfakebench")
RENAMED = {"methods": "forgeries"}
"""Card keys of earlier releases -> their names now; read with a deprecation message."""

log = logging.getLogger(__name__)


@dataclass
class Card:
    """A data set.

    Attributes:
        name: the card's name (its file stem), used as the test-set name in results.
        description: one sentence.
        format: ``offline`` (generated from shipped images), ``folder`` (``real/<video>/`` and
            ``fake/<forgery>/<video>/`` under each split's folder) or ``deepfakebench`` (an index file in
            DeepfakeBench's format, see :mod:`bench.data.deepfakebench`).
        root: the data set's folder, relative to the data root unless absolute; relative frame paths of an index
            hang from it.
        splits: split name (``train``, ``val``, ``test``) -> folder under ``root`` (``folder``, ``offline``) or split
            key in the index (``deepfakebench``).
        validation: the split that selects checkpoints (required to train on the card).
        forgeries: the card's forgery methods, in routing order (``deepfakebench``: the fake label keys, by default
            all of ``labels``).
        generate: generator settings for ``format: offline``.
        index: ``deepfakebench``: the JSON file, relative to the data root unless absolute.
        dataset: ``deepfakebench``: the index's top-level key (default: its only one).
        compression: ``deepfakebench``: ``c23``, ``c40`` or ``raw`` (FaceForensics++ family only).
        labels: ``deepfakebench``: label keys to read, as a list (labels from DeepfakeBench's ``label_dict``) or a
            mapping ``{key: 0|1}``.
        prefix_map: ``deepfakebench``: old frame-path prefix -> new one (relative ones hang from ``root``).
        checkout: ``deepfakebench``: the DeepfakeBench checkout the card is read from (set by :func:`in_checkout`,
            not in card files): frame paths written under another machine's ``datasets/rgb/`` move under its own.
    """

    name: str
    description: str = ""
    format: str = "folder"
    root: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    validation: str | None = None
    forgeries: list[str] = field(default_factory=list)
    generate: dict[str, Any] | None = None
    index: str | None = None
    dataset: str | None = None
    compression: str | None = None
    labels: dict[str, int] | list[str] = field(default_factory=list)
    prefix_map: dict[str, str] = field(default_factory=dict)
    checkout: str | None = None

    def __post_init__(self) -> None:
        check_name("card name", self.name)
        if self.format not in FORMATS:
            raise ConfigError(f"card {self.name}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.validation is not None and self.validation not in self.splits:
            raise ConfigError(f"card {self.name}: validation split {self.validation!r} is not among its splits")
        if self.format == "offline" and not self.generate:
            raise ConfigError(f"card {self.name}: format offline needs a 'generate' section")
        if self.format == "deepfakebench":
            self._check_index()

    def _check_index(self) -> None:
        where = f"card {self.name}"
        if not self.index or not self.labels:
            raise ConfigError(f"{where}: format deepfakebench needs 'index' and 'labels'")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ConfigError(f"{where}: compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        fakes = [k for k, v in self.label_map().items() if v == 1]
        self.forgeries = self.forgeries or fakes
        stray = [m for m in self.forgeries if m not in fakes]
        if stray:
            raise ConfigError(f"{where}: forgeries {', '.join(stray)} are not fake label keys of 'labels'")

    def label_map(self) -> dict[str, int]:
        """``deepfakebench``: label key -> 0 real / 1 fake."""
        return resolve_labels(self.labels, f"card {self.name}")

    def location(self, data_root: str | Path) -> Path:
        root = Path(self.root).expanduser()
        return root if root.is_absolute() else Path(data_root) / root

    def split_key(self, split: str) -> str:
        """What ``split`` names in the data: a folder under ``root`` or a split key of the index."""
        if split not in self.splits:
            raise ConfigError(f"card {self.name}: no split {split!r}; it has {', '.join(self.splits) or 'none'}")
        return str(self.splits[split])

    def split_dir(self, split: str, data_root: str | Path) -> Path:
        return self.location(data_root) / self.split_key(split)

    def index_path(self, data_root: str | Path) -> Path:
        path = Path(str(self.index)).expanduser()
        return path if path.is_absolute() else Path(data_root) / path


CHECKOUT_ENV = "DEEPFAKEBENCH"


def checkout(value: str | None) -> Path | None:
    """The DeepfakeBench checkout: ``value`` (``data.deepfakebench``), else ``$DEEPFAKEBENCH``, else none; it must
    hold ``preprocessing/dataset_json/``."""
    value = value or os.environ.get(CHECKOUT_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser()
    if not (root / "preprocessing" / "dataset_json").is_dir():
        raise ConfigError(
            f"DeepfakeBench checkout {root}: no preprocessing/dataset_json/ folder (set data.deepfakebench or "
            f"${CHECKOUT_ENV} to the folder that holds DeepfakeBench's preprocessing/ and datasets/)"
        )
    return root


def in_checkout(card: Card, root: Path | None) -> Card:
    """A ``deepfakebench`` card read from a DeepfakeBench checkout: its relative ``index`` under
    ``<root>/preprocessing/`` (where DeepfakeBench keeps ``dataset_json/``), its relative ``root`` under
    ``<root>/datasets/rgb/``; absolute ones, other formats and ``root=None`` are left as they are."""
    if root is None or card.format != "deepfakebench":
        return card
    index = Path(str(card.index)).expanduser()
    frames = Path(card.root).expanduser()
    return dataclasses.replace(
        card,
        index=str(index if index.is_absolute() else root / "preprocessing" / index),
        root=str(frames if frames.is_absolute() else root / "datasets" / "rgb" / frames),
        checkout=str(root),
    )


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


@functools.cache
def _deprecated(path: Path, old: str, new: str) -> None:
    """Say once per process that ``path`` names a key by its old name (a grid loads its card once per cell)."""
    log.warning("%s: key '%s' is deprecated; rename it to '%s'", path, old, new)


def load_card(name_or_path: str) -> Card:
    """Read and check a card."""
    path = card_path(name_or_path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    for old, new in RENAMED.items():
        if old in data:
            if new in data:
                raise ConfigError(f"{path}: keys '{old}' and '{new}' are the same; keep '{new}'")
            _deprecated(path, old, new)
            data[new] = data.pop(old)
    return build_dataclass(Card, data, "card", str(path))


def open_card(name_or_path: str, deepfakebench: str | None = None) -> Card:
    """:func:`load_card`, read from the DeepfakeBench checkout ``deepfakebench`` (or ``$DEEPFAKEBENCH``) if any."""
    return in_checkout(load_card(name_or_path), checkout(deepfakebench))
