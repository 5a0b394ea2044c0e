"""The report's figures: mask history, spectra, semantic drift against AUC, ablation bars and ROC curves.

Every function takes plain arrays and frames (no MLflow), draws on its own matplotlib ``Figure`` (no pyplot state)
and writes one PNG, returning its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

SPECTRUM_LAYERS = 3  # first, middle and last target layer


def save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as a PNG to ``out`` (parents created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight", format="png")
    return out


def _mask_panel(ax: Axes, label: str, history: Mapping[str, np.ndarray]) -> None:
    """One label's masks as layers (rows) x (subspace, refresh) columns; frozen cells dark."""
    import seaborn as sns

    masks = np.asarray(history["masks"], dtype=float)  # (refreshes, layers, K)
    refreshes, layers, k = masks.shape
    grid = masks.transpose(1, 2, 0).reshape(layers, k * refreshes)
    colors = ListedColormap(["#222222", "#e8e8e8"])  # frozen, updated
    sns.heatmap(grid, ax=ax, cmap=colors, vmin=0, vmax=1, cbar=False, linewidths=0.3, linecolor="white")
    ax.set_yticks(np.arange(layers) + 0.5, list(history["layers"]), rotation=0)
    ax.vlines(np.arange(1, k) * refreshes, 0, layers, colors="tab:red", linewidth=1.5)
    ax.set_xticks((np.arange(k) + 0.5) * refreshes, [f"subspace {i}" for i in range(k)], rotation=0)
    every = int(np.asarray(history["every"]))
    ax.set(title=f"{label}: {refreshes} refreshes every {every} steps (dark = frozen)", xlabel="", ylabel="layer")
    ax.tick_params(axis="y", labelsize=6)


def mask_heatmap(histories: Mapping[str, Mapping[str, np.ndarray]], out: Path) -> Path:
    """The selective layer mask of each label, one panel per label stacked vertically.

    Args:
        histories: per label, the contents of ``mask_history.npz``: ``masks`` (refreshes x layers x K, bool),
            ``layers`` (names) and ``every`` (steps between refreshes).
        out: the PNG to write.
    """
    heights = [max(2, 0.18 * len(h["layers"])) + 1 for h in histories.values()]
    fig = Figure(figsize=(10, sum(heights)))
    axes = fig.subplots(len(histories), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (label, history) in zip(axes, histories.items(), strict=True):
        _mask_panel(ax, label, history)
    fig.tight_layout()
    return save(fig, out)


def spectrum_layers(spectra: Mapping[str, np.ndarray], count: int = SPECTRUM_LAYERS) -> list[str]:
    """Evenly spread layers (first, middle, last for three) of a ``spectra.npz`` mapping, in its order."""
    layers = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in spectra))
    picks = np.unique(np.linspace(0, len(layers) - 1, min(count, len(layers))).round().astype(int))
    return [layers[i] for i in picks]


def spectra_plot(spectra: Mapping[str, Mapping[str, np.ndarray]], out: Path) -> Path:
    """Singular values before and after training (log scale) of a few layers (columns) per label (rows).

    Args:
        spectra: per label, the contents of ``spectra.npz`` (``<layer>/before``, ``<layer>/after``).
        out: the PNG to write.
    """
    fig = Figure(figsize=(4 * SPECTRUM_LAYERS, 3 * len(spectra)))
    axes = fig.subplots(len(spectra), SPECTRUM_LAYERS, squeeze=False)
    for row, (label, arrays) in zip(axes, spectra.items(), strict=True):
        layers = spectrum_layers(arrays)
        for ax, layer in zip(row, layers, strict=False):
            for when, style in (("before", "-"), ("after", "--")):
                ax.semilogy(arrays[f"{layer}/{when}"], style, label=when)
            ax.set(title=f"{label}\n{layer}", xlabel="index", ylabel="singular value")
            ax.legend(fontsize=8)
        for ax in row[len(layers) :]:
            ax.set_visible(False)
    fig.tight_layout()
    return save(fig, out)


def drift_scatter(points: pd.DataFrame, out: Path) -> Path:
    """Semantic drift (x) against cross-dataset AUC (y), one labelled point per label with ± std error bars.

    Args:
        points: columns ``label, drift_mean, drift_std, auc_mean, auc_std`` (a NaN std draws no bar).
        out: the PNG to write.
    """
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    std = points[["drift_std", "auc_std"]].fillna(0.0)
    ax.errorbar(
        points["drift_mean"], points["auc_mean"], xerr=std["drift_std"], yerr=std["auc_std"], fmt="o", capsize=3
    )
    for row in points.itertuples():
        ax.annotate(row.label, (row.drift_mean, row.auc_mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(
        xlabel="semantic drift: mean largest principal angle of the top subspace (degrees)",
        ylabel="cross-dataset AUC (avg over test sets)",
        title="Semantic drift vs held-out AUC (mean ± std over seeds)",
    )
    ax.grid(alpha=0.3)
    return save(fig, out)


def _bars_panel(ax: Axes, reference: str, bars: pd.DataFrame) -> None:
    """One reference's bars, its own orange with a dashed line at its mean."""
    y = np.arange(len(bars))
    err = np.vstack([bars["mean"] - bars["lo"], bars["hi"] - bars["mean"]])
    colors = ["tab:orange" if label == reference else "tab:blue" for label in bars["label"]]
    ax.barh(y, bars["mean"], xerr=np.nan_to_num(err), color=colors, capsize=3)
    ax.set_yticks(y, bars["label"])
    ax.invert_yaxis()
    if (bars["label"] == reference).any():
        ax.axvline(float(bars.loc[bars["label"] == reference, "mean"].iloc[0]), color="k", linestyle="--")
    ax.set_xlim(left=max(0.0, float(np.nanmin(bars[["mean", "lo"]].to_numpy())) - 0.05))
    ax.set(xlabel="cross-dataset AUC (avg over test sets), 95% CI over seeds", title=f"Ablations of {reference}")


def ablation_bars(panels: Mapping[str, pd.DataFrame], out: Path) -> Path:
    """Per reference method, a panel of horizontal bars: each label's mean with its confidence interval, a dashed
    line at the reference's mean; panels stacked vertically.

    Args:
        panels: per reference, columns ``label, mean, lo, hi`` (NaN bounds draw no interval).
        out: the PNG to write.
    """
    heights = [0.45 * len(bars) + 1.5 for bars in panels.values()]
    fig = Figure(figsize=(7, sum(heights)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (reference, bars) in zip(axes, panels.items(), strict=True):
        _bars_panel(ax, reference, bars)
    fig.tight_layout()
    return save(fig, out)


def roc_curves(scores: Mapping[str, Mapping[str, pd.DataFrame]], out: Path) -> Path:
    """ROC curves, one panel per test set and one curve per label.

    Args:
        scores: per test set, per label, a frame with ``label`` (0/1) and ``score`` columns.
        out: the PNG to write.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    columns = min(3, len(scores))
    rows = -(-len(scores) // columns)
    fig = Figure(figsize=(4.5 * columns, 4.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (test_set, curves) in zip(axes, scores.items(), strict=False):
        for label, frame in curves.items():
            fpr, tpr, _ = roc_curve(frame["label"], frame["score"])
            ax.plot(fpr, tpr, label=f"{label} ({roc_auc_score(frame['label'], frame['score']):.3f})")
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set(title=test_set, xlabel="false positive rate", ylabel="true positive rate", aspect="equal")
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(scores) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save(fig, out)
