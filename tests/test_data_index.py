"""DeepfakeBench index files: FF-family (with compression levels) and Celeb-DF-style, prefix mapping, every card."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.data.cards import CARDS_DIR, load_card
from bench.data.catalog import split_frames
from bench.data.deepfakebench import map_prefix
from bench.data.frames import REAL
from bench.errors import ConfigError

OLD = "/home/someone/DeepfakeBench/datasets/rgb"


def _frames(root: Path, folder: str, count: int, windows: bool = False) -> list[str]:
    """Write ``count`` tiny PNGs under ``root/folder``; return their paths as the old machine listed them."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), i * 5, np.uint8)).save(root / folder / f"{i}.png")
        paths.append(f"{OLD}/{folder}/{i}.png")
    paths = paths[::-1]  # directory order, not frame order
    return [p.replace("/", "\\") for p in paths] if windows else paths


def _record(root: Path, key: str, folder: str, count: int, windows: bool = False) -> dict:
    return {"label": key, "frames": _frames(root, folder, count, windows), "masks": []}


def _write_card(tmp: Path, name: str, **card: object) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "format": "deepfakebench", "root": str(tmp / "rgb"), **card}))
    return str(path)


@pytest.fixture
def ff_card(tmp_path: Path) -> str:
    rgb = tmp_path / "rgb"
    ff = "FaceForensics++"
    groups: dict = {}
    for key, sub in (("FF-real", "original_sequences/youtube"), ("FF-DF", "manipulated_sequences/Deepfakes")):
        groups[key] = {}
        for split, videos in (("train", ("000", "001")), ("val", ("002",)), ("test", ("003",))):
            groups[key][split] = {}
            for level in ("c23", "c40"):
                names = videos if key == "FF-real" else [f"{v}_{int(v) + 100:03d}" for v in videos]
                groups[key][split][level] = {
                    v: _record(rgb, key, f"{ff}/{sub}/{level}/frames/{v}", 40 if split == "train" else 4) for v in names
                }
    (tmp_path / "dataset_json").mkdir()
    (tmp_path / "dataset_json" / f"{ff}.json").write_text(json.dumps({ff: groups}))
    return _write_card(
        tmp_path,
        "ff",
        index=str(tmp_path / "dataset_json" / f"{ff}.json"),
        compression="c23",
        labels=["FF-real", "FF-DF"],
        prefix_map={f"{OLD}/": ""},
        splits={"train": "train", "val": "val", "test": "test"},
        validation="val",
    )


def test_ff_index_with_compression_levels(ff_card: str, tmp_path: Path) -> None:
    card = load_card(ff_card)
    assert card.forgeries == ["FF-DF"]
    train = split_frames(card, "train", tmp_path, frames_per_video=8)
    assert Counter((f.label, f.forgery) for f in train) == {(0, REAL): 16, (1, "FF-DF"): 16}
    assert {f.video for f in train} == {"FF-real/000", "FF-real/001", "FF-DF/000_100", "FF-DF/001_101"}
    video = sorted(f.path for f in train if f.video == "FF-real/000")
    picked = sorted(int(Path(p).stem) for p in video)
    assert picked == [0, 6, 11, 17, 22, 28, 33, 39]  # evenly spaced over 40 frames, first and last included
    assert all("/c23/" in f.path and f.path.startswith(str(tmp_path / "rgb")) for f in train)
    test = split_frames(card, "test", tmp_path, frames_per_video=8)
    assert {f.video for f in test} == {"FF-real/003", "FF-DF/003_103"} and len(test) == 8
    card.compression = "c40"
    assert all("/c40/" in f.path for f in split_frames(card, "val", tmp_path, 8))


