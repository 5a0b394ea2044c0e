"""Frame sampling, folder cards and the step-indexed balanced sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.data.augment import Augment
from bench.data.cards import load_card
from bench.data.catalog import split_frames
from bench.data.frames import REAL, Frame, sample_evenly
from bench.data.loader import FrameDataset, StepSampler, group_indices, group_shares
from bench.errors import ConfigError
from tests.conftest import FORGERIES, write_folder_card


def test_sample_evenly_spreads_over_the_video() -> None:
    picked = sample_evenly(40, 8)
    assert picked[0] == 0 and picked[-1] == 39 and len(set(picked)) == 8
    gaps = np.diff(picked)
    assert gaps.min() >= 5 and gaps.max() <= 6  # 39 / 7 = 5.57
    assert sample_evenly(5, 8) == [0, 1, 2, 3, 4]
    assert sample_evenly(9, 1) == [4]


def test_folder_card_frames(tiny_cards: tuple[str, str]) -> None:
    card = load_card(tiny_cards[0])
    frames = split_frames(card, "train", "unused", frames_per_video=2)
    counts = Counter(f.forgery for f in frames)
    assert counts == {REAL: 12, "alpha": 12, "beta": 12}  # 6 videos x 2 of 3 frames
    assert all(f.label == (f.forgery != REAL) for f in frames)
    assert len({f.video for f in frames}) == 18
    assert {f.video for f in frames if f.forgery == "alpha"} == {f"fake/alpha/train-alpha-{v}" for v in range(6)}


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    path = write_folder_card(tmp_path / "card", {"train": 1, "val": 1})
    (tmp_path / "card" / "empty").mkdir()
    card = load_card(str(path))
    card.splits["test"] = "empty"
    with pytest.raises(ConfigError, match="split 'test' has no frames"):
        split_frames(card, "test", tmp_path, 8)
    with pytest.raises(ConfigError, match="no split 'nope'"):
        split_frames(card, "nope", tmp_path, 8)


def _frames() -> list[Frame]:
    frames = [Frame(f"r{i}", 0, REAL, f"r{i}") for i in range(10)]
    return frames + [Frame(f"{m}{i}", 1, m, f"{m}{i}") for m in FORGERIES for i in range(3 + len(m))]


def test_balanced_batches_hold_every_forgery() -> None:
    frames = _frames()
    groups = group_indices(frames, FORGERIES, balanced=True)
    assert group_shares(8, 3) == [4, 2, 2]
    sampler = StepSampler(groups, 8, seed=0, start=0, stop=20)
    seen: Counter[str] = Counter()
    for batch in sampler:
        forgeries = Counter(frames[i].forgery for i, _ in batch)
        assert forgeries == {REAL: 4, "alpha": 2, "beta": 2}
        seen.update(frames[i].path for i, _ in batch)
    alpha = [p for p in seen if p.startswith("alpha")]
    assert len(alpha) == 8 and max(seen[p] for p in alpha) - min(seen[p] for p in alpha) <= 1  # passes, not draws


def test_sampler_resumes_exactly() -> None:
    groups = group_indices(_frames(), FORGERIES, balanced=True)
    full = list(StepSampler(groups, 8, seed=3, start=0, stop=12))
    assert list(StepSampler(groups, 8, seed=3, start=7, stop=12)) == full[7:]
    assert list(StepSampler(groups, 8, seed=4, start=0, stop=12)) != full


def test_too_small_batch_for_balance() -> None:
    with pytest.raises(ValueError, match="too small"):
        group_shares(4, 5)


def test_dataset_flip_is_seeded(tiny_cards: tuple[str, str]) -> None:
    frames = split_frames(load_card(tiny_cards[0]), "train", "unused", 1)
    data = FrameDataset(frames, 32, (0.5,) * 3, (0.5,) * 3, FORGERIES, augment=Augment("flip"))
    plain = data[0]["image"]
    flips = [bool((data[(0, s)]["image"] != plain).any()) for s in range(20)]
    assert 0 < sum(flips) < 20 and flips == [bool((data[(0, s)]["image"] != plain).any()) for s in range(20)]
    assert data[0]["forgery"] == -1 and data[len(frames) - 1]["forgery"] == 1
