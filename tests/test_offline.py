"""The offline generator: layout, twins, disjoint splits and pools, determinism, idempotence, the shipped cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import offline
from bench.data.cards import CARDS_DIR, load_card
from bench.data.forgeries import DEFAULT_SEVERITY
from bench.data.offline import OfflineSpec, Tile, generate
from bench.data.perturb import degrade
from bench.data.preview import preview
from bench.errors import InputError

SPEC = OfflineSpec(
    sources="train", families=["blend", "noise", "colour"], videos={"train": 5, "val": 2, "test": 3}, frames=3, size=32
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.int16)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(SPEC, tmp_path_factory.mktemp("offline") / "card", progress=False)


@pytest.fixture(scope="module")
def manifest(card: Path) -> dict[str, dict]:
    return json.loads((card / "videos.json").read_text())


def test_layout_and_counts(card: Path) -> None:
    for split, n in SPEC.videos.items():
        reals = sorted((card / split / "real").iterdir())
        fakes = sorted((card / split / "fake").glob("*/*"))
        assert len(reals) == len(fakes) == n
        assert sorted(v.name.replace("fake", "real") for v in fakes) == [v.name for v in reals]
        per_family = sorted(len(list((card / split / "fake").glob(f"{f}/*"))) for f in SPEC.families)
        assert sum(per_family) == n and per_family[-1] - per_family[0] <= 1
        for video in reals + fakes:
            assert sorted(p.name for p in video.iterdir()) == ["00.png", "01.png", "02.png"]
    assert sorted(p.name for p in card.iterdir()) == ["spec.json", "test", "train", "val", "videos.json"]
    image = Image.open(card / "train" / "real" / "train-real-0000" / "00.png")
    assert image.size == (32, 32) and image.mode == "RGB"


def test_spec_json_records_resolved_spec(card: Path) -> None:
    record = json.loads((card / "spec.json").read_text())
    assert record["generator"] == offline.GENERATOR_VERSION == 2
    assert record["spec"]["severity"] == {f: DEFAULT_SEVERITY[f] for f in SPEC.families}
    assert record["spec"]["videos"] == SPEC.videos and record["spec"]["degrade"] is False


def test_every_fake_is_the_twin_of_a_real_of_its_split(card: Path, manifest: dict[str, dict]) -> None:
    fakes = {video: entry for video, entry in manifest.items() if entry["label"] == 1}
    assert len(fakes) == sum(SPEC.videos.values()) == len(manifest) // 2
    for video, entry in fakes.items():
        real = manifest[entry["twin"]]
        assert real["label"] == 0 and real["twin"] == video
        assert entry["twin"].split("/")[0] == video.split("/")[0]  # the same split
        assert (real["source"], real["tile"]) == (entry["source"], entry["tile"])
        assert video.split("/")[2] == entry["family"] and (card / video).is_dir()
        for frame in ("00.png", "02.png"):
            ours, theirs = _pixels(card / video / frame), _pixels(card / entry["twin"] / frame)
            untouched = (ours == theirs).all(axis=-1).mean()  # the forgery region is an ellipse inside the crop
            assert 0.2 < untouched < 1.0


def test_splits_share_no_tile_and_no_face(manifest: dict[str, dict]) -> None:
    reals = [(video.split("/")[0], Tile(e["source"], *e["tile"])) for video, e in manifest.items() if e["label"] == 0]
    for i, (split_a, a) in enumerate(reals):
        for split_b, b in reals[i + 1 :]:
            assert not a.overlaps(b), f"{split_a} and {split_b} share {a.source}"


def test_tiles_overlap_when_they_share_a_pixel_of_one_source() -> None:
    tile = Tile("a", 0.0, 0.0, 64.0)
    assert tile.overlaps(Tile("a", 63.0, 63.0, 100.0)) and not tile.overlaps(Tile("b", 0.0, 0.0, 64.0))
    assert not tile.overlaps(Tile("a", 0.0, 64.0, 64.0))  # edge to edge
    assert not Tile("a", 0.0, 0.0, 10.0).overlaps(Tile("a", 20.0, 20.0, 100.0))


def test_crops_stay_inside_their_tile() -> None:
    image = Image.fromarray(np.zeros((300, 300, 3), np.uint8))
    tile = Tile("x", 64.0, 128.0, 64.0)
    marked = np.zeros((300, 300, 3), np.uint8)
    marked[64:128, 128:192] = 255  # everything outside the tile is black
    for seed in range(20):
        crops = offline._crop(Image.fromarray(marked), tile, 32, 4, np.random.default_rng(seed))
        assert min(float(c.min()) for c in crops) > 0.99
    assert offline._crop(image, tile, 16, 1, np.random.default_rng(0))[0].shape == (16, 16, 3)


def test_pools_share_no_source_and_no_near_duplicate_image() -> None:
    assert not set(offline.POOLS["train"]) & set(offline.POOLS["test"])
    train, test = offline.load_pool("train"), offline.load_pool("test")
    assert len(train) == len(offline.POOLS["train"]) + 50 and not set(train) & set(test)

    def signature(image: Image.Image) -> np.ndarray:
        grey = np.asarray(image.convert("L").resize((24, 24), Image.Resampling.BILINEAR), np.float64).ravel()
        return (grey - grey.mean()) / (grey.std() + 1e-9)

    a = np.stack([signature(i) for i in train.values()])
    b = np.stack([signature(i) for i in test.values()])
    assert (a @ b.T / a.shape[1]).max() < 0.95  # no image of one pool is a near copy of one of the other


def test_frames_of_a_video_are_correlated_but_not_equal(card: Path) -> None:
    video, other = sorted((card / "train" / "real").iterdir())[:2]
    first, second = _pixels(video / "00.png"), _pixels(video / "01.png")
    assert not np.array_equal(first, second)
    assert np.abs(first - second).mean() < np.abs(first - _pixels(other / "00.png")).mean()


def test_degraded_twins_share_their_post_processing(tmp_path: Path) -> None:
    spec = OfflineSpec("test", ["blend"], {"test": 3}, frames=2, size=48, degrade=True)
    plain = generate(OfflineSpec("test", ["blend"], {"test": 3}, frames=2, size=48), tmp_path / "plain", progress=False)
    degraded = generate(spec, tmp_path / "degraded", progress=False)
    entries = json.loads((degraded / "videos.json").read_text())
    for video, entry in entries.items():
        if entry["label"] == 1:
            ours, theirs = _pixels(degraded / video / "00.png"), _pixels(degraded / entry["twin"] / "00.png")
            assert (ours == theirs).all(axis=-1).mean() > 0.1  # blocks far from the region match exactly
        assert not np.array_equal(_pixels(degraded / video / "00.png"), _pixels(plain / video / "00.png"))


def test_degrade_is_a_pure_function_of_its_generator() -> None:
    image = (np.random.default_rng(0).uniform(size=(40, 40, 3)) * 255).astype(np.uint8)
    first, again = (degrade(image, np.random.default_rng([3, 1])) for _ in range(2))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, image)


def test_same_spec_gives_identical_bytes_and_second_call_does_nothing(card: Path, tmp_path: Path) -> None:
    again = generate(SPEC, tmp_path / "again", progress=False)
    assert _files(again) == _files(card)
    stamps = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert generate(SPEC, again, progress=False) == again
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == stamps


def test_changed_spec_replaces_folder_atomically(tmp_path: Path) -> None:
    out = generate(OfflineSpec("test", ["jpeg"], {"test": 2}, frames=1, size=32), tmp_path / "c", progress=False)
    generate(OfflineSpec("test", ["jpeg"], {"test": 2}, frames=1, size=32, seed=1), out, progress=False)
    assert json.loads((out / "spec.json").read_text())["spec"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]  # no partial folder left


def test_concurrent_first_use_generates_once_and_completely(card: Path, tmp_path: Path) -> None:
    """Four processes generating one card on a fresh root (the tasks of a Slurm array) give the complete set."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=generate, args=(SPEC, tmp_path / "card", False)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * 4
    assert _files(tmp_path / "card") == _files(card)
    assert offline.verify(tmp_path / "card") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".card.lock", "card"]


