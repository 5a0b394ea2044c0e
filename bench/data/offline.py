"""The offline benchmark: real and forged "videos" cut from freely licensed images that ship inside installed wheels.

A real video is one location (a tile) of a source image; its frames are crops of that tile with a small jitter of
position and scale, so frames of a video are correlated like video frames, and every crop stays inside its tile.
Each real video has one fake twin, as in FaceForensics++: the same crops with one forgery family of
:mod:`bench.data.forgeries` applied to each frame, so image content cannot tell real from fake. Tiles are used by one
real video only, so the splits of a card never share content; two pools of sources (the LFW faces split by face) keep
the training card and the cross-dataset cards apart. With ``degrade`` every frame, real and fake alike, is then
post-processed as distributed videos are (:func:`bench.data.perturb.degrade`); a pair shares the same draw.

Layout: ``out/<split>/real/<split>-real-<n>/<frame>.png``, ``out/<split>/fake/<family>/<split>-fake-<n>/<frame>.png``
(the fake of real ``n`` has the same ``n``), ``out/videos.json`` (per video: source image, tile, family, twin) and
``out/spec.json`` (the spec, the number of files and their hash). The same spec always gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.data.forgeries import DEFAULT_SEVERITY, FAMILIES
from bench.data.perturb import degrade
from bench.errors import ConfigError, DataError
from bench.locks import locked

GENERATOR_VERSION = 2
TILE = 64
"""Side in source pixels of the tiles that videos are cut from."""
MAX_SIDE = 640
"""Larger sources are shrunk to this longest side first."""
FACE_SIDE = 100
"""LFW faces (25 px) are upscaled to this side; each face is one tile."""
MIN_STD = 0.03
"""Tiles whose grey values vary less than this (flat background) are skipped."""


class ForeignFolder(DataError, FileExistsError):
    """The generator's output folder holds files it did not write (an input error, and a ``FileExistsError``)."""


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(name, asfileobj=True) as fh:  # type: ignore[union-attr]
            return np.asarray(Image.open(fh).convert("RGB"))

    return load


LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}
"""Sources from outside scikit-image: scikit-learn's two sample photographs and matplotlib's portrait of Grace Hopper
(public domain); every other source is an image of ``skimage.data`` (CC0 / public domain)."""

POOLS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "brick",
        "grass",
        "china",
        "grace_hopper",
    ),
    "test": ("camera", "coins", "gravel", "moon", "retina", "immunohistochemistry", "clock", "cell", "flower"),
}
"""Natural-image sources of each pool; each pool also holds one half of scikit-image's 100 LFW faces. ``horse`` (a
binary silhouette) and ``cat`` (the same photograph as ``chelsea``) are left out."""


@dataclass
class OfflineSpec:
    """What to generate.

    Attributes:
        sources: ``train`` or ``test``: which pool of source images.
        families: forgery families of the fakes.
        videos: split name -> number of real videos; each has one fake twin, families spread evenly over the fakes.
        frames: frames per video.
        size: crop side in pixels.
        seed: seeds locations, jitter, forgeries and degradation.
        severity: per-family override of :data:`bench.data.forgeries.DEFAULT_SEVERITY`.
        degrade: post-process every frame (reals and fakes alike) with :func:`bench.data.perturb.degrade`.
    """

    sources: str
    families: list[str]
    videos: dict[str, int]
    frames: int = 4
    size: int = 112
    seed: int = 0
    severity: dict[str, float] = field(default_factory=dict)
    degrade: bool = False

    def __post_init__(self) -> None:
        if self.sources not in POOLS:
            raise ConfigError(f"sources must be one of {sorted(POOLS)}, got {self.sources!r}")
        unknown = [f for f in [*self.families, *self.severity] if f not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"unknown or no forgery families {unknown}; valid: {sorted(FAMILIES)}")
        extra = sorted(set(self.severity) - set(self.families))
        if extra:
            raise ConfigError(f"severity given for families {extra} that are not in families {self.families}")
        if any(not 0.0 <= s <= 1.0 for s in self.severity.values()):
            raise ConfigError(f"severities must lie in [0, 1], got {self.severity}")
        if not self.videos or any(n < 1 for n in self.videos.values()) or self.frames < 1 or self.size < 16:
            raise ConfigError(f"need videos >= 1 per split, frames >= 1 and size >= 16, got {self}")

    def resolved(self) -> dict[str, Any]:
        """The spec with every family's severity filled in: what ``spec.json`` records."""
        record = asdict(self)
        record["severity"] = {f: float(self.severity.get(f, DEFAULT_SEVERITY[f])) for f in self.families}
        return record


