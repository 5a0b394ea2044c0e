"""Training augmentation: presets as their sources define them, seeded per sample, exact on resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.config import build_config
from bench.data.augment import PRESETS, Augment
from bench.data.cards import load_card
from bench.data.catalog import split_frames
from bench.data.loader import FrameDataset
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.train import train
from tests.conftest import FORGERIES, tiny_config

DRAWS = 2000

EXPECTED = {  # the probability of each transform, read off the source files, not off PRESETS
    "flip": {"HorizontalFlip": 0.5},
    "deepfakebench": {  # OneOf(p=0.5) of three transforms whose own p are equal: 1/6 each
        "HorizontalFlip": 0.5,
        "Rotate": 0.5,
        "GaussianBlur": 0.5,
        "RandomBrightnessContrast": 1 / 6,
        "FancyPCA": 1 / 6,
        "HueSaturationValue": 1 / 6,
        "ImageCompression": 0.5,
    },
    "effort-released": {
        "HorizontalFlip": 0.5,
        "RandomBrightnessContrast": 0.5,
        "HueSaturationValue": 0.3,
        "ImageCompression": 0.1,
        "GaussNoise": 0.1,
        "MotionBlur": 0.1,
        "CLAHE": 0.1,
        "ChannelShuffle": 0.1,
        "CoarseDropout": 0.1,
        "RandomGamma": 0.3,
        "GlassBlur": 0.3,
    },
}


def _image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_transform_applies_with_its_probability_and_independently(preset: str) -> None:
    augment, image = Augment(preset), _image()
    applied = [set(augment.apply(image, seed)[1]) for seed in range(DRAWS)]
    for name, p in EXPECTED[preset].items():
        rate = sum(name in a for a in applied) / DRAWS
        assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / DRAWS), (name, rate, p)
    first, second = list(EXPECTED[preset])[:2] if len(EXPECTED[preset]) > 1 else (None, None)
    if first is not None:  # one generator for all: two transforms apply together as often as chance says
        both = sum(first in a and second in a for a in applied) / DRAWS
        p = EXPECTED[preset][first] * EXPECTED[preset][second]
        assert abs(both - p) < 4 * np.sqrt(p * (1 - p) / DRAWS), (first, second, both, p)
    assert {n for a in applied for n in a} == set(EXPECTED[preset])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_draw_depends_on_its_seed_alone(preset: str) -> None:
    augment, image = Augment(preset), _image()
    first = [augment(image, seed) for seed in range(20)]
    again = [augment(image, seed) for seed in reversed(range(20))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    changed = sum(not np.array_equal(a, image) for a in first)
    assert changed == 0 if preset == "none" else changed > 0


def test_none_is_the_identity_in_the_loader(tiny_cards: tuple[str, str]) -> None:
    frames = split_frames(load_card(tiny_cards[0]), "train", "unused", 1)
    data = FrameDataset(frames, 32, (0.5,) * 3, (0.5,) * 3, FORGERIES, augment=Augment("none"))
    assert all(bool((data[(0, s)]["image"] == data[0]["image"]).all()) for s in range(5))


def test_a_list_of_transforms_is_checked_at_config_time() -> None:
    cfg = build_config({"data": {"augment": [{"Rotate": {"limit": 5, "p": 1.0}}]}})
    assert cfg.data.augment == [{"Rotate": {"limit": 5, "p": 1.0}}]
    with pytest.raises(ConfigError, match=r"data.augment\[0\]: albumentations has no transform 'Rotat'"):
        build_config({"data": {"augment": [{"Rotat": {}}]}})
    with pytest.raises(ConfigError, match=r"data.augment\[0\]: Rotate: "):
        build_config({"data": {"augment": [{"Rotate": {"limt": 5}}]}})
    with pytest.raises(ConfigError, match="no augmentation preset 'dfb'; presets: none, flip, deepfakebench"):
        build_config({"data": {"augment": "dfb"}})


def test_resume_with_the_deepfakebench_augmentation_is_exact(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, data={"augment": "deepfakebench", "workers": 2}))
    uninterrupted = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", stop_after=5) == {}
    assert train(cfg, tmp_path / "b") == uninterrupted
    plain = train(resolve_config(tiny_config(tiny_cards, tmp_path, data={"augment": "none"})), tmp_path / "c")
    assert plain["train/steps"] == uninterrupted["train/steps"] and plain != uninterrupted


def test_preview_shows_the_augmented_frames_and_refuses_an_unknown_preset(
    tiny_cards: tuple[str, str], tmp_path: Path, capsys
) -> None:
    from PIL import Image

    from bench.cli import main

    out = tmp_path / "preview.png"
    assert (
        main(["data", "preview", tiny_cards[0], "--split", "train", "--augment", "deepfakebench", "--out", str(out)])
        == 0
    )
    assert Image.open(out).size[0] > 300
    assert main(["data", "preview", tiny_cards[0], "--split", "train", "--synthesis", "sbi", "--out", str(out)]) == 0
    assert main(["data", "preview", tiny_cards[0], "--augment", "dfb", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --augment: no augmentation preset 'dfb'")