def test_a_truncated_or_altered_set_is_found_and_regenerated(card: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(card, tmp_path / "card"))
    frame = next(iter(sorted((copy / "test").rglob("*.png"))))
    frame.write_bytes(frame.read_bytes()[:-1])
    assert "content hash differs" in offline.verify(copy)[0]
    frame.unlink()
    assert "files, but the generation wrote" in offline.verify(copy)[0]
    generate(SPEC, copy, progress=False)  # incomplete: made again, the same bytes
    assert _files(copy) == _files(card) and offline.verify(copy) == []


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError) as err:
        generate(SPEC, tmp_path, progress=False)
    assert isinstance(err.value, InputError)  # the CLI's one error: line, not a traceback
    assert (tmp_path / "mine.txt").read_text() == "keep"


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
        generate(OfflineSpec("test", ["jpeg"], {"test": 5000}, frames=1, size=16), tmp_path / "x", progress=False)


def test_shipped_cards_keep_the_pools_apart_and_are_large_enough() -> None:
    cards = [load_card(p.stem) for p in sorted(CARDS_DIR.glob("offline-*.yaml"))]
    training = [c for c in cards if c.validation is not None]
    assert [c.name for c in training] == ["offline-ff"]
    assert training[0].generate is not None and training[0].generate["sources"] == "train"
    for card in cards:
        assert card.generate is not None
        assert card.generate["sources"] == ("train" if card is training[0] else "test"), card.name
        assert card.generate["videos"]["test"] >= 100, card.name
    assert training[0].generate["videos"]["val"] >= 100
    families = {c.name: set(c.forgeries) for c in cards}
    assert not families["offline-unseen"] & families["offline-ff"]