def test_celebdf_index_without_compression(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb"
    index = {
        "Celeb-DF-v2": {
            "CelebDFv2_real": {"test": {"id0_0000": _record(rgb, "CelebDFv2_real", "Celeb-real/frames/id0_0000", 5)}},
            "CelebDFv2_fake": {
                "test": {
                    "id0_id1_0000": _record(rgb, "x", "Celeb-synthesis/frames/id0_id1_0000", 5, windows=True),
                    "id0_id2_0000": _record(rgb, "x", "Celeb-synthesis/frames/id0_id2_0000", 3, windows=True),
                }
            },
        }
    }
    (tmp_path / "Celeb-DF-v2.json").write_text(json.dumps(index))
    path = _write_card(
        tmp_path,
        "cdf",
        index="Celeb-DF-v2.json",
        labels=["CelebDFv2_real", "CelebDFv2_fake"],
        prefix_map={OLD.replace("/", "\\") + "\\": ""},
        splits={"test": "test"},
    )
    frames = split_frames(load_card(path), "test", tmp_path, frames_per_video=4)
    assert Counter(f.video for f in frames) == {
        "CelebDFv2_real/id0_0000": 4,
        "CelebDFv2_fake/id0_id1_0000": 4,
        "CelebDFv2_fake/id0_id2_0000": 3,
    }
    assert {(f.label, f.forgery) for f in frames} == {(0, REAL), (1, "CelebDFv2_fake")}
    assert all(Path(f.path).is_file() for f in frames)


def test_index_errors_name_the_problem(ff_card: str, tmp_path: Path) -> None:
    card = load_card(ff_card)
    card.compression = None
    with pytest.raises(ConfigError, match="compression levels c23, c40; set 'compression'"):
        split_frames(card, "train", tmp_path, 8)
    card.compression, card.labels = "c23", ["FF-real", "FF-NT"]
    with pytest.raises(ConfigError, match="label key 'FF-NT' not in the index; it has FF-real, FF-DF"):
        split_frames(card, "train", tmp_path, 8)
    with pytest.raises(ConfigError, match="not in DeepfakeBench's label_dict"):
        load_card(_write_card(tmp_path, "bad", index="x.json", labels=["WDF_Real"], splits={"test": "test"}))
    with pytest.raises(ConfigError, match="needs 'index' and 'labels'"):
        load_card(_write_card(tmp_path, "bad", splits={"test": "test"}))


def test_the_old_key_methods_is_read_as_forgeries_with_one_deprecation_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    card = {"format": "folder", "splits": {"test": "test"}, "methods": ["alpha", "beta"]}
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(card))
    with caplog.at_level(logging.WARNING, logger="bench.data.cards"):
        assert load_card(str(old)).forgeries == ["alpha", "beta"]
        assert load_card(str(old)).forgeries == ["alpha", "beta"]  # a grid's next cell: said once is enough
    assert [r.getMessage() for r in caplog.records] == [f"{old}: key 'methods' is deprecated; rename it to 'forgeries'"]
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({**card, "forgeries": ["alpha"]}))
    with pytest.raises(ConfigError, match="keys 'methods' and 'forgeries' are the same; keep 'forgeries'"):
        load_card(str(both))


def test_missing_frames_fail_at_start_with_count_and_examples(ff_card: str, tmp_path: Path) -> None:
    card = load_card(ff_card)
    gone = sorted(f.path for f in split_frames(card, "test", tmp_path, 4))[:2]
    for path in gone:
        Path(path).unlink()
    with pytest.raises(ConfigError, match=r"split 'test': 2 of 8 frames do not exist, e\.g\. .*0\.png"):
        split_frames(card, "test", tmp_path, 4)
    card.prefix_map = {}
    with pytest.raises(ConfigError, match="8 of 8 frames do not exist"):
        split_frames(card, "test", tmp_path, 4)


def test_map_prefix_takes_the_longest_match() -> None:
    mapping = {"/a/": "x/", "/a/b/": "y/"}
    assert map_prefix("/a/b/c.png", mapping) == "y/c.png"
    assert map_prefix("C:\\a\\c.png", {"C:\\a\\": "/new/"}) == "/new/c.png"
    assert map_prefix("rel/c.png", mapping) == "rel/c.png"


@pytest.mark.parametrize("path", sorted(CARDS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_card_parses_with_valid_splits(path: Path) -> None:
    card = load_card(str(path))
    assert card.name == path.stem and card.description
    assert set(card.splits) <= {"train", "val", "test"} and "test" in card.splits
    assert card.validation is None or card.validation in card.splits
    if card.format == "deepfakebench":
        labels = card.label_map()
        assert set(labels.values()) == {0, 1} and set(card.forgeries) <= {k for k, v in labels.items() if v}
