"""`bench data prepare` on generated videos with a real face pasted in; then a grid trains on its output."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from bench.cli import main
from bench.data.cards import load_card
from bench.data.catalog import split_frames
from bench.data.prepare import make_detector, prepare, read_frames
from bench.tracking import runs_by_hash

FACE = Image.fromarray(data.astronaut()[20:240, 150:300]).resize((75, 110))  # the astronaut's head and shoulders
SIDE, FRAMES, SIZE = 160, 24, 96


def face_region(index: int) -> tuple[int, int, int, int]:
    """Where the face patch sits in frame ``index`` (it drifts right by a pixel every 3 frames)."""
    x, y = 30 + index // 3, 25
    return x, y, x + FACE.width, y + FACE.height


def write_video(path: Path, face: bool, shift: int = 0) -> None:
    """A short H.264 video: grey noise, the face patch when ``face`` (a fake's face is tinted by ``shift``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    patch = np.clip(np.asarray(FACE, np.int16) + np.array([shift, 0, -shift]), 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(FRAMES):
            image = Image.fromarray(rng.integers(80, 120, (SIDE, SIDE, 3), dtype=np.uint8))
            if face:
                image.paste(Image.fromarray(patch), face_region(i)[:2])
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    base = tmp_path_factory.mktemp("prepare")
    source, out = base / "videos", base / "crops"
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for v in range(count):
            write_video(source / split / "real" / f"r{v}.mp4", face=True)
            write_video(source / split / "fake" / "tint" / f"f{v}.mp4", face=True, shift=60)
    write_video(source / "test" / "real" / "blank.mp4", face=False)
    report = prepare(source, out, frames=6, size=SIZE, detector="lbp", workers=2)  # the process pool
    return source, out, report


def test_sampled_frames_are_evenly_spaced(prepared) -> None:
    source, _, _ = prepared
    indices = [i for i, _ in read_frames(source / "train" / "real" / "r0.mp4", 6)]
    assert indices == [0, 5, 9, 14, 18, 23]


@pytest.mark.parametrize("detector", ["lbp", "mtcnn"])
def test_detector_box_lies_on_the_pasted_face(prepared, detector: str) -> None:
    if detector == "mtcnn":
        pytest.importorskip("facenet_pytorch")
    source, _, _ = prepared
    decoded = read_frames(source / "val" / "real" / "r0.mp4", 3)
    for (index, _), box in zip(decoded, make_detector(detector)([image for _, image in decoded]), strict=True):
        assert box is not None
        x0, y0, x1, y1 = face_region(index)
        inside = max(0, min(x1, box[2]) - max(x0, box[0])) * max(0, min(y1, box[3]) - max(y0, box[1]))
        assert inside / ((box[2] - box[0]) * (box[3] - box[1])) > 0.9
        assert (box[2] - box[0]) > 0.4 * FACE.width


def test_prepare_writes_face_crops_an_index_a_card_and_reports_no_face(prepared) -> None:
    _, out, report = prepared
    assert len(report.done) == 8 and report.failed == [] and report.no_face == ["test/real/blank"]
    crops = sorted((out / "test" / "fake" / "tint" / "f0").iterdir())
    assert [p.name for p in crops] == ["00000.png", "00005.png", "00009.png", "00014.png", "00018.png", "00023.png"]
    detect = make_detector("lbp")
    for path in crops[::2]:
        crop = np.asarray(Image.open(path))
        assert crop.shape == (SIZE, SIZE, 3)
        (box,) = detect([crop])
        assert box is not None and abs((box[0] + box[2]) / 2 - SIZE / 2) < 0.15 * SIZE  # the face, centred
    index = json.loads(report.index.read_text())["crops"]
    assert sorted(index) == ["real", "tint"] and sorted(index["real"]) == ["test", "train", "val"]
    assert index["tint"]["train"]["f1"] == {
        "label": "tint",
        "frames": [f"train/fake/tint/f1/{i:05d}.png" for i in (0, 5, 9, 14, 18, 23)],
    }
    folder_card = load_card(str(report.card))
    assert folder_card.validation == "val" and folder_card.forgeries == ["tint"]
    indexed = {"name": "crops-index", "format": "deepfakebench", "root": str(out), "index": str(report.index)}
    indexed |= {"labels": {"real": 0, "tint": 1}, "splits": folder_card.splits}
    (out.parent / "indexed.yaml").write_text(yaml.safe_dump(indexed))
    index_card = load_card(str(out.parent / "indexed.yaml"))
    for split in ("train", "val", "test"):
        by_folder = split_frames(folder_card, split, "unused", 4)
        by_index = split_frames(index_card, split, "unused", 4)
        assert sorted((f.path, f.label, f.forgery) for f in by_folder) == sorted(
            (f.path, f.label, f.forgery) for f in by_index
        )


def test_second_run_does_no_work(prepared) -> None:
    source, out, first = prepared
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = prepare(source, out, frames=6, size=SIZE, detector="lbp", workers=1)
    assert again.done == [] and again.no_face == [] and again.failed == []
    assert sorted(again.skipped) == sorted(first.done + first.no_face)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamp


def test_grid_trains_on_prepared_crops_and_tests_on_another_card(
    prepared, tiny_cards, tracking_uri, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    report = prepared[2]
    base = {
        "model": {"name": "test_vit", "pretrained": False, "img_size": 32},
        "data": {"train": str(report.card), "test": [str(report.card), tiny_cards[1]], "workers": 0},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
        "eval": {"bootstrap": 0},
        "tracking": {"uri": tracking_uri, "runs_dir": str(tmp_path / "runs")},
    }
    grid = {"name": "prepared", "base": base, "methods": ["full-ft"], "seeds": [0]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["grid", str(path), "--no-report"]) == 0
    (run,) = runs_by_hash(tracking_uri, "prepared").values()
    assert run.info.status == "FINISHED"
    assert 0 <= run.data.metrics["auc/crops"] <= 1 and 0 <= run.data.metrics["auc/tiny-other"] <= 1
