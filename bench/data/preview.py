"""A grid of sample images, one labelled row per group, for a person to look at."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image


def preview(groups: dict[str, list[str | Path]], out: Path, per_group: int = 6) -> Path:
    """Write a PNG grid with one row per group (e.g. ``real``, ``blend``) of up to ``per_group`` images.

    Args:
        groups: row label -> image files (the first ``per_group`` are shown).
        out: PNG file to write (parent folders are created).
        per_group: images per row.

    Returns:
        ``out``.
    """
    if not groups:
        raise ValueError("preview needs at least one group of images")
    out = Path(out)
    rows, cols = len(groups), max(1, per_group)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, (label, paths) in zip(axes, groups.items(), strict=True):
        for col, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(paths):
                ax.imshow(Image.open(paths[col]).convert("RGB"))
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
