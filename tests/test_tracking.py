"""Tracking on the embedded sqlite store: many cells starting at once on a fresh store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from bench.config import build_config
from bench.tracking import FINISHED, Run, runs_by_hash


def _start_cell(uri: str, seed: int) -> None:
    """What a cell does first on the store: open its run, log, finish."""
    cfg = build_config({"tracking": {"uri": uri}, "train": {"seed": seed}})
    run = Run(cfg, "fresh", f"cell {seed}", {"cell": f"cell {seed}"})
    run.log_metrics({"val/auc": 0.5 + seed / 100}, step=1)
    run.finish(FINISHED)


def test_four_cells_starting_at_once_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spawn = multiprocessing.get_context("spawn")
    cells = [spawn.Process(target=_start_cell, args=(uri, seed)) for seed in range(4)]
    for cell in cells:
        cell.start()
    for cell in cells:
        cell.join(timeout=300)
    assert [c.exitcode for c in cells] == [0] * 4
    runs = runs_by_hash(uri, "fresh")
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {FINISHED}
    assert sorted(r.data.metrics["val/auc"] for r in runs.values()) == [0.5, 0.51, 0.52, 0.53]
