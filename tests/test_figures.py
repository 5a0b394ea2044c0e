"""Tests of bench.figures: every figure is drawn from plain arrays and frames and written as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import figures

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG


def _spectra(layers: int) -> dict[str, np.ndarray]:
    names = [f"blocks.{i}.attn.qkv.q" for i in range(layers)]
    return {
        f"{n}/{w}": np.geomspace(5, 0.01, 12) * (1.1 if w == "after" else 1) for n in names for w in ("before", "after")
    }


def test_spectrum_layers_are_first_middle_and_last() -> None:
    assert figures.spectrum_layers(_spectra(5)) == ["blocks.0.attn.qkv.q", "blocks.2.attn.qkv.q", "blocks.4.attn.qkv.q"]
    assert figures.spectrum_layers(_spectra(2)) == ["blocks.0.attn.qkv.q", "blocks.1.attn.qkv.q"]
    assert figures.spectrum_layers(_spectra(1)) == ["blocks.0.attn.qkv.q"]


def test_mask_heatmap_one_panel_per_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    histories = {
        "masm": {"masks": rng.random((4, 6, 4)) > 0.3, "layers": np.array([f"l{i}" for i in range(6)]), "every": 20},
        "masm/gradsnr-mask": {"masks": rng.random((2, 3, 1)) > 0.5, "layers": np.array(["a", "b", "c"]), "every": 5},
    }
    assert _is_png(figures.mask_heatmap(histories, tmp_path / "masks.png"))


def test_spectra_plot_with_fewer_layers_than_panels(tmp_path: Path) -> None:
    assert _is_png(figures.spectra_plot({"masm": _spectra(6), "effort": _spectra(2)}, tmp_path / "spectra.png"))


def test_drift_scatter_and_ablation_bars_accept_missing_spreads(tmp_path: Path) -> None:
    points = pd.DataFrame(
        {
            "label": ["masm", "full-ft"],
            "drift_mean": [2.0, 30.0],
            "drift_std": [0.5, np.nan],
            "auc_mean": [0.9, 0.8],
            "auc_std": [0.01, np.nan],
        }
    )
    assert _is_png(figures.drift_scatter(points, tmp_path / "drift.png"))
    bars = pd.DataFrame(
        {"label": ["masm", "masm/no-mask"], "mean": [0.9, 0.8], "lo": [0.85, np.nan], "hi": [0.95, np.nan]}
    )
    assert _is_png(figures.ablation_bars({"masm": bars}, tmp_path / "bars.png"))


@pytest.mark.parametrize("sets", [1, 4])
def test_roc_curves_one_panel_per_test_set(tmp_path: Path, sets: int) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 50)
    frame = pd.DataFrame({"label": y, "score": y + rng.normal(0, 1, 100)})
    scores = {f"set-{i}": {"masm": frame, "full-ft": frame.assign(score=rng.random(100))} for i in range(sets)}
    assert _is_png(figures.roc_curves(scores, tmp_path / "roc.png"))
