"""From a card and a split to the list of frames to load."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from bench.config import ConfigError
from bench.data.cards import Card
from bench.data.deepfakebench import read_index, read_json
from bench.data.frames import REAL, Frame, sample_evenly

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(split_dir: Path, frames_per_video: int) -> list[Frame]:
    """Frames of ``split_dir/real/<video>/*`` and ``split_dir/fake/<method>/<video>/*``; video ids are the folders'
    paths under ``split_dir``, unique by construction."""
    groups: list[tuple[str, int, Path]] = []
    real = split_dir / REAL
    if real.is_dir():
        groups += [(REAL, 0, v) for v in sorted(real.iterdir()) if v.is_dir()]
    fake = split_dir / "fake"
    if fake.is_dir():
        for method in sorted(m for m in fake.iterdir() if m.is_dir()):
            groups += [(method.name, 1, v) for v in sorted(method.iterdir()) if v.is_dir()]
    frames = []
    for method, label, video in groups:
        images = _images(video)
        video_id = video.relative_to(split_dir).as_posix()
        frames += [Frame(str(images[i]), label, method, video_id) for i in sample_evenly(len(images), frames_per_video)]
    return frames


def redrawn(card: Card, seed: int | None) -> Card:
    """An offline card generated with another seed, in its own folder ``<root>-seed<seed>``; any other card, or
    ``seed=None``, as it is."""
    if seed is None or card.format != "offline":
        return card
    return dataclasses.replace(card, root=f"{card.root}-seed{seed}", generate={**(card.generate or {}), "seed": seed})


def ensure_generated(card: Card, data_root: str | Path) -> Path:
    """Generate an offline card's data under the data root unless the same generation is already there."""
    from bench.data.offline import OfflineSpec, generate

    spec = OfflineSpec(**(card.generate or {}))
    return generate(spec, card.location(data_root))


def list_frames(card: Card, split: str, data_root: str | Path, frames_per_video: int) -> list[Frame]:
    """The frames of one split of a card, as its data lists them; an empty or missing split is an error naming card
    and split."""
    if card.format == "deepfakebench":
        frames = read_index(
            read_json(card.index_path(data_root)),
            dataset=card.dataset,
            split=card.split_key(split),
            labels=card.label_map(),
            compression=card.compression,
            prefix_map=card.prefix_map,
            base=card.location(data_root),
            frames_per_video=frames_per_video,
            where=f"card {card.name}",
        )
        if not frames:
            raise ConfigError(f"card {card.name}: split '{split}' has no videos in {card.index_path(data_root)}")
        return frames
    split_dir = card.split_dir(split, data_root)
    if card.format == "offline":
        ensure_generated(card, data_root)
    if not split_dir.is_dir():
        raise ConfigError(f"card {card.name}: split '{split}' folder {split_dir} does not exist (check data.root)")
    frames = read_folder(split_dir, frames_per_video)
    if not frames:
        raise ConfigError(f"card {card.name}: split '{split}' has no frames under {split_dir}")
    return frames


def examples(items: Sequence[str], shown: int = 3) -> str:
    """The first few of ``items``, then how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def split_frames(card: Card, split: str, data_root: str | Path, frames_per_video: int) -> list[Frame]:
    """:func:`list_frames`, failing at once (with the count and examples) when any listed frame does not exist."""
    frames = list_frames(card, split, data_root, frames_per_video)
    missing = [f.path for f in frames if not os.path.exists(f.path)]
    if missing:
        raise ConfigError(
            f"card {card.name}: split '{split}': {len(missing)} of {len(frames)} frames do not exist, e.g. "
            f"{examples(missing)} (check data.root and the card's prefix_map; `bench data check {card.name}`)"
        )
    return frames
