"""A grid of sample images, one labelled row per group, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from bench.data.augment import Augment
from bench.data.loader import to_rgb
from bench.data.synthesis import synthesize

Picture = str | Path | np.ndarray


def drawn(
    groups: dict[str, list[str | Path]], augment: Augment, synthesis: str = "none", per_group: int = 6
) -> tuple[dict[str, list[Picture]], dict[str, list[str]]]:
    """The first ``per_group`` frames of each group as training draws them (draw ``i`` for the ``i``-th): with a
    synthesis, the real frames and the fakes made from them; then augmented. Each comes with a caption naming what
    was applied."""
    if synthesis != "none":
        groups = {"real": groups.get("real", []), synthesis: groups.get("real", [])}
    images: dict[str, list[Picture]] = {}
    captions: dict[str, list[str]] = {}
    for label, paths in groups.items():
        images[label], captions[label] = [], []
        for i, path in enumerate(paths[:per_group]):
            with Image.open(path) as img:
                pixels = np.asarray(to_rgb(img))
            made = label == synthesis
            pixels, applied = augment.apply(synthesize(pixels, i) if made else pixels, i)
            images[label].append(pixels)
            captions[label].append("\n".join([synthesis] * made + applied) or "(none)")
    return images, captions


def preview(
    groups: dict[str, list[Picture]],
    out: Path,
    per_group: int = 6,
    captions: dict[str, list[str]] | None = None,
) -> Path:
    """Write a PNG grid with one row per group (e.g. ``real``, ``blend``) of up to ``per_group`` images.

    Args:
        groups: row label -> image files or 8-bit RGB arrays (the first ``per_group`` are shown).
        out: PNG file to write (parent folders are created).
        per_group: images per row.
        captions: row label -> a caption under each image (e.g. the transforms that applied).

    Returns:
        ``out``.
    """
    if not groups:
        raise ValueError("preview needs at least one group of images")
    out = Path(out)
    rows, cols = len(groups), max(1, per_group)
    fig = Figure(figsize=(1.6 * cols, (2.3 if captions else 1.6) * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, (label, pictures) in zip(axes, groups.items(), strict=True):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(pictures):
                picture = pictures[col]
                ax.imshow(picture if isinstance(picture, np.ndarray) else Image.open(picture).convert("RGB"))
                if captions and col < len(captions.get(label, [])):
                    ax.set_xlabel(captions[label][col], fontsize=6)
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
