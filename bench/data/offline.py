"""The offline benchmark: real and forged "videos" cut from images that ship inside scikit-image's wheel.

A video is one location of a source image; its frames are crops of that location with a small jitter of position
and scale, so frames of a video are correlated like video frames. Fakes get one forgery family of
:mod:`bench.data.forgeries` applied to each final crop. Locations are tiles of the sources, each used by one video
only, so real and fake videos and the splits of a card never share image content. Two pools of sources keep the
training and the cross-dataset cards apart (the LFW faces are split by face).

Layout: ``out/<split>/real/<video>/<frame>.png``, ``out/<split>/fake/<family>/<video>/<frame>.png`` and
``out/spec.json``. The same spec always gives byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.data.forgeries import DEFAULT_SEVERITY, FAMILIES

GENERATOR_VERSION = 1
TILE = 128
"""Side in source pixels of the tiles that videos are cut from."""
MAX_SIDE = 640
"""Larger sources are shrunk to this longest side first."""
FACE_SIDE = 100
"""LFW faces (25 px) are upscaled to this side; each face is one tile."""
MIN_STD = 0.03
"""Tiles whose grey values vary less than this (flat background) are skipped."""

POOLS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "grass"),
    "test": ("camera", "coins", "gravel", "moon", "retina", "immunohistochemistry"),
}
"""Natural-image sources of each pool (``horse`` is left out: it is a binary silhouette, not a photograph)."""


@dataclass
class OfflineSpec:
    """What to generate.

    Attributes:
        sources: ``train`` or ``test``: which pool of source images.
        families: forgery families of the fakes.
        videos: split name -> number of real videos; as many fake videos, spread evenly over ``families``.
        frames: frames per video.
        size: crop side in pixels.
        seed: seeds locations, jitter and forgeries.
        severity: per-family override of :data:`bench.data.forgeries.DEFAULT_SEVERITY`.
    """

    sources: str
    families: list[str]
    videos: dict[str, int]
    frames: int = 4
    size: int = 112
    seed: int = 0
    severity: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sources not in POOLS:
            raise ValueError(f"sources must be one of {sorted(POOLS)}, got {self.sources!r}")
        unknown = [f for f in [*self.families, *self.severity] if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown or no forgery families {unknown}; valid: {sorted(FAMILIES)}")
        extra = sorted(set(self.severity) - set(self.families))
        if extra:
            raise ValueError(f"severity given for families {extra} that are not in families {self.families}")
        if any(not 0.0 <= s <= 1.0 for s in self.severity.values()):
            raise ValueError(f"severities must lie in [0, 1], got {self.severity}")
        if not self.videos or any(n < 1 for n in self.videos.values()) or self.frames < 1 or self.size < 16:
            raise ValueError(f"need videos >= 1 per split, frames >= 1 and size >= 16, got {self}")

    def resolved(self) -> dict[str, Any]:
        """The spec with every family's severity filled in: what ``spec.json`` records."""
        record = asdict(self)
        record["severity"] = {f: float(self.severity.get(f, DEFAULT_SEVERITY[f])) for f in self.families}
        return record


@dataclass(frozen=True)
class _Tile:
    """A square region of a source image that one video is cut from."""

    source: int
    y: float
    x: float
    side: float


def _rgb(image: np.ndarray) -> Image.Image:
    """A uint8 RGB PIL image from a grey or colour, uint8, bool or float array."""
    if image.dtype != np.uint8:
        image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return Image.fromarray(image[..., :3])


def _load_pool(pool: str) -> list[Image.Image]:
    """The pool's natural images (shrunk to :data:`MAX_SIDE`) followed by its half of the LFW faces (upscaled)."""
    import skimage.data

    images = []
    for name in POOLS[pool]:
        image = _rgb(getattr(skimage.data, name)())
        factor = MAX_SIDE / max(image.size)
        if factor < 1.0:
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
        images.append(image)
    faces = skimage.data.lfw_subset()[:100]
    half = faces[:50] if pool == "train" else faces[50:]
    images += [_rgb(face).resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC) for face in half]
    return images


def _tiles(images: list[Image.Image], n_natural: int, rng: np.random.Generator) -> list[list[_Tile]]:
    """Shuffled non-overlapping tiles per natural source, flat ones skipped; all faces form one more source."""
    per_source = []
    for index, image in enumerate(images[:n_natural]):
        grey = np.asarray(image.convert("L"), np.float32) / 255.0
        ny, nx = image.height // TILE, image.width // TILE
        y0, x0 = (image.height - ny * TILE) / 2, (image.width - nx * TILE) / 2
        tiles = [
            _Tile(index, y0 + i * TILE, x0 + j * TILE, TILE)
            for i in range(ny)
            for j in range(nx)
            if grey[int(y0) + i * TILE : int(y0) + (i + 1) * TILE, int(x0) + j * TILE : int(x0) + (j + 1) * TILE].std()
            >= MIN_STD
        ]
        per_source.append([tiles[k] for k in rng.permutation(len(tiles))])
    faces = [_Tile(index, 0.0, 0.0, FACE_SIDE) for index in range(n_natural, len(images))]
    per_source.append([faces[k] for k in rng.permutation(len(faces))])
    return per_source


