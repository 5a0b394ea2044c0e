"""Launching a grid's cells: in this process (``local``) or through Submitit (``debug``, ``slurm``).

Every cell is claimed before it runs (:mod:`bench.claims`), so relaunching a grid, or launching it twice at once,
submits only the cells that are neither finished nor held by a live run. A Slurm cell is a
``submitit.helpers.Checkpointable``: on pre-emption or time-out Submitit requeues it, and the rerun resumes from the
run folder's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import submitit

from bench import claims, distributed
from bench.checkpoint import saved_step
from bench.config import LaunchConfig
from bench.grid import Cell
from bench.journal import Journal
from bench.runner import Outcome, run_cell, run_dir
from bench.train import LAST

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class CellJob(submitit.helpers.Checkpointable):
    """One cell as a Submitit job; requeued as it is on pre-emption (training resumes from ``last.pt``)."""

    def __init__(self, cell: Cell, experiment: str, grid: str) -> None:
        self.cell, self.experiment, self.grid = cell, experiment, grid

    def __call__(self) -> Outcome:
        if submitit.JobEnvironment().num_tasks > 1:  # one process per task (GPU): data-parallel training
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            distributed.init_from_env()
        return run_claimed(self.cell, self.experiment, self.grid)


def run_claimed(cell: Cell, experiment: str, grid: str) -> Outcome:
    """Run a claimed cell and release its claim when it ends (a pre-empted run keeps it: it is requeued)."""
    outcome = run_cell(cell, experiment, grid)
    if distributed.is_main():
        claims.release(run_dir(cell))
    return outcome


def slurm_state(job_id: str, folder: str) -> str:
    """Slurm's state of a job (``UNKNOWN`` when Slurm does not know it)."""
    return str(submitit.SlurmJob(folder=folder, job_id=job_id).state).split()[0]


def is_stale(owner: claims.Owner) -> bool:
    """A claim is stale when its Slurm job ended, or (before submission, or locally) its process is gone."""
    if owner.get("job_id") and owner.get("launcher") == "slurm":
        return slurm_state(str(owner["job_id"]), str(owner["folder"])) in ENDED
    return claims.process_gone(owner)


def claim_cells(cells: list[Cell], launcher: str) -> Iterator[tuple[Cell, int]]:
    """Claim each cell's run folder; yields the cells this process may run, with their claim generation."""
    owner = claims.this_process(launcher)
    for cell in cells:
        n = claims.claim(run_dir(cell), owner, is_stale)
        if n is not None:
            yield cell, n


def executor(launch: LaunchConfig, folder: Path) -> submitit.AutoExecutor:
    """A Submitit executor with the launch section's resources (``slurm_*`` keys apply on Slurm only)."""
    cluster = "slurm" if launch.launcher == "slurm" else "debug"
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    params = {k: v for k, v in dataclasses.asdict(launch).items() if k != "launcher" and v is not None}
    ex.update_parameters(**params)
    return ex


@dataclass
class Submitted:
    """A cell handed to Submitit, with its job."""

    cell: Cell
    job: submitit.Job


def submit(cells: list[Cell], experiment: str, grid: str, launch: LaunchConfig, folder: Path) -> list[Submitted]:
    """Claim and submit ``cells`` as one job array; returns at once (``debug`` jobs run when their result is asked)."""
    claimed = list(claim_cells(cells, launch.launcher))
    if not claimed:
        return []
    ex = executor(launch, folder)
    with ex.batch():
        jobs = [ex.submit(CellJob(cell, experiment, grid)) for cell, _ in claimed]
    for (cell, n), job in zip(claimed, jobs, strict=True):
        claims.update(run_dir(cell), n, job_id=job.job_id, folder=str(folder / "%j"))
    return [Submitted(cell, job) for (cell, _), job in zip(claimed, jobs, strict=True)]


def cell_state(cell: Cell, tracked: object | None) -> tuple[str, str]:
    """``(state, detail)`` of a cell from its MLflow run, its claim and its folder: finished, unsynced (ended while
    the store was away), failed, running, pending, interrupted (started, owner gone) or not started (detail: the
    job id, the owner, the last checkpoint's step, or the reason of a failure)."""
    folder = run_dir(cell)
    journal = Journal(folder)
    waiting, ended = len(journal.pending()), journal.ended()
    if waiting and ended:
        return "unsynced", f"{ended} offline; {waiting} records wait in its folder (bench sync sends them)"
    status = getattr(getattr(tracked, "info", None), "status", None)
    if status == "FINISHED":
        return "finished", ""
    state, detail = _claimed_state(cell, tracked, status)
    if state in ("running", "interrupted"):
        step = saved_step(folder / LAST)
        detail += "; last checkpoint: " + ("none yet" if step is None else f"step {step}")
        detail += f"; {waiting} records unsynced" if waiting else ""
    return state, detail


def _claimed_state(cell: Cell, tracked: object | None, status: str | None) -> tuple[str, str]:
    held = claims.current(run_dir(cell))
    owner = held[1] if held else {}
    if held and not owner and not claims.free(run_dir(cell), *held, is_stale):
        return "pending", f"claim.{held[0]}: owner not written yet"
    job = str(owner.get("job_id", ""))
    if owner and not owner.get("released") and not is_stale(owner):
        if owner.get("launcher") == "slurm" and job:
            state = slurm_state(job, str(owner["folder"]))
            return ("pending" if state in ("PENDING", "REQUEUED") else "running"), f"job {job} ({state})"
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner["time"])) if "time" in owner else "?"
        return "running", f"pid {owner.get('pid')} on {owner.get('host')} since {since}"
    if status == "FAILED":
        tags = getattr(getattr(tracked, "data", None), "tags", {})
        return "failed", (f"job {job}: " if job else "") + tags.get("failure_reason", "")
    if job and owner.get("launcher") == "slurm":  # the job ended without the run saying how: killed, OOM, ...
        return "failed", f"job {job} ended {slurm_state(job, str(owner['folder']))} before the run finished"
    if status in ("RUNNING", "KILLED"):  # started, and its owner is gone: killed, pre-empted or interrupted
        return "interrupted", "its owner is gone; launching the grid again resumes it"
    return "not started", ""
