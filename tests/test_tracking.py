"""Tracking on the embedded sqlite store: many cells starting at once on a fresh store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from bench.config import build_config
from bench.journal import Journal
from bench.tracking import FINISHED, Run, runs_by_hash


def _start_cell(uri: str, seed: int, folder: Path) -> None:
    """What a cell does first on the store: open its run, log, finish."""
    cfg = build_config({"tracking": {"uri": uri}, "train": {"seed": seed}})
    run = Run(cfg, "fresh", f"cell {seed}", {"cell": f"cell {seed}"}, folder)
    run.log_metrics({"val/auc": 0.5 + seed / 100}, step=1)
    run.finish(FINISHED)


@pytest.mark.slow
def test_four_cells_starting_at_once_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spawn = multiprocessing.get_context("spawn")
    cells = [spawn.Process(target=_start_cell, args=(uri, seed, tmp_path / f"run{seed}")) for seed in range(4)]
    for cell in cells:
        cell.start()
    for cell in cells:
        cell.join(timeout=300)
    assert [c.exitcode for c in cells] == [0] * 4
    runs = runs_by_hash(uri, "fresh")
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {FINISHED}
    assert sorted(r.data.metrics["val/auc"] for r in runs.values()) == [0.5, 0.51, 0.52, 0.53]


def test_the_run_folder_journals_every_record_and_the_store_has_them(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _start_cell(uri, 7, tmp_path / "run")
    journal = Journal(tmp_path / "run")
    ops = [r["op"] for r in journal.records()]
    assert ops == ["open", "metrics", "finish"] and journal.head().sent == 3 and journal.pending() == []
    (run,) = runs_by_hash(uri, "fresh").values()
    assert journal.head().run_id == run.info.run_id and journal.ended() == FINISHED


def test_a_torn_last_record_is_not_read_and_another_store_begins_a_new_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.start("sqlite:///a.db", "x") == []
    journal.append({"op": "metrics", "step": 1, "time": 0, "values": {"a": 1.0}})
    with (tmp_path / "tracking.jsonl").open("a") as fh:
        fh.write('{"op": "metr')  # a crash mid-write
    assert len(journal.records()) == 1 and len(journal.pending()) == 1
    journal.append({"op": "finish", "status": FINISHED, "reason": "", "time": 1})
    assert [r["op"] for r in journal.records()] == ["metrics", "finish"] and journal.ended() == FINISHED
    assert journal.start("sqlite:///a.db", "x") == []  # the same store: kept
    assert len(journal.start("sqlite:///b.db", "x")) == 2  # another: begun anew, the unsent records returned
    assert journal.records() == [] and journal.head().uri == "sqlite:///b.db"
