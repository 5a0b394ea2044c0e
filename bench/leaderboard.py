"""MLflow's runs table as the leaderboard: what a run logs there, and the view the harness opens on it.

A run sends MLflow a small set of headline metrics whatever the backbone's depth (:func:`tracked`): per test card
the AUC and the video AUC of the validation-selected checkpoint with their 95% bounds and its EER, ``avg/auc`` (the
report's ``avg``: the mean AUC over the cross-dataset cards), trainable parameters, seconds per training step, the
training curves, the validation AUC, EER and video AUC, and the summaries of the method's diagnostics. Everything
else a run measured (the last checkpoint, AP, accuracy, robustness, set sizes) stays in its ``metrics.json``
artifact, which the report reads; per-layer diagnostics are the table ``diagnostics/layers.csv``. The run's
description is its cross-dataset table in Markdown (:func:`describe`).

A grid tags its experiment as a model-training one with the grid's description and stores a shared view of the
runs table (:func:`view_state`); :func:`prepare` returns the URL that opens it and records it in
:data:`LAST_GRID`, where ``nox -s ui`` reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.data.cards import load_card
from bench.grid import Cell
from bench.metric_keys import (
    AVG,
    DIAG,
    LAST,
    RESUME_STEP,
    SELECTED,
    STEP_TIME,
    TRAIN,
    TRAINABLE,
    VAL,
    ResultKey,
    grouped,
)
from bench.tracking import KIND, NOTE, TRAINING, experiment_id, set_experiment_tags

TESTS = ("auc", "auc_lo", "auc_hi", "video_auc", "video_auc_lo", "video_auc_hi", "eer")
"""The metrics of each test card that MLflow gets (validation-selected checkpoint)."""
VALIDATION = ("auc", "eer", "video_auc", "selected_step")
"""The ``val/`` metrics that MLflow gets (with the selection metric, when another)."""
WHOLE = (TRAIN, DIAG, AVG, TRAINABLE, RESUME_STEP)
"""Groups (the part of a key before its first ``/``) and keys that MLflow gets whole."""
AVERAGE = grouped(AVG, "auc")
COLUMNS = (TRAINABLE, STEP_TIME)
"""Columns of the view after the AUCs."""
ROWS = (
    ("AUC", "auc", SELECTED),
    ("video AUC", "video_auc", SELECTED),
    ("EER", "eer", SELECTED),
    ("AUC, last checkpoint", "auc", LAST),
)
"""The rows of a run's description: title, metric and checkpoint."""
SHARE_KEY = "leaderboard"
VIEW_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
UI = "http://127.0.0.1:5000"
"""Where ``nox -s ui`` serves an embedded store."""
LAST_GRID = Path("results") / "last-grid.json"


def tracked(key: str, select_metric: str = "auc") -> bool:
    """Whether MLflow gets a run's value ``key``; the others stay in the run's ``metrics.json``."""
    group, _, name = key.partition("/")
    if group == VAL:
        return name in (*VALIDATION, select_metric)
    test = ResultKey.parse(key)
    return key in WHOLE or group in WHOLE or (test is not None and test.checkpoint == SELECTED and test.metric in TESTS)


def cross_average(
    results: Mapping[str, float], train_set: str, metric: str = "auc", checkpoint: str = SELECTED
) -> float:
    """The mean of a checkpoint's ``metric`` over the test cards other than ``train_set`` (the report's ``avg``); NaN
    without any."""
    cross = [v for card, v in _cards(results, metric, checkpoint).items() if card != train_set]
    return math.fsum(cross) / len(cross) if cross else math.nan


def headline(results: Mapping[str, float], cfg: RunConfig) -> dict[str, float]:
    """What MLflow gets of a run's final results: the :func:`tracked` values and :data:`AVERAGE`."""
    out = {k: v for k, v in results.items() if tracked(k, cfg.eval.select_metric)}
    average = cross_average(results, cfg.data.train)
    return out if math.isnan(average) else {**out, AVERAGE: average}


def _cards(results: Mapping[str, float], metric: str, checkpoint: str = SELECTED) -> dict[str, float]:
    """A checkpoint's ``metric`` per test card, in the results' order."""
    parsed = ((ResultKey.parse(k), v) for k, v in results.items())
    return {k.test_set: v for k, v in parsed if k is not None and (k.metric, k.checkpoint) == (metric, checkpoint)}


def _number(value: float, bounds: tuple[float, float] | None = None) -> str:
    """``0.912`` or ``0.912 [0.881, 0.940]``; ``–`` for NaN."""
    if math.isnan(value):
        return "–"
    return f"{value:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def _entry(results: Mapping[str, float], metric: str, card: str, checkpoint: str) -> str:
    """A checkpoint's ``metric`` of a card, with its bounds where they are there."""
    low, high = (results.get(ResultKey(f"{metric}_{bound}", card, checkpoint).key) for bound in ("lo", "hi"))
    value = results.get(ResultKey(metric, card, checkpoint).key, math.nan)
    return _number(value, None if low is None or high is None else (low, high))


def describe(results: Mapping[str, float], cfg: RunConfig) -> str:
    """A run's cross-dataset table in Markdown: the :data:`ROWS` per test card (in-domain first, AUCs with their
    95% bounds) and the mean over the cross-dataset cards."""
    from bench.report import in_domain, render

    cards = sorted(_cards(results, "auc"), key=lambda c: (c != cfg.data.train, c))
    grid = [["", *(in_domain(c) if c == cfg.data.train else c for c in cards), "avg"]]
    for title, metric, checkpoint in ROWS:
        average = _number(cross_average(results, cfg.data.train, metric, checkpoint))
        grid.append([title, *(_entry(results, metric, card, checkpoint) for card in cards), average])
    return render(grid, "markdown")


def _column(metric: str) -> str:
    """The runs table's name of a metric column."""
    return f"metrics.`{metric}`"


def view_state(cells: Sequence[Cell]) -> dict[str, Any]:
    """The runs table a grid opens on: ``avg/auc``, the AUC of each test card, trainable parameters and step time,
    sorted by ``avg/auc`` (best first) and grouped by label (and tune value, on a grid with a tune axis), so that a
    group's row averages the seeds as the report does."""
    cards = dict.fromkeys(load_card(card).name for cell in cells for card in cell.config.data.test)
    columns = [_column(m) for m in (AVERAGE, *(ResultKey("auc", c).key for c in cards), *COLUMNS)]
    keys = ["label", *(["tune"] if any(cell.tune for cell in cells) else [])]
    return {
        "orderByKey": _column(AVERAGE),
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,  # after the run's name and date; the table would sort metrics by name
        "columnWidths": {_column(AVERAGE): 160},  # wide enough for every digit
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": k} for k in keys]},
    }


def prepare(uri: str, experiment: str, description: str, cells: Sequence[Cell]) -> str:
    """Create or tag a grid's experiment (model training, the grid's description, :func:`view_state`), record its
    leaderboard in :data:`LAST_GRID` and return the leaderboard's URL (on ``nox -s ui`` for an embedded store)."""
    exp_id = experiment_id(uri, experiment)
    assert exp_id is not None  # created when absent
    view = json.dumps(view_state(cells))
    set_experiment_tags(uri, exp_id, {KIND: TRAINING, VIEW_TAG: view, **({NOTE: description} if description else {})})
    path = f"#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={SHARE_KEY}"
    LAST_GRID.parent.mkdir(parents=True, exist_ok=True)
    LAST_GRID.write_text(json.dumps({"tracking_uri": uri, "experiment": experiment, "path": path}) + "\n")
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI
    return f"{base}/{path}"
