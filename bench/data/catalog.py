"""From a card and a split to the list of frames to load."""

from __future__ import annotations

from pathlib import Path

from bench.config import ConfigError
from bench.data.cards import Card
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


def ensure_generated(card: Card, data_root: str | Path) -> Path:
    """Generate an offline card's data under the data root unless the same generation is already there."""
    from bench.data.offline import OfflineSpec, generate

    spec = OfflineSpec(**(card.generate or {}))
    return generate(spec, card.location(data_root))


def split_frames(card: Card, split: str, data_root: str | Path, frames_per_video: int) -> list[Frame]:
    """The frames of one split of a card; an empty or missing split is an error naming card and split."""
    split_dir = card.split_dir(split, data_root)
    if card.format == "offline":
        ensure_generated(card, data_root)
    if not split_dir.is_dir():
        raise ConfigError(f"card {card.name}: split '{split}' folder {split_dir} does not exist (check data.root)")
    frames = read_folder(split_dir, frames_per_video)
    if not frames:
        raise ConfigError(f"card {card.name}: split '{split}' has no frames under {split_dir}")
    return frames
