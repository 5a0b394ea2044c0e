"""Training fakes made on the fly from real frames (``data.synthesis``).

``sbi``: self-blended images (Shiohara and Yamasaki, CVPR 2022), the field's strongest data-side baseline. Training then
sees the training card's real frames only: each twice, once as itself (real) and once as the source of a fake of the
forgery method ``sbi`` (so methods that route see one forgery method). The fake is the offline benchmark's ``blend``
family (:func:`bench.data.forgeries.blend`, the same code): a slightly shifted, scaled, recoloured and sharpened or
blurred copy of the frame pasted onto itself inside a soft ellipse at a random place and size. The published recipe
pastes inside a landmark hull with a random blend ratio; the ellipse stands in for the hull, so that no landmarks are
needed. A draw depends on the sample's augmentation seed only, so resuming stays exact; the result is augmented like any
training frame. Validation and testing use the cards' own real and fake frames.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bench.data.forgeries import DEFAULT_SEVERITY, blend, elliptical_mask
from bench.data.frames import REAL, Frame
from bench.errors import DataError

SYNTHESES = ("none", "sbi")
SALT = 0x5B1  # keeps the blend's draws apart from the augmentation's, which come from the same seed


def training_forgeries(card_forgeries: list[str], synthesis: str) -> list[str]:
    """The forgery methods training sees: the card's, or the synthesis alone."""
    return card_forgeries if synthesis == "none" else [synthesis]


def synthetic_split(frames: list[Frame], synthesis: str) -> list[Frame]:
    """The training frames of ``synthesis``: the real frames of ``frames`` as themselves and again as the sources of
    fakes of forgery method ``synthesis`` (the card's own fakes are left out)."""
    reals = [f for f in frames if f.forgery == REAL]
    if not reals:
        raise DataError(f"data.synthesis={synthesis} trains on real frames, and the training split has none")
    return reals + [dataclasses.replace(f, label=1, forgery=synthesis, video=f"{f.video}#{synthesis}") for f in reals]


def synthesize(pixels: np.ndarray, seed: int) -> np.ndarray:
    """A self-blended fake of an 8-bit RGB frame, drawn from ``seed``; :func:`region` rebuilds where it differs."""
    image = pixels.astype(np.float32) / np.float32(255)
    fake = blend(image, np.random.default_rng([seed, SALT]), DEFAULT_SEVERITY["blend"])
    return np.round(fake * 255).astype(np.uint8)


def region(shape: tuple[int, int], seed: int) -> np.ndarray:
    """The soft mask inside which :func:`synthesize` with ``seed`` changed a frame of ``shape`` (``H x W``)."""
    return elliptical_mask(shape, np.random.default_rng([seed, SALT]))