def test_preview_writes_a_grid(card: Path, tmp_path: Path) -> None:
    groups = {"real": sorted((card / "train" / "real").glob("*/00.png"))}
    groups |= {f: sorted((card / "train" / "fake" / f).glob("*/00.png")) for f in SPEC.families}
    out = preview(groups, tmp_path / "grid.png", per_group=3)
    width, height = Image.open(out).size
    assert height > width / 3 * len(groups) * 0.8


def test_offline_seed_draws_the_cards_again_in_their_own_folder(tmp_path: Path) -> None:
    from bench.config import build_config
    from bench.data.catalog import redrawn
    from bench.train import load_splits

    spec = {"sources": "test", "families": ["blend"], "videos": {"train": 2, "val": 2, "test": 2}, "size": 16}
    card = {"format": "offline", "root": "tiny", "splits": {"train": "train", "val": "val", "test": "test"}}
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps({**card, "validation": "val", "forgeries": ["blend"], "generate": spec}))
    assert redrawn(load_card(str(path)), None) == load_card(str(path))
    assert redrawn(load_card("ff-c23"), 3) == load_card("ff-c23")  # only offline cards are drawn again

    def frames(seed: int | None) -> list[bytes]:
        data = {"train": str(path), "test": [str(path)], "root": str(tmp_path / "data"), "offline_seed": seed}
        splits = load_splits(build_config({"data": data}))
        assert all(Path(f.path).is_relative_to(tmp_path / "data" / f"tiny-seed{seed}") for f in splits.train)
        return [Path(f.path).read_bytes() for f in splits.train]

    assert frames(1) != frames(2) and frames(1) == frames(1)
    ids = {build_config({"data": {"offline_seed": seed}}).run_id() for seed in (None, 1, 2)}
    assert len(ids) == 3
