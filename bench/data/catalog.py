"""From a card and a split to the list of frames to load."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.data.cards import Card
from bench.data.deepfakebench import index_videos, read_index, read_json, suspicious_prefixes
from bench.data.frames import REAL, Frame, sample_evenly
from bench.errors import DataError

log = logging.getLogger(__name__)
DEFAULT_HINT = "check data.root, data.deepfakebench and the card's prefix_map"

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(split_dir: Path, frames_per_video: int) -> list[Frame]:
    """Frames of ``split_dir/real/<video>/*`` and ``split_dir/fake/<forgery>/<video>/*``; video ids are the folders'
    paths under ``split_dir``, unique by construction."""
    return _sampled(folder_videos(split_dir), frames_per_video)


def _sampled(videos: list[tuple[str, int, str, list[Path]]], frames_per_video: int) -> list[Frame]:
    """Evenly spaced frames of each video of :func:`folder_videos`."""
    frames = []
    for forgery, label, video_id, images in videos:
        frames += [
            Frame(str(images[i]), label, forgery, video_id) for i in sample_evenly(len(images), frames_per_video)
        ]
    return frames


def folder_videos(split_dir: Path) -> list[tuple[str, int, str, list[Path]]]:
    """``(forgery, label, video_id, images)`` of every video folder of a folder-layout split (images sorted)."""
    groups: list[tuple[str, int, Path]] = []
    real = split_dir / REAL
    if real.is_dir():
        groups += [(REAL, 0, v) for v in sorted(real.iterdir()) if v.is_dir()]
    fake = split_dir / "fake"
    if fake.is_dir():
        for forgery in sorted(m for m in fake.iterdir() if m.is_dir()):
            groups += [(forgery.name, 1, v) for v in sorted(forgery.iterdir()) if v.is_dir()]
    return [
        (forgery, label, video.relative_to(split_dir).as_posix(), _images(video)) for forgery, label, video in groups
    ]


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


@dataclass
class Listing:
    """The frames of one split of a card, and the ids of the videos its data lists with no frame at all."""

    frames: list[Frame]
    empty: list[str]


def list_frames(card: Card, split: str, data_root: str | Path, frames_per_video: int) -> Listing:
    """The frames of one split of a card, as its data lists them; a split with no frames is an error naming card and
    split."""
    if card.format == "deepfakebench":
        videos = index_videos(
            read_json(card.index_path(data_root)),
            dataset=card.dataset,
            split=card.split_key(split),
            labels=card.label_map(),
            compression=card.compression,
            where=f"card {card.name}",
        )
        rgb = Path(card.checkout) / "datasets" / "rgb" if card.checkout else None
        base = card.location(data_root)
        frames = read_index(videos, prefix_map=card.prefix_map, base=base, frames_per_video=frames_per_video, rgb=rgb)
        if not frames:
            raise DataError(f"card {card.name}: split '{split}' has no videos in {card.index_path(data_root)}")
        return Listing(frames, [video for _, _, video, listed in videos if not listed])
    split_dir = card.split_dir(split, data_root)
    if card.format == "offline":
        ensure_generated(card, data_root)
    if not split_dir.is_dir():
        raise DataError(f"card {card.name}: split '{split}' folder {split_dir} does not exist (check data.root)")
    folders = folder_videos(split_dir)
    frames = _sampled(folders, frames_per_video)
    if not frames:
        raise DataError(f"card {card.name}: split '{split}' has no frames under {split_dir}")
    return Listing(frames, [video for _, _, video, images in folders if not images])


def examples(items: Sequence[str], shown: int = 3) -> str:
    """The first few of ``items``, then how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def split_frames(
    card: Card, split: str, data_root: str | Path, frames_per_video: int, max_bad_fraction: float = 0.01
) -> list[Frame]:
    """:func:`list_frames`, failing at once (with the count and examples) when any listed frame does not exist, or
    when more than ``max_bad_fraction`` of the split's videos list no frames (fewer are named in a warning)."""
    listing = list_frames(card, split, data_root, frames_per_video)
    frames, empty = listing.frames, listing.empty
    missing = [f.path for f in frames if not os.path.exists(f.path)]
    if missing:
        hint = "; ".join(suspicious_prefixes(card.prefix_map))
        raise DataError(
            f"card {card.name}: split '{split}': {len(missing)} of {len(frames)} frames do not exist, e.g. "
            f"{examples(missing)} ({hint or DEFAULT_HINT}; `bench data check {card.name}`)"
        )
    if empty:
        videos = len({f.video for f in frames}) + len(empty)
        said = (
            f"card {card.name}: split '{split}': {len(empty)} of {videos} videos list no frames, e.g. {examples(empty)}"
        )
        if len(empty) > max_bad_fraction * videos:
            raise DataError(f"{said}, more than data.max_bad_fraction={max_bad_fraction} (extract their frames)")
        log.warning("%s; they are left out", said)
    return frames
