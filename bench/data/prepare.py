"""``bench data prepare``: raw videos to square face crops in the folder layout, plus a DeepfakeBench-format index.

Input: ``SOURCE/real/*.mp4`` and ``SOURCE/fake/<forgery>/*.mp4`` (one split), or the same under split folders
(``SOURCE/train/real/...``). Each video is decoded with PyAV; ``frames`` evenly spaced frames are kept; a face detector
whose weights ship in a package finds the face (facenet-pytorch's MTCNN when installed, else scikit-image's LBP
frontal-face cascade); a square of ``scale`` times the face box's longer side around its centre is resized to
``size`` px and written as PNG to ``OUT/<split>/real/<video>/`` or ``OUT/<split>/fake/<forgery>/<video>/``. A frame
without a detection takes the nearest frame's box; a video without any is listed in ``OUT/no-face.txt`` and reported.
A video is written to a temporary folder and renamed when complete, so a rerun skips finished videos (and those in
``no-face.txt``). At the end ``OUT/index.json`` (label keys ``real`` and the forgery names, frame paths relative to
``OUT``) and a folder card ``OUT/card.yaml`` describe everything prepared so far.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm.auto import tqdm

from bench.data.catalog import read_folder
from bench.data.frames import REAL, sample_evenly
from bench.errors import ConfigError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
DETECTORS = ("auto", "mtcnn", "lbp")
DETECT_SIDE = 640  # frames are downscaled to this longer side for detection
MIN_FACE = 0.1  # smallest face searched for, as a fraction of the shorter side (smaller ones cost much more time)
NO_FACE = "no-face.txt"

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Detector = Callable[[list[np.ndarray]], list[Box | None]]
_RawDetector = Callable[[list[np.ndarray], int], list[Box | None]]  # images, smallest face side in pixels


@dataclass(frozen=True)
class Video:
    """A source video and where its crops go."""

    source: Path
    split: str
    forgery: str

    @property
    def folder(self) -> str:
        kind = REAL if self.forgery == REAL else f"fake/{self.forgery}"
        return f"{self.split}/{kind}/{self.source.stem}"


@dataclass
class PrepareReport:
    """What a ``prepare`` call did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    index: Path | None = None
    card: Path | None = None


def _has_layout(folder: Path) -> bool:
    return (folder / REAL).is_dir() or (folder / "fake").is_dir()


def _video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []


def find_videos(source: Path, split: str) -> list[Video]:
    """The videos under ``source``, in the layout of the module docstring (``split`` names a split-less layout)."""
    if not source.is_dir():
        raise ConfigError(f"prepare: {source} is not a folder")
    roots = [(split, source)] if _has_layout(source) else [(d.name, d) for d in sorted(source.iterdir())]
    roots = [(name, folder) for name, folder in roots if _has_layout(folder)]
    if not roots:
        raise ConfigError(f"prepare: {source} holds neither real/ and fake/<forgery>/ nor split folders with them")
    videos = []
    for name, folder in roots:
        videos += [Video(p, name, REAL) for p in _video_files(folder / REAL)]
        forgeries = sorted(m for m in (folder / "fake").glob("*") if m.is_dir())
        videos += [Video(p, name, m.name) for m in forgeries for p in _video_files(m)]
    return videos


def read_frames(path: Path, n: int) -> list[tuple[int, np.ndarray]]:
    """``n`` evenly spaced frames of a video as ``(frame index, HxWx3 uint8 RGB)``."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    wanted = set(sample_evenly(total, n))
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames.append((i, frame.to_ndarray(format="rgb24")))
            if i >= max(wanted):
                break
    return frames


def _box(values: Iterable[Any]) -> Box:
    """Four numbers (x0, y0, x1, y1) as a box of floats."""
    x0, y0, x1, y1 = (float(v) for v in values)
    return (x0, y0, x1, y1)


def _largest(boxes: list[Box]) -> Box | None:
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), default=None)


def _mtcnn() -> _RawDetector:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")

    def detect(images: list[np.ndarray], min_face: int) -> list[Box | None]:
        mtcnn.min_face_size = min_face
        found, _ = mtcnn.detect(images)
        return [None if b is None else _largest([_box(row) for row in b]) for b in found]

    return detect


def _lbp() -> _RawDetector:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    cascade = Cascade(lbp_frontal_face_cascade_filename())

    def detect_one(image: np.ndarray, min_face: int) -> Box | None:
        short = min(image.shape[:2])
        found = cascade.detect_multi_scale(
            img=image, scale_factor=1.2, step_ratio=1, min_size=(min_face, min_face), max_size=(short, short)
        )
        boxes = [(d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]) for d in found]
        return _largest([_box(b) for b in boxes])

    return lambda images, min_face: [detect_one(image, min_face) for image in images]


def make_detector(name: str) -> Detector:
    """A face detector for same-sized RGB frames: downscaled to ``DETECT_SIDE``, faces from ``MIN_FACE`` of the
    shorter side up, the largest face per frame (``None`` where there is none)."""
    if name not in DETECTORS:
        raise ConfigError(f"prepare: detector {name!r} is not one of {', '.join(DETECTORS)}")
    if name == "auto":
        try:
            import facenet_pytorch  # noqa: F401
        except ImportError:
            name = "lbp"
        else:
            name = "mtcnn"
    detect = _mtcnn() if name == "mtcnn" else _lbp()

    def scaled(images: list[np.ndarray]) -> list[Box | None]:
        height, width = images[0].shape[:2]
        factor = min(1.0, DETECT_SIDE / max(height, width))
        size = (round(width * factor), round(height * factor))
        if factor < 1:
            images = [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)) for im in images]
        boxes = detect(images, max(20, round(MIN_FACE * min(size))))
        return [None if b is None else (b[0] / factor, b[1] / factor, b[2] / factor, b[3] / factor) for b in boxes]

    return scaled


def fill_boxes(boxes: list[Box | None]) -> list[Box] | None:
    """Every frame's box, a frame without a detection taking the nearest frame's; ``None`` when nothing was found."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return None
    return [boxes[min(found, key=lambda j: abs(j - i))] for i in range(len(boxes))]  # type: ignore[misc]


