"""Claims and the Submitit launchers (the Slurm path itself runs in tests/test_slurm.py)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import claims
from bench.checkpoint import save_atomic
from bench.cli import main
from bench.grid import expand, load_grid
from bench.launch import cell_state
from bench.tracking import runs_by_hash
from tests.test_cli import _grid


def _race(folder: str, parent: int, queue: multiprocessing.Queue) -> None:
    owner = {**claims.this_process("local"), "pid": parent}  # owned by the live test process, not the racer
    queue.put(claims.claim(Path(folder), owner, claims.process_gone))


def test_concurrent_claims_have_one_winner(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "run"), os.getpid(), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = [queue.get() for _ in procs]
    assert results.count(0) == 1 and results.count(None) == 5


def test_stale_claim_is_taken_over_live_one_is_not(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = {**claims.this_process("local"), "pid": int(dead.stdout)}
    assert claims.claim(tmp_path, owner, claims.process_gone) == 0
    assert claims.claim(tmp_path, claims.this_process("local"), claims.process_gone) == 1  # the first owner is gone
    assert claims.claim(tmp_path, claims.this_process("local"), claims.process_gone) is None  # we are alive
    claims.update(tmp_path, 1, job_id="42")
    n, owner = claims.current(tmp_path)
    assert n == 1 and owner["job_id"] == "42" and owner["pid"] == os.getpid()


def test_debug_launcher_matches_local(tmp_path: Path, tiny_cards, tracking_uri, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = [f"{tmp_path.name}-local", f"{tmp_path.name}-debug"]
    for name in names:
        (tmp_path / name).mkdir()
    local, debug = (_grid(tmp_path / n, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0]) for n in names)
    assert main(["grid", str(local), "--no-report"]) == 0
    assert main(["grid", str(debug), "--no-report", "--launcher", "debug"]) == 0
    a, b = (runs_by_hash(tracking_uri, n) for n in names)
    (ra,), (rb,) = a.values(), b.values()
    keys = [k for k in ra.data.metrics if k.startswith(("auc/", "eer/"))]
    assert keys and {k: ra.data.metrics[k] for k in keys} == {k: rb.data.metrics[k] for k in keys}
    cell = expand(load_grid(str(debug)))[0]
    assert cell_state(cell, rb) == ("finished", "")


def test_held_cells_are_skipped(tmp_path: Path, tiny_cards, tracking_uri, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0, 1])
    cells = expand(load_grid(str(path)))
    holder = {**claims.this_process("local"), "pid": os.getppid()}  # a live process that is not us
    assert claims.claim(Path(cells[0].config.tracking.runs_dir) / cells[0].run_id, holder, claims.process_gone) == 0
    assert main(["grid", str(path), "--no-report"]) == 0
    assert "held by another launch, skipped" in capsys.readouterr().out
    assert cell_state(cells[0], None)[0] == "running"
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "1 finished" in out


def test_an_empty_claim_goes_stale_after_the_grace_period(
    tmp_path: Path, tiny_cards, tracking_uri, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0])
    (cell,) = expand(load_grid(str(path)))
    folder = Path(cell.config.tracking.runs_dir) / cell.run_id
    folder.mkdir(parents=True)
    (folder / "claim.0").write_text("")  # a launcher killed between creating the claim and writing its owner
    assert main(["grid", str(path), "--no-report"]) == 0
    assert "held by another launch, skipped" in capsys.readouterr().out  # within the grace: it may still be written
    assert cell_state(cell, None) == ("pending", "claim.0: owner not written yet")
    old = time.time() - claims.GRACE_S - 1
    os.utime(folder / "claim.0", (old, old))
    assert cell_state(cell, None) == ("not started", "")
    assert main(["grid", str(path), "--no-report"]) == 0
    assert (
        claims.current(folder)[0] == 1
        and cell_state(cell, runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id])[0] == "finished"
    )


def test_a_started_run_whose_owner_died_is_interrupted_not_unstarted(tmp_path: Path, tiny_cards, tracking_uri) -> None:
    from bench.tracking import Run

    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0])
    (cell,) = expand(load_grid(str(path)))
    folder = Path(cell.config.tracking.runs_dir) / cell.run_id
    Run(cell.config, tmp_path.name, cell.name, {"cell": cell.name}, folder)  # MLflow RUNNING, as a killed run leaves it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert claims.claim(folder, {**claims.this_process("local"), "pid": int(dead.stdout)}, claims.process_gone) == 0
    state, detail = cell_state(cell, runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id])
    assert state == "interrupted" and "resumes it" in detail and "last checkpoint: none yet" in detail
    save_atomic({"step": 4, "model": {"w": torch.zeros(3)}}, folder / "last.pt")
    assert cell_state(cell, runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id])[1].endswith("checkpoint: step 4")