@dataclass(frozen=True)
class Tile:
    """A square region of a source image that one real video (and its fake twin) is cut from."""

    source: str
    y: float
    x: float
    side: float

    def overlaps(self, other: Tile) -> bool:
        """Whether the two tiles share any pixel of the same source."""
        return (
            self.source == other.source
            and self.y < other.y + other.side
            and other.y < self.y + self.side
            and self.x < other.x + other.side
            and other.x < self.x + self.side
        )


def _rgb(image: np.ndarray) -> Image.Image:
    """A uint8 RGB PIL image from a grey or colour, uint8, bool or float array."""
    if image.dtype != np.uint8:
        image = _uint8(image.astype(np.float64))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return Image.fromarray(image[..., :3])


def load_pool(pool: str) -> dict[str, Image.Image]:
    """The pool's natural images (shrunk to :data:`MAX_SIDE`) and its half of the LFW faces (upscaled), by name."""
    import skimage.data

    images = {}
    for name in POOLS[pool]:
        image = _rgb(LOADERS.get(name, _skimage(name))())
        factor = MAX_SIDE / max(image.size)
        if factor < 1.0:
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
        images[name] = image
    faces = skimage.data.lfw_subset()[:100]
    first = 0 if pool == "train" else 50
    for index in range(first, first + 50):
        images[f"lfw-{index:03d}"] = _rgb(faces[index]).resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC)
    return images


def _tiles(images: dict[str, Image.Image], rng: np.random.Generator) -> list[list[Tile]]:
    """Shuffled non-overlapping tiles per natural source, flat ones skipped; all faces form one more source."""
    per_source, faces = [], []
    for name, image in images.items():
        if name.startswith("lfw-"):
            faces.append(Tile(name, 0.0, 0.0, FACE_SIDE))
            continue
        grey = np.asarray(image.convert("L"), np.float32) / 255.0
        ny, nx = image.height // TILE, image.width // TILE
        y0, x0 = (image.height - ny * TILE) // 2, (image.width - nx * TILE) // 2
        tiles = [
            Tile(name, y0 + i * TILE, x0 + j * TILE, TILE)
            for i in range(ny)
            for j in range(nx)
            if grey[y0 + i * TILE : y0 + (i + 1) * TILE, x0 + j * TILE : x0 + (j + 1) * TILE].std() >= MIN_STD
        ]
        per_source.append([tiles[k] for k in rng.permutation(len(tiles))])
    per_source.append([faces[k] for k in rng.permutation(len(faces))])
    return per_source


def _round_robin(per_source: list[list[Tile]], count: int) -> list[Tile]:
    """``count`` tiles taken from the sources in turn, so every source contributes as evenly as its tiles allow."""
    taken: list[Tile] = []
    depth = 0
    while len(taken) < count:
        layer = [tiles[depth] for tiles in per_source if depth < len(tiles)]
        if not layer:
            total = sum(map(len, per_source))
            raise ConfigError(f"the pool has {total} distinct locations; the spec needs {count} real videos")
        taken += layer[: count - len(taken)]
        depth += 1
    return taken


def _interleave(counts: dict[str, int]) -> list[str]:
    """Split names in an order that spreads each split evenly along the sequence."""
    keyed = [((k + 0.5) / n, split) for split, n in counts.items() for k in range(n)]
    return [split for _, split in sorted(keyed, key=lambda item: item[0])]