def square_crop(image: np.ndarray, box: Box, scale: float, size: int) -> Image.Image:
    """A square of ``scale`` times the box's longer side around its centre (black beyond the frame), ``size`` px."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = scale * max(box[2] - box[0], box[3] - box[1]) / 2
    region = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    return Image.fromarray(image).crop(region).resize((size, size), Image.Resampling.BICUBIC)


_DETECTOR_CACHE: dict[str, Detector] = {}


def prepare_video(video: Video, out: Path, frames: int, size: int, scale: float, detector: str) -> str:
    """Crop one video into ``out / video.folder``; returns ``done`` or ``no-face``."""
    if detector not in _DETECTOR_CACHE:
        _DETECTOR_CACHE[detector] = make_detector(detector)
    decoded = read_frames(video.source, frames)
    if not decoded:
        raise ValueError("no frame could be decoded")
    boxes = fill_boxes(_DETECTOR_CACHE[detector]([image for _, image in decoded]))
    if boxes is None:
        return "no-face"
    target = out / video.folder
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for (index, image), box in zip(decoded, boxes, strict=True):
        square_crop(image, box, scale, size).save(partial / f"{index:05d}.png")
    partial.rename(target)
    return "done"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def write_index(out: Path) -> Path:
    """``out/index.json`` in DeepfakeBench's format for the videos finished under ``out``."""
    groups: dict[str, dict[str, dict[str, dict]]] = {}
    for split_dir in sorted(d for d in out.iterdir() if _has_layout(d)):
        for frame in read_folder(split_dir, sys.maxsize):
            key = frame.forgery
            record = groups.setdefault(key, {}).setdefault(split_dir.name, {})
            video = record.setdefault(Path(frame.video).name, {"label": key, "frames": []})
            video["frames"].append(Path(frame.path).relative_to(out).as_posix())
    path = out / "index.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({out.name: groups}, indent=1))
    tmp.replace(path)
    return path


def write_card(out: Path) -> Path:
    """``out/card.yaml``: a folder card of everything prepared under ``out``."""
    splits = sorted(d.name for d in out.iterdir() if _has_layout(d))
    forgeries = sorted({m.name for s in splits for m in (out / s / "fake").glob("*") if m.is_dir()})
    card = {
        "name": out.name,
        "description": "Face crops made by `bench data prepare`.",
        "format": "folder",
        "root": str(out.resolve()),
        "splits": {s: s for s in splits},
        "forgeries": forgeries,
    }
    if "val" in splits:
        card["validation"] = "val"
    path = out / "card.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def prepare(
    source: Path,
    out: Path,
    *,
    frames: int = 32,
    size: int = 256,
    scale: float = 1.3,
    detector: str = "auto",
    workers: int = 1,
    split: str = "test",
) -> PrepareReport:
    """Crop every video under ``source`` into ``out`` (see the module docstring); ``workers`` processes in parallel."""
    make_detector(detector)  # fail early on a bad name or a missing package
    videos = find_videos(source, split)
    out.mkdir(parents=True, exist_ok=True)
    no_face_file = out / NO_FACE
    known_no_face = set(no_face_file.read_text().splitlines()) if no_face_file.exists() else set()
    report = PrepareReport()
    todo = []
    for video in videos:
        if (out / video.folder).is_dir() or video.folder in known_no_face:
            report.skipped.append(video.folder)
        else:
            todo.append(video)
    args = (out, frames, size, scale, detector)
    bar = tqdm(total=len(todo), desc="prepare", unit="video", disable=None)

    def record(video: Video, outcome: str | BaseException) -> None:
        if isinstance(outcome, BaseException):
            report.failed.append(f"{video.source}: {type(outcome).__name__}: {outcome}")
        elif outcome == "no-face":
            report.no_face.append(video.folder)
            with no_face_file.open("a") as fh:
                fh.write(video.folder + "\n")
        else:
            report.done.append(video.folder)
        bar.update(1)

    if workers <= 1:
        for video in todo:
            try:
                record(video, prepare_video(video, *args))
            except Exception as err:  # a broken video is reported, the others go on
                record(video, err)
    else:
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(prepare_video, video, *args): video for video in todo}
            for future in as_completed(futures):
                record(futures[future], future.exception() or future.result())
    bar.close()
    if any(_has_layout(d) for d in out.iterdir()):
        report.index, report.card = write_index(out), write_card(out)
    return report
