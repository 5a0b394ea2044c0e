"""Shared fixtures: a tiny timm ViT, a tiny folder-layout card the tests make, and quick run configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.config import RunConfig, build_config

FORGERIES = ("alpha", "beta")


def write_folder_card(root: Path, videos: dict[str, int], frames: int = 3, size: int = 32, seed: int = 0) -> Path:
    """Write a folder-layout data set (fakes are brighter inside a square) and its card; returns the card path."""
    rng = np.random.default_rng(seed)
    for split, n in videos.items():
        for v in range(n):
            groups = [("real", 0)] + [(m, 1) for m in FORGERIES]
            for forgery, label in groups:
                folder = root / split / ("real" if label == 0 else f"fake/{forgery}") / f"{split}-{forgery}-{v}"
                folder.mkdir(parents=True, exist_ok=True)
                base = rng.uniform(0.2, 0.8, size=(size, size, 3))
                for f in range(frames):
                    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
                    if label:
                        shift = 0.25 if forgery == "alpha" else -0.25
                        img[8:24, 8:24] = np.clip(img[8:24, 8:24] + shift, 0, 1)
                    Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{f:02d}.png")
    card = {
        "name": root.name,
        "format": "folder",
        "root": str(root),
        "splits": {s: s for s in videos},
        "forgeries": list(FORGERIES),
    }
    if "val" in videos:
        card["validation"] = "val"
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="session")
def tiny_cards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A training card (train/val/test) and a second test-only card."""
    base = tmp_path_factory.mktemp("cards")
    train = write_folder_card(base / "tiny-train", {"train": 6, "val": 3, "test": 3})
    other = write_folder_card(base / "tiny-other", {"test": 3}, seed=1)
    return str(train), str(other)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for the session (creating one takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def tiny_config(tiny_cards: tuple[str, str], tmp_path: Path, **sections: dict) -> RunConfig:
    """A config that trains ``test_vit`` at 32 px on the tiny cards in a few seconds."""
    data = {
        "model": {"name": "test_vit", "pretrained": False, "img_size": 32},
        "data": {"train": tiny_cards[0], "test": list(tiny_cards), "workers": 0, "frames_per_video": 3},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 8, "checkpoint_every": 2},
        "eval": {"batch_size": 32, "bootstrap": 0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "runs_dir": str(tmp_path / "runs")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return build_config(data, "tiny")


@pytest.fixture(autouse=True, scope="session")
def _svd_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tests' SVDs (random weights: never reused) out of the user's cache."""
    os.environ["BENCH_SVD_CACHE"] = str(tmp_path_factory.mktemp("svd-cache"))