def _crop(image: Image.Image, tile: Tile, size: int, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Frames of one video: jittered square crops inside a tile, resized to ``size``, as float32 in ``[0, 1]``."""
    side = tile.side * rng.uniform(0.75, 0.9)
    free = tile.side - side
    cy = tile.y + tile.side / 2 + rng.uniform(-0.3, 0.3) * free
    cx = tile.x + tile.side / 2 + rng.uniform(-0.3, 0.3) * free
    out = []
    for _ in range(frames):
        s = min(side * float(np.exp(rng.normal(0.0, 0.03))), tile.side)
        y = float(np.clip(cy + rng.normal(0.0, 0.02 * side) - s / 2, tile.y, tile.y + tile.side - s))
        x = float(np.clip(cx + rng.normal(0.0, 0.02 * side) - s / 2, tile.x, tile.x + tile.side - s))
        crop = image.transform((size, size), Image.Transform.EXTENT, (x, y, x + s, y + s), Image.Resampling.BICUBIC)
        out.append(np.asarray(crop, np.float32) / 255.0)
    return out


def _family_order(families: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` family names spread evenly over ``families`` (the first ones get the remainder), shuffled."""
    names = [families[k % len(families)] for k in range(count)]
    return [names[k] for k in rng.permutation(count)]


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _write(spec: OfflineSpec, out: Path, progress: bool) -> None:
    """Generate every split of ``spec`` into ``out``, with its ``videos.json``."""
    severity = spec.resolved()["severity"]
    images = load_pool(spec.sources)
    rng = np.random.default_rng(spec.seed)
    slots = _interleave(spec.videos)
    tiles = _round_robin(_tiles(images, rng), len(slots))
    families = {split: iter(_family_order(spec.families, n, rng)) for split, n in spec.videos.items()}
    numbers = dict.fromkeys(spec.videos, 0)
    manifest: dict[str, dict[str, Any]] = {}
    bar = tqdm(
        total=2 * len(slots) * spec.frames,
        desc=f"generating {out.name}",
        unit="img",
        disable=None if progress else True,
    )
    for index, (split, tile) in enumerate(zip(slots, tiles, strict=True)):
        number, family = numbers[split], next(families[split])
        numbers[split] += 1
        real = f"{split}/real/{split}-real-{number:04d}"
        fake = f"{split}/fake/{family}/{split}-fake-{number:04d}"
        box = {"source": tile.source, "tile": [tile.y, tile.x, tile.side]}
        manifest[real] = {**box, "label": 0, "family": None, "twin": fake}
        manifest[fake] = {**box, "label": 1, "family": family, "twin": real}
        crops = _crop(images[tile.source], tile, spec.size, spec.frames, np.random.default_rng([spec.seed, index]))
        for frame, crop in enumerate(crops):
            forged = FAMILIES[family](crop, np.random.default_rng([spec.seed, index, frame, 1]), severity[family])
            for folder, pixels in ((real, crop), (fake, forged)):
                image = _uint8(pixels)
                if spec.degrade:  # the same draw for both twins
                    image = degrade(image, np.random.default_rng([spec.seed, index, frame, 2]))
                path = out / folder / f"{frame:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
            bar.update(2)
    bar.close()
    (out / "videos.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def generate(spec: OfflineSpec, out: Path, progress: bool = True) -> Path:
    """Generate the data set of ``spec`` into ``out`` unless ``out`` already holds that generation, complete.

    Safe under concurrency (two launches, the tasks of a Slurm array): generation runs under a file lock beside
    ``out`` and re-checks the marker once it holds it, into a temporary folder of its own process that is renamed
    into place at the end, so neither an interrupted nor a concurrent run leaves a folder that looks complete. The
    marker ``spec.json`` records the spec, the number of files and their content hash (:func:`verify`).

    Args:
        spec: what to generate.
        out: destination folder.
        progress: show a progress bar.

    Returns:
        ``out``.
    """
    out = Path(out)
    record = {"generator": GENERATOR_VERSION, "spec": spec.resolved()}
    if _complete(out, record):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.with_name(f".{out.name}.lock")):
        if _complete(out, record):  # made by another process while this one waited
            return out
        if out.exists() and not (out / MARKER).is_file() and any(out.iterdir()):
            raise ForeignFolder(
                f"{out} exists and was not made by the offline generator; remove it or pick another root"
            )
        partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _write(spec, partial, progress)
        files, digest = contents(partial)
        marker = {**record, "files": files, "sha256": digest}
        (partial / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    return out


MARKER = "spec.json"
"""The file that marks a generated folder complete, written last."""


def contents(folder: Path) -> tuple[int, str]:
    """The number of files under ``folder`` (the marker aside) and a SHA-256 over their relative paths and bytes."""
    digest = hashlib.sha256()
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MARKER)
    for path in paths:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return len(paths), digest.hexdigest()


def _complete(out: Path, record: dict[str, Any]) -> bool:
    """Whether ``out``'s marker records ``record`` and as many files as ``out`` holds (contents: :func:`verify`)."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    written = json.loads(marker.read_text())
    if {k: written.get(k) for k in record} != record or "files" not in written:
        return False  # another spec, or a marker from before file counts were recorded
    return sum(1 for p in out.rglob("*") if p.is_file()) - 1 == written["files"]


def verify(out: Path) -> list[str]:
    """Problems of a generated folder: no marker, or files that differ in number or content from what it records."""
    marker = out / MARKER
    if not marker.is_file():
        return [f"{out}: no {MARKER}, so not a complete generation"]
    written = json.loads(marker.read_text())
    if "files" not in written:
        return [f"{out}: {MARKER} records no file count or hash (an older generation); delete the folder to redo it"]
    files, digest = contents(out)
    if files != written["files"]:
        return [f"{out}: {files} files, but the generation wrote {written['files']}; delete the folder to redo it"]
    if digest != written["sha256"]:
        return [f"{out}: files changed since generation (content hash differs); delete the folder to redo it"]
    return []
