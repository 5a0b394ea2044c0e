"""``bench data check``: what a card's data holds, and everything in it that would make a run wrong."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from bench.data.cards import Card
from bench.data.catalog import examples, list_frames
from bench.data.deepfakebench import suspicious_prefixes
from bench.data.frames import Frame
from bench.data.loader import UNREADABLE
from bench.errors import ConfigError


def frame_problem(path: str) -> tuple[str, str] | None:
    """``(kind, detail)`` with kind ``missing``, ``zero-byte`` or ``unreadable`` for a frame a loader could not use."""
    if not os.path.exists(path):
        return "missing", path
    if os.path.getsize(path) == 0:
        return "zero-byte", path
    try:
        with Image.open(path) as img:
            img.load()
    except UNREADABLE as err:
        return "unreadable", f"{path} ({type(err).__name__}: {err})"
    return None


@dataclass
class SplitCheck:
    """One split: frame counts per ``(label, forgery)``, videos, and the bad frames by kind."""

    name: str
    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    videos: set[str] = field(default_factory=set)
    bad: dict[str, list[str]] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def frames(self) -> int:
        return sum(self.counts.values())

    def fake_share(self) -> float:
        return sum(n for (label, _), n in self.counts.items() if label == 1) / max(1, self.frames)


@dataclass
class CardCheck:
    """A card's splits and the problems that would make a run on it wrong (non-empty: a non-zero exit)."""

    card: Card
    splits: list[SplitCheck]
    problems: list[str]

    def render(self) -> str:
        lines = [f"card {self.card.name} ({self.card.format})"]
        for split in self.splits:
            if split.error:
                lines.append(f"  {split.name}: {split.error}")
                continue
            lines.append(
                f"  {split.name}: {split.frames} frames, {len(split.videos)} videos, "
                f"{split.fake_share():.0%} fake (class balance)"
            )
            for (label, forgery), n in sorted(split.counts.items()):
                lines.append(f"    {'fake' if label else 'real'} {forgery}: {n}")
            for kind, paths in split.bad.items():
                lines.append(f"    {kind} frames: {len(paths)}, e.g. {examples(paths)}")
            if split.empty:
                lines.append(f"    videos with no frames: {len(split.empty)}, e.g. {examples(split.empty)}")
        lines += [f"problem: {p}" for p in self.problems] or ["no problems found"]
        return "\n".join(lines)


def _check_split(card: Card, split: str, data_root: str | Path, frames_per_video: int, workers: int) -> SplitCheck:
    result = SplitCheck(split)
    try:
        listing = list_frames(card, split, data_root, frames_per_video)
    except ConfigError as err:
        result.error = str(err)
        return result
    frames: list[Frame] = listing.frames
    result.empty = listing.empty
    result.counts = Counter((f.label, f.forgery) for f in frames)
    result.videos = {f.video for f in frames}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        for problem in pool.map(frame_problem, [f.path for f in frames]):
            if problem is not None:
                result.bad.setdefault(problem[0], []).append(problem[1])
    return result


def _problems(card: Card, splits: list[SplitCheck]) -> list[str]:
    problems = [s.error for s in splits if s.error]
    for split in (s for s in splits if not s.error):
        problems += [f"split {split.name}: {len(paths)} {kind} frames" for kind, paths in split.bad.items()]
        if split.empty:
            problems.append(
                f"split {split.name}: {len(split.empty)} videos list no frames (extract them, or drop them)"
            )
        if len({label for label, _ in split.counts}) < 2:
            problems.append(f"split {split.name}: only one class, so AUC is undefined")
        if split.name == "train":
            absent = [m for m in card.forgeries if (1, m) not in split.counts]
            if absent:
                problems.append(
                    f"split train: no frames of forgeries {', '.join(absent)} (balanced sampling needs them)"
                )
            stray = sorted({m for label, m in split.counts if label == 1 and m not in card.forgeries})
            if stray:
                problems.append(f"split train: forgeries {', '.join(stray)} are not among the card's forgeries")
    seen: dict[str, str] = {}
    for split in (s for s in splits if not s.error):
        shared = sorted(v for v in split.videos if v in seen)
        if shared:
            problems.append(
                f"splits {seen[shared[0]]} and {split.name} share {len(shared)} videos, e.g. {examples(shared)}"
            )
        seen.update(dict.fromkeys(split.videos, split.name))
    return problems


def check_card(card: Card, data_root: str | Path, frames_per_video: int, workers: int = 4) -> CardCheck:
    """Count and verify every split of ``card`` (each frame a run would load is opened and decoded).

    Problems: a split that cannot be listed or is empty, missing / zero-byte / unreadable frames, a split with one
    class only, a training split lacking a forgery method of the card or holding one it does not list, and videos in
    more than one split; for a generated card, files that differ in number or content from what its generation wrote.
    """
    splits = [_check_split(card, name, data_root, frames_per_video, workers) for name in card.splits]
    problems = _problems(card, splits)
    if any("missing" in s.bad for s in splits):
        problems += suspicious_prefixes(card.prefix_map)
    if card.format == "offline":
        from bench.data.offline import verify

        problems += verify(card.location(data_root))
    return CardCheck(card, splits, problems)