def _round_robin(per_source: list[list[_Tile]], count: int) -> list[_Tile]:
    """``count`` tiles taken from the sources in turn, so every source contributes as evenly as its tiles allow."""
    taken: list[_Tile] = []
    depth = 0
    while len(taken) < count:
        layer = [tiles[depth] for tiles in per_source if depth < len(tiles)]
        if not layer:
            total = sum(map(len, per_source))
            raise ValueError(f"the pool has {total} distinct locations; the spec needs {count} videos")
        taken += layer[: count - len(taken)]
        depth += 1
    return taken


def _interleave(counts: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """Slots ``(split, label)`` in an order that spreads each slot evenly along the sequence."""
    keyed = [((k + 0.5) / n, slot) for slot, n in counts.items() for k in range(n)]
    return [slot for _, slot in sorted(keyed, key=lambda item: item[0])]


def _crop(image: Image.Image, tile: _Tile, size: int, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Frames of one video: jittered square crops of a tile, resized to ``size``, as float32 arrays in ``[0, 1]``."""
    side = tile.side * rng.uniform(0.75, 0.9)
    free = tile.side - side
    cy, cx = (
        tile.y + tile.side / 2 + rng.uniform(-0.3, 0.3) * free,
        tile.x + tile.side / 2 + rng.uniform(-0.3, 0.3) * free,
    )
    out = []
    for _ in range(frames):
        s = min(side * float(np.exp(rng.normal(0.0, 0.03))), image.width, image.height)
        y = float(np.clip(cy + rng.normal(0.0, 0.02 * side) - s / 2, 0.0, image.height - s))
        x = float(np.clip(cx + rng.normal(0.0, 0.02 * side) - s / 2, 0.0, image.width - s))
        crop = image.transform((size, size), Image.Transform.EXTENT, (x, y, x + s, y + s), Image.Resampling.BICUBIC)
        out.append(np.asarray(crop, np.float32) / 255.0)
    return out


def _save(image: np.ndarray, path: Path) -> None:
    """Write a float image in ``[0, 1]`` as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)).save(path)


def _family_order(families: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` family names spread evenly over ``families`` (the first ones get the remainder), shuffled."""
    names = [families[k % len(families)] for k in range(count)]
    return [names[k] for k in rng.permutation(count)]


def _write(spec: OfflineSpec, out: Path, progress: bool) -> None:
    """Generate every split of ``spec`` into ``out``."""
    severity = spec.resolved()["severity"]
    images = _load_pool(spec.sources)
    rng = np.random.default_rng(spec.seed)
    per_source = _tiles(images, len(POOLS[spec.sources]), rng)
    counts = {(split, label): n for split, n in spec.videos.items() for label in ("real", "fake")}
    slots = _interleave(counts)
    tiles = _round_robin(per_source, len(slots))
    families = {split: iter(_family_order(spec.families, n, rng)) for split, n in spec.videos.items()}
    numbers = dict.fromkeys(counts, 0)
    bar = tqdm(
        total=len(slots) * spec.frames, desc=f"generating {out.name}", unit="img", disable=None if progress else True
    )
    for index, (slot, tile) in enumerate(zip(slots, tiles, strict=True)):
        split, label = slot
        video = f"{split}-{label}-{numbers[slot]:04d}"
        numbers[slot] += 1
        video_rng = np.random.default_rng([spec.seed, index])
        crops = _crop(images[tile.source], tile, spec.size, spec.frames, video_rng)
        family = None if label == "real" else next(families[split])
        folder = out / split / label / (family or "") / video
        for frame, crop in enumerate(crops):
            if family is not None:
                crop = FAMILIES[family](crop, np.random.default_rng([spec.seed, index, frame, 1]), severity[family])
            _save(crop, folder / f"{frame:02d}.png")
        bar.update(spec.frames)
    bar.close()


def generate(spec: OfflineSpec, out: Path, progress: bool = True) -> Path:
    """Generate the data set of ``spec`` into ``out`` unless ``out/spec.json`` already records the same spec.

    The data is written to a temporary sibling folder that is renamed into place at the end, so an interrupted run
    never leaves a folder that looks complete.

    Args:
        spec: what to generate.
        out: destination folder.
        progress: show a progress bar (on a terminal).

    Returns:
        ``out``.
    """
    out = Path(out)
    record = {"generator": GENERATOR_VERSION, "spec": spec.resolved()}
    marker = out / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return out
    if out.exists() and not marker.is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and was not made by the offline generator; remove it or pick another root")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _write(spec, partial, progress)
    (partial / "spec.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
