"""SBI synthesis: fakes made from real frames on the fly, changed only inside their region, trained end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.config import build_config
from bench.data.cards import load_card
from bench.data.catalog import split_frames
from bench.data.loader import FrameDataset
from bench.data.synthesis import region, synthesize, synthetic_split
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.train import load_splits, train
from tests.conftest import FORGERIES, tiny_config


def _real(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(0.1, 0.9, (48, 48, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_a_fake_differs_from_its_source_only_inside_its_region(seed: int) -> None:
    real = _real(seed)
    fake = synthesize(real, seed)
    changed = np.abs(fake.astype(int) - real.astype(int)).max(axis=-1)
    mask = region(real.shape[:2], seed)
    assert changed[mask == 0].max() == 0  # outside the region's soft edge: the real frame, pixel for pixel
    assert (changed[mask > 0.9] > 0).mean() > 0.5 and np.array_equal(fake, synthesize(real, seed))


def test_training_sees_the_real_frames_twice_and_one_forgery(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = tiny_config(tiny_cards, tmp_path, data={"synthesis": "sbi"})
    splits = load_splits(cfg)
    card_train = split_frames(load_card(tiny_cards[0]), "train", "unused", 3)
    reals = [f for f in card_train if f.label == 0]
    assert splits.forgeries == ["sbi"] and len(splits.train) == 2 * len(reals)
    assert [f.path for f in splits.train if f.forgery == "sbi"] == [f.path for f in reals]
    assert {f.forgery for f in splits.val} == {"real", *FORGERIES}  # validation keeps the card's own fakes
    with pytest.raises(ConfigError, match="data.synthesis: 'gan' is not one of none, sbi"):
        build_config({"data": {"synthesis": "gan"}})


def test_the_loader_makes_the_fake_from_the_items_seed(tiny_cards: tuple[str, str]) -> None:
    frames = synthetic_split(split_frames(load_card(tiny_cards[0]), "train", "unused", 1), "sbi")
    data = FrameDataset(frames, 32, (0.0,) * 3, (1 / 255,) * 3, ["sbi"], synthesis="sbi")
    source = frames.index(next(f for f in frames if f.forgery == "sbi"))
    item = data[(source, 7)]
    expected = synthesize(data.pixels(frames[source]), 7).transpose(2, 0, 1).astype(np.float32)
    assert item["label"] == 1 and item["forgery"] == 0 and np.allclose(item["image"].numpy(), expected, atol=1e-3)
    assert not np.allclose(item["image"].numpy(), data[(source - len(frames) // 2, 7)]["image"].numpy())


@pytest.mark.slow
def test_full_ft_trains_on_sbi_fakes_of_the_offline_benchmark_and_tests(tmp_path: Path) -> None:
    data = {"synthesis": "sbi", "test": ["offline-ff"], "root": str(tmp_path), "workers": 0, "frames_per_video": 1}
    cfg = build_config(
        {
            "model": {"name": "test_vit", "pretrained": False, "img_size": 32},
            "data": data,
            "train": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 8},
            "eval": {"bootstrap": 0},
        }
    )
    metrics = train(resolve_config(cfg), tmp_path / "run")
    assert metrics["train/steps"] == 3 and 0 <= metrics["auc/offline-ff"] <= 1
    assert (tmp_path / "run" / "scores" / "selected" / "offline-ff.csv").is_file()
