"""DeepfakeBench users: a checkout named once serves the shipped cards; nothing in its index is dropped silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.config import DataConfig, available_cpus, build_config
from bench.data.cards import open_card
from bench.data.catalog import split_frames
from bench.data.check import check_card
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.train import train

FOREIGN = "/home/someone/DeepfakeBench/datasets/rgb"  # the dataset_root_path rearrange.py ran with elsewhere
FF_METHODS = {"FF-DF": "Deepfakes", "FF-F2F": "Face2Face", "FF-FS": "FaceSwap", "FF-NT": "NeuralTextures"}


def _video(rgb: Path, folder: str, frames: int, seed: int) -> list[str]:
    """Write a video's frames under ``rgb/folder``; return their paths as rearrange.py lists them (directory order)."""
    (rgb / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(frames):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(rgb / folder / f"{i:03d}.png")
    return [f"{FOREIGN}/{folder}/{i:03d}.png" for i in reversed(range(frames))]


def make_checkout(root: Path, empty: int = 0) -> Path:
    """A DeepfakeBench checkout: index files as rearrange.py writes them, frames under datasets/rgb; the first
    ``empty`` real training videos of FaceForensics++ list no frames (never extracted)."""
    rgb, index_dir = root / "datasets" / "rgb", root / "preprocessing" / "dataset_json"
    index_dir.mkdir(parents=True)
    ff: dict = {"FF-real": {}} | {key: {} for key in FF_METHODS}
    seed = 0
    for split, videos in (("train", ["000", "001", "002"]), ("val", ["003"]), ("test", ["004"])):
        for key in ff:
            ff[key][split] = {"c23": {}}
            for n, video in enumerate(videos):
                name = video if key == "FF-real" else f"{video}_{int(video) + 500:03d}"
                sub = "original_sequences/youtube" if key == "FF-real" else f"manipulated_sequences/{FF_METHODS[key]}"
                seed += 1
                listed = [] if key == "FF-real" and split == "train" and n < empty else None
                frames = (
                    listed if listed is not None else _video(rgb, f"FaceForensics++/{sub}/c23/frames/{name}", 4, seed)
                )
                ff[key][split]["c23"][name] = {"label": key, "frames": frames}
    (index_dir / "FaceForensics++.json").write_text(json.dumps({"FaceForensics++": ff}))
    cdf: dict = {"CelebDFv2_real": {"test": {}}, "CelebDFv2_fake": {"test": {}}}
    for key, folder in (("CelebDFv2_real", "Celeb-real"), ("CelebDFv2_fake", "Celeb-synthesis")):
        for v in range(2):
            seed += 1
            cdf[key]["test"][f"id{v}_{v:04d}"] = {
                "label": key,
                "frames": _video(rgb, f"Celeb-DF-v2/{folder}/frames/id{v}_{v:04d}", 4, seed),
            }
    (index_dir / "Celeb-DF-v2.json").write_text(json.dumps({"Celeb-DF-v2": cdf}))
    return root


def test_the_shipped_cards_run_from_a_checkout_named_once(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path / "DeepfakeBench")
    data = {"train": "ff-c23", "test": ["ff-c23", "celebdf-v2"], "deepfakebench": str(checkout), "workers": 0}
    cfg = build_config(
        {
            "model": {"name": "test_vit", "pretrained": False, "img_size": 16},
            "data": data | {"frames_per_video": 2},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 10},
            "eval": {"bootstrap": 0},
        }
    )
    metrics = train(resolve_config(cfg), tmp_path / "run")
    assert metrics["n/celebdf-v2"] == 8 and metrics["n/ff-c23"] == 10 and 0 <= metrics["auc/celebdf-v2"] <= 1


def test_the_environment_names_the_checkout_and_a_wrong_one_is_one_line(tmp_path: Path, monkeypatch) -> None:
    checkout = make_checkout(tmp_path / "DeepfakeBench")
    monkeypatch.setenv("DEEPFAKEBENCH", str(checkout))
    frames = split_frames(open_card("ff-c23"), "train", "unused", 2)
    assert len(frames) == 5 * 3 * 2 and all(Path(f.path).is_file() for f in frames)
    assert {f.forgery for f in frames} == {"real", *FF_METHODS}
    monkeypatch.setenv("DEEPFAKEBENCH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"DeepfakeBench checkout .*: no preprocessing/dataset_json/ folder"):
        open_card("ff-c23")


def test_videos_that_list_no_frames_are_reported_and_fail_a_run_past_the_threshold(tmp_path: Path) -> None:
    card = open_card("ff-c23", str(make_checkout(tmp_path / "DeepfakeBench", empty=1)))
    report = check_card(card, "unused", 2)
    assert "videos with no frames: 1, e.g. FF-real/000" in report.render()
    assert "split train: 1 videos list no frames (extract them, or drop them)" in report.problems
    with pytest.raises(ConfigError, match=r"1 of 15 videos list no frames, e.g. FF-real/000, more than data.max_bad"):
        split_frames(card, "train", "unused", 2, max_bad_fraction=0.01)
    assert len(split_frames(card, "train", "unused", 2, max_bad_fraction=0.1)) == 14 * 2


def test_a_prefix_map_without_its_trailing_slash_is_named(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path / "DeepfakeBench")
    card_file = tmp_path / "ff.yaml"
    card = yaml.safe_load((Path(__file__).parents[1] / "datasets" / "ff-c23.yaml").read_text())
    card |= {"index": str(checkout / "preprocessing/dataset_json/FaceForensics++.json"), "prefix_map": {FOREIGN: ""}}
    card_file.write_text(yaml.safe_dump(card | {"root": str(checkout / "datasets/rgb")}))
    with pytest.raises(
        ConfigError, match=r"the prefix map '/home/someone/DeepfakeBench/datasets/rgb' -> '' looks wrong"
    ):
        split_frames(open_card(str(card_file)), "train", "unused", 2)
    report = check_card(open_card(str(card_file)), "unused", 2)
    assert any("prefix map" in p for p in report.problems) and "/FaceForensics++/" in report.render()


def test_loader_workers_follow_the_cpus_of_the_job(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert available_cpus(16) == 1 and DataConfig().loader_workers() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert DataConfig().loader_workers() == min(16, len(os.sched_getaffinity(0)))
    assert DataConfig(workers=0).loader_workers() == 0
