"""What fine-tuning did to the pretrained weights: semantic drift, spectrum change, diversity of subspaces.

MASM's claim is about semantics: its semantic subspace should drift least at equal or better AUC. These functions
measure that for any method, from a weight before and after training (matrices; conv kernels are flattened).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import subspace_angles

from bench.metric_keys import LayerKey

LAYER_TABLE = "layers.csv"


def as_matrix(weight: torch.Tensor) -> np.ndarray:
    """A weight as an out x in float64 matrix (conv kernels reshaped to out x in*kh*kw)."""
    return weight.detach().reshape(weight.shape[0], -1).to(torch.float64).cpu().numpy()


def top_k(p: int) -> int:
    """Default size of the "semantic" subspace compared: the top eighth of the spectrum (at least one)."""
    return max(1, p // 8)


def pairwise_angles(bases: list[np.ndarray]) -> np.ndarray:
    """Smallest principal angle (degrees) between every pair of subspaces given by column bases."""
    n = len(bases)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = np.degrees(subspace_angles(bases[i], bases[j]).min())
    return out


def weight_report(
    named: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-layer semantic drift and spectrum change for ``{layer: (before, after)}``, plus the spectra for plots.

    Drift is the largest principal angle (degrees) between the top-k left singular subspaces of the two weights
    (k = :func:`top_k`); spectrum change is ``||s(after) - s(before)|| / ||s(before)||``.

    Returns:
        Scalars (``drift/<layer>``, ``spectrum/<layer>`` and their means ``drift_mean``, ``spectrum_mean``) and
        arrays (``<layer>/before``, ``<layer>/after`` singular values).
    """
    scalars: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, (w0, w1) in named.items():
        u0, s0, _ = np.linalg.svd(as_matrix(w0), full_matrices=False)
        u1, s1, _ = np.linalg.svd(as_matrix(w1), full_matrices=False)
        k = top_k(len(s0))
        scalars[LayerKey("drift", name).key] = float(np.degrees(subspace_angles(u0[:, :k], u1[:, :k]).max()))
        scalars[LayerKey("spectrum", name).key] = float(np.linalg.norm(s1 - s0) / np.linalg.norm(s0))
        arrays[f"{name}/before"], arrays[f"{name}/after"] = s0, s1
    if named:
        for quantity in ("drift", "spectrum"):
            scalars[f"{quantity}_mean"] = float(np.mean([scalars[LayerKey(quantity, n).key] for n in named]))
    return scalars, arrays


def write_layer_table(scalars: Mapping[str, float], path: Path) -> dict[str, float]:
    """Write the per-layer values of ``scalars`` (keys ``<quantity>/<layer>``, e.g. ``drift/blocks.0.attn.qkv``)
    to ``path`` as a CSV table, a row per layer and a column per quantity (nothing without any); return the other
    values, the summaries (e.g. ``drift_mean``)."""
    table: dict[str, dict[str, float]] = {}
    summaries = {}
    for key, value in scalars.items():
        if (parsed := LayerKey.parse(key)) is not None:
            table.setdefault(parsed.layer, {})[parsed.quantity] = value
        else:
            summaries[key] = value
    if table:
        quantities = list(dict.fromkeys(q for row in table.values() for q in row))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["layer", *quantities])
            writer.writerows([layer, *(row.get(q, "") for q in quantities)] for layer, row in table.items())
    return summaries
