"""MLflow's runs table as the leaderboard: what a run logs there.

A run sends MLflow a small set of headline metrics whatever the backbone's depth (:func:`tracked`): per test card
the AUC and the video AUC of the validation-selected checkpoint with their 95% bounds and its EER, ``avg/auc`` (the
report's ``avg``: the mean AUC over the cross-dataset cards), trainable parameters, seconds per training step, the
training curves, the validation AUC, EER and video AUC, and the summaries of the method's diagnostics. Everything
else a run measured (the last checkpoint, AP, accuracy, robustness, set sizes) stays in its ``metrics.json``
artifact, which the report reads; per-layer diagnostics are the table ``diagnostics/layers.csv``. The run's
description is its cross-dataset table in Markdown (:func:`describe`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from bench.config import RunConfig

TESTS = ("auc", "auc_lo", "auc_hi", "video_auc", "video_auc_lo", "video_auc_hi", "eer")
"""The metrics of each test card that MLflow gets (validation-selected checkpoint)."""
VALIDATION = ("auc", "eer", "video_auc", "selected_step")
"""The ``val/`` metrics that MLflow gets (with the selection metric, when another)."""
WHOLE = ("train", "diag", "avg", "params/trainable", "resume_step")
"""Groups (the part of a key before its first ``/``) and keys that MLflow gets whole."""
AVERAGE = "avg/auc"
ROWS = (("AUC", "auc"), ("video AUC", "video_auc"), ("EER", "eer"), ("AUC, last checkpoint", "last/auc"))
"""The rows of a run's description: title and metric."""


def tracked(key: str, select_metric: str = "auc") -> bool:
    """Whether MLflow gets a run's value ``key``; the others stay in the run's ``metrics.json``."""
    group, _, name = key.partition("/")
    if group == "val":
        return name in (*VALIDATION, select_metric)
    return key in WHOLE or group in WHOLE or (group in TESTS and "/" not in name)


def cross_average(results: Mapping[str, float], train_set: str, metric: str = "auc") -> float:
    """The mean of ``<metric>/<card>`` over the test cards other than ``train_set`` (the report's ``avg``); NaN
    without any."""
    prefix = f"{metric}/"
    cross = [v for k, v in results.items() if k.startswith(prefix) and k != prefix + train_set]
    return math.fsum(cross) / len(cross) if cross else math.nan


def headline(results: Mapping[str, float], cfg: RunConfig) -> dict[str, float]:
    """What MLflow gets of a run's final results: the :func:`tracked` values and :data:`AVERAGE`."""
    out = {k: v for k, v in results.items() if tracked(k, cfg.eval.select_metric)}
    average = cross_average(results, cfg.data.train)
    return out if math.isnan(average) else {**out, AVERAGE: average}


def _cell(value: float, low: float | None = None, high: float | None = None) -> str:
    """``0.912 [0.881, 0.940]`` (bounds where given), ``–`` for NaN."""
    if math.isnan(value):
        return "–"
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def describe(results: Mapping[str, float], cfg: RunConfig) -> str:
    """A run's cross-dataset table in Markdown: the :data:`ROWS` per test card (in-domain first, AUCs with their
    95% bounds) and the mean over the cross-dataset cards."""
    from bench.report import in_domain, render

    cards = sorted((k.removeprefix("auc/") for k in results if k.startswith("auc/")), key=lambda c: c != cfg.data.train)
    grid = [["", *(in_domain(c) if c == cfg.data.train else c for c in cards), "avg"]]
    for title, metric in ROWS:
        cells = [
            _cell(
                results.get(f"{metric}/{c}", math.nan), results.get(f"{metric}_lo/{c}"), results.get(f"{metric}_hi/{c}")
            )
            for c in cards
        ]
        grid.append([title, *cells, _cell(cross_average(results, cfg.data.train, metric))])
    return render(grid, "markdown")
