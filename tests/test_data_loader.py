"""Bad frames inside DataLoader workers: skipped and counted, a clear failure past the fraction; loader speed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.data.cards import load_card
from bench.data.catalog import split_frames
from bench.data.loader import BadDataError, FrameDataset, StepSampler, eval_loader, group_indices, train_loader
from bench.data.speed import loader_speed
from tests.conftest import FORGERIES, write_folder_card


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("bad") / "card"
    card = load_card(str(write_folder_card(root, {"test": 10}, frames=2)))
    return split_frames(card, "test", root.parent, 8)  # 60 frames


def _copy(frames: list, folder: Path) -> list:
    out = []
    for i, frame in enumerate(frames):
        target = folder / f"{i:03d}.png"
        target.write_bytes(Path(frame.path).read_bytes())
        out.append(replace(frame, path=str(target)))
    return out


def _corrupt(frames: list, count: int) -> list[int]:
    indices = list(range(3, 3 + 7 * count, 7))
    for i in indices:
        Path(frames[i].path).write_bytes(b"\x89PNG truncated")
    return indices


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_frames_are_skipped_and_counted(frames: list, tmp_path: Path, workers: int) -> None:
    copies = _copy(frames, tmp_path)
    bad = _corrupt(copies, 2)
    loader = eval_loader(FrameDataset(copies, 16, (0.5,) * 3, (0.5,) * 3), 16, workers, max_bad_fraction=0.05)
    seen = [i for _ in range(2) for batch in loader for i in batch["index"].tolist()]  # two passes (persistent)
    assert sorted(set(seen)) == [i for i in range(60) if i not in bad] and len(seen) == 2 * 58
    assert sorted(loader.bad) == bad and all("UnidentifiedImageError" in e for e in loader.bad.values())


def test_too_many_bad_frames_fail_with_a_clear_message(frames: list, tmp_path: Path) -> None:
    copies = _copy(frames, tmp_path)
    _corrupt(copies, 2)
    loader = eval_loader(FrameDataset(copies, 16, (0.5,) * 3, (0.5,) * 3), 16, 0, max_bad_fraction=0.02)
    with pytest.raises(BadDataError, match=r"2 of 60 frames are unreadable, more than data.max_bad_fraction=0.02"):
        list(loader)


def test_training_batches_drop_bad_frames_and_an_all_bad_batch_fails(frames: list, tmp_path: Path) -> None:
    copies = _copy(frames, tmp_path)
    dataset = FrameDataset(copies, 16, (0.5,) * 3, (0.5,) * 3, FORGERIES)
    sampler = StepSampler(group_indices(copies, FORGERIES, True), 12, seed=0, start=0, stop=5)
    bad = _corrupt(copies, 1)
    batches = list(train_loader(dataset, sampler, 0, 0, max_bad_fraction=0.5))
    expected = [[i for i, _ in sampler.batch(s) if i not in bad] for s in range(5)]
    assert [b["index"].tolist() for b in batches] == expected
    assert all(b["image"].shape == (len(e), 3, 16, 16) for b, e in zip(batches, expected, strict=True))
    for frame in copies:
        Path(frame.path).write_bytes(b"")
    with pytest.raises(BadDataError, match="every frame of a training batch is unreadable"):
        list(train_loader(dataset, sampler, 0, 0, max_bad_fraction=1.0))


def test_loader_speed_counts_every_image(frames: list) -> None:
    speed = loader_speed(frames, 32, batch_size=10, workers=0)
    assert speed.images == 60 and 0 < speed.first_batch_s < speed.seconds
    assert speed.images_per_s == pytest.approx(60 / speed.seconds)
    assert loader_speed(frames, 32, batch_size=10, workers=0, max_batches=2).images == 20


def test_a_16_bit_greyscale_frame_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from bench.data.loader import to_rgb

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as img:
        assert img.mode == "I;16"
        rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8))
