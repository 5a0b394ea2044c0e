"""Test-time perturbations for robustness tables: JPEG, Gaussian blur, Gaussian noise and resizing, five levels each.

Levels follow DeeperForensics-1.0's distortions, which DeepfakeBench and most robustness tables of the field reuse:
blur kernels 7-21 px (sigma = kernel / 6) and white-noise variances 0.001-0.05 (intensities in [0, 1]). Its
"JPEG" is in fact pixelation (down- and up-sampling by 2-6); that is ``resize`` here, and ``jpeg`` is a real JPEG
round trip at qualities 90-10. Every perturbation is deterministic: noise is seeded by the image's own bytes.
:func:`degrade` chains milder ones, with drawn parameters, for the offline benchmark's degradation-shift card.
"""

from __future__ import annotations

import io
import re
import zlib
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFilter

LEVELS: dict[str, tuple[float, ...]] = {
    "jpeg": (90, 70, 50, 30, 10),  # JPEG quality
    "blur": (7, 9, 13, 17, 21),  # Gaussian kernel size; sigma = size / 6
    "noise": (0.001, 0.002, 0.005, 0.01, 0.05),  # variance of white Gaussian noise on [0, 1] intensities
    "resize": (2, 3, 4, 5, 6),  # down-sampling factor, then back up (bilinear)
}

ImageT = TypeVar("ImageT", Image.Image, np.ndarray)

_SPEC = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<first>\d+)(?:\.\.(?P<last>\d+))?)?$")


def _apply(image: Image.Image, kind: str, value: float, rng: np.random.Generator | None = None) -> Image.Image:
    """One perturbation at a raw value (quality, kernel, variance or factor); noise is drawn from ``rng`` when given,
    else seeded by the image's bytes."""
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(value))
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=value / 6))
    if kind == "noise":
        array = np.asarray(image, dtype=np.float32) / 255
        rng = rng or np.random.default_rng(zlib.crc32(array.tobytes()))
        noisy = array + rng.normal(0.0, np.sqrt(value), array.shape).astype(np.float32)
        return Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))
    small = (max(1, round(image.width / value)), max(1, round(image.height / value)))
    return image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-frame post-processing as distributed videos get it (DFDC-like), drawn from ``rng``.

    With probability 0.5 a down-and-up resize by a factor in 1.25-2; then one of a mild blur (kernel 3-6 px), mild
    noise (variance 2e-4 to 1e-3) or nothing, each with probability 1/3; last a JPEG round trip at quality 50-90.

    Args:
        image: an ``HxWx3`` uint8 array.
        rng: the generator; the same state gives the same chain and parameters.

    Returns:
        The processed uint8 array, same size.
    """
    pil = Image.fromarray(image)
    if rng.uniform() < 0.5:
        pil = _apply(pil, "resize", rng.uniform(1.25, 2.0))
    kind = int(rng.integers(3))
    if kind == 0:
        pil = _apply(pil, "blur", rng.uniform(3.0, 6.0))
    elif kind == 1:  # drawn from rng, not seeded by the pixels: twins get the same noise
        pil = _apply(pil, "noise", rng.uniform(2e-4, 1e-3), rng)
    return np.asarray(_apply(pil, "jpeg", int(rng.integers(50, 91))))


def perturb(image: ImageT, kind: str, level: int) -> ImageT:
    """``image`` (an RGB PIL image or ``HxWx3`` uint8 array) perturbed by ``kind`` at ``level`` (1 mild .. 5 strong).

    Returns:
        The same type as ``image``, same size.
    """
    if kind not in LEVELS:
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(LEVELS)}")
    if not 1 <= level <= len(LEVELS[kind]):
        raise ValueError(f"perturbation {kind}: level {level} is not in 1..{len(LEVELS[kind])}")
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    out = _apply(pil, kind, LEVELS[kind][level - 1])
    return np.asarray(out) if isinstance(image, np.ndarray) else out


def parse_perturbations(specs: list[str]) -> list[tuple[str, int]]:
    """``["jpeg:1..5", "blur:3", "noise"]`` -> ``[("jpeg", 1), ..., ("blur", 3), ("noise", 1), ...]`` (a bare kind is
    every level); unknown kinds, bad levels and duplicates are errors."""
    out: list[tuple[str, int]] = []
    for spec in specs:
        match = _SPEC.match(spec.strip())
        if not match or match["kind"] not in LEVELS:
            raise ValueError(
                f"perturbation {spec!r}: expected KIND, KIND:LEVEL or KIND:FIRST..LAST with KIND one of "
                f"{', '.join(LEVELS)}"
            )
        kind, count = match["kind"], len(LEVELS[match["kind"]])
        first = int(match["first"] or 1)
        last = int(match["last"] or (match["first"] or count))
        if not 1 <= first <= last <= count:
            raise ValueError(f"perturbation {spec!r}: levels must lie in 1..{count}")
        for level in range(first, last + 1):
            if (kind, level) in out:
                raise ValueError(f"perturbation {kind}:{level} is listed twice")
            out.append((kind, level))
    return out
