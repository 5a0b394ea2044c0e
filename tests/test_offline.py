"""The offline generator: layout, counts, disjoint splits, determinism, idempotence and atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import offline
from bench.data.forgeries import DEFAULT_SEVERITY
from bench.data.offline import OfflineSpec, generate
from bench.data.preview import preview

SPEC = OfflineSpec(
    sources="train", families=["blend", "noise", "colour"], videos={"train": 5, "val": 2}, frames=3, size=32
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(SPEC, tmp_path_factory.mktemp("offline") / "card", progress=False)


def test_layout_and_counts(card: Path) -> None:
    for split, n in SPEC.videos.items():
        reals = sorted((card / split / "real").iterdir())
        fakes = sorted((card / split / "fake").glob("*/*"))
        assert len(reals) == len(fakes) == n
        per_family = sorted(len(list((card / split / "fake").glob(f"{f}/*"))) for f in SPEC.families)
        assert per_family == ([1, 2, 2] if n == 5 else [0, 1, 1])
        for video in reals + fakes:
            assert sorted(p.name for p in video.iterdir()) == ["00.png", "01.png", "02.png"]
    assert sorted(p.name for p in card.iterdir()) == ["spec.json", "train", "val"]
    image = Image.open(card / "train" / "real" / "train-real-0000" / "00.png")
    assert image.size == (32, 32) and image.mode == "RGB"


def test_spec_json_records_resolved_spec(card: Path) -> None:
    record = json.loads((card / "spec.json").read_text())
    assert record["generator"] == offline.GENERATOR_VERSION
    assert record["spec"]["severity"] == {f: DEFAULT_SEVERITY[f] for f in SPEC.families}
    assert record["spec"]["videos"] == SPEC.videos


def test_video_ids_unique_and_locations_disjoint(card: Path) -> None:
    videos = [p for p in card.rglob("*") if p.is_dir() and (p / "00.png").exists()]
    assert len({v.name for v in videos}) == len(videos) == 2 * sum(SPEC.videos.values())
    rng = np.random.default_rng(SPEC.seed)
    images = offline._load_pool("train")
    tiles = offline._round_robin(offline._tiles(images, len(offline.POOLS["train"]), rng), len(videos))
    assert len(set(tiles)) == len(tiles)
    natural = [t for t in tiles if t.source < len(offline.POOLS["train"])]
    for i, a in enumerate(natural):
        for b in natural[i + 1 :]:
            assert a.source != b.source or abs(a.y - b.y) >= a.side or abs(a.x - b.x) >= a.side


def test_frames_of_a_video_are_correlated_but_not_equal(card: Path) -> None:
    def pixels(video: Path, frame: int) -> np.ndarray:
        return np.asarray(Image.open(video / f"{frame:02d}.png"), np.float32).ravel()

    video, other = sorted((card / "train" / "real").iterdir())[:2]
    assert not np.array_equal(pixels(video, 0), pixels(video, 1))
    within = np.abs(pixels(video, 0) - pixels(video, 1)).mean()
    assert within < np.abs(pixels(video, 0) - pixels(other, 0)).mean()


def test_same_spec_gives_identical_bytes_and_second_call_does_nothing(card: Path, tmp_path: Path) -> None:
    again = generate(SPEC, tmp_path / "again", progress=False)
    assert _files(again) == _files(card)
    stamps = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert generate(SPEC, again, progress=False) == again
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == stamps


def test_changed_spec_replaces_folder_atomically(card: Path, tmp_path: Path) -> None:
    out = generate(OfflineSpec("test", ["jpeg"], {"test": 2}, frames=1, size=32), tmp_path / "c", progress=False)
    generate(OfflineSpec("test", ["jpeg"], {"test": 2}, frames=1, size=32, seed=1), out, progress=False)
    assert json.loads((out / "spec.json").read_text())["spec"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate(SPEC, tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_pools_share_no_source_and_no_face() -> None:
    assert not set(offline.POOLS["train"]) & set(offline.POOLS["test"])
    train, test = offline._load_pool("train"), offline._load_pool("test")
    faces = {np.asarray(i).tobytes() for i in train[len(offline.POOLS["train"]) :]}
    assert len(faces) == 50 and not faces & {np.asarray(i).tobytes() for i in test[len(offline.POOLS["test"]) :]}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sources": "val"},
        {"families": ["nope"]},
        {"severity": {"blend": 2.0}},
        {"severity": {"jpeg": 0.5}},
        {"videos": {"train": 0}},
    ],
)
def test_bad_spec_is_rejected(kwargs: dict) -> None:
    args = {"sources": "train", "families": ["blend"], "videos": {"train": 1}} | kwargs
    with pytest.raises(ValueError):
        OfflineSpec(**args)


def test_too_many_videos_for_the_pool_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct locations"):
        generate(OfflineSpec("test", ["jpeg"], {"test": 500}, frames=1, size=16), tmp_path / "x", progress=False)


def test_preview_writes_a_grid(card: Path, tmp_path: Path) -> None:
    groups = {"real": sorted((card / "train" / "real").glob("*/00.png"))}
    groups |= {f: sorted((card / "train" / "fake" / f).glob("*/00.png")) for f in SPEC.families}
    out = preview(groups, tmp_path / "grid.png", per_group=3)
    width, height = Image.open(out).size
    assert height > width / 3 * len(groups) * 0.8
