"""Running cells: the run folder, the MLflow run, and the status that survives a crash."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import distributed, leaderboard
from bench.checkpoint import previous
from bench.config import RunConfig, save_config
from bench.data.cards import load_card
from bench.errors import ConfigError
from bench.grid import Cell
from bench.journal import Journal
from bench.metric_keys import STEPS
from bench.tracking import FAILED, FINISHED, KILLED, NOTE, Run, one_line, provenance, runs_by_hash, sync, tracking_uri
from bench.train import BEST, LAST, train

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a cell ended."""

    cell: str
    status: str
    reason: str = ""


def check_inputs(cfg: RunConfig) -> None:
    """Fail before anything runs or is recorded: every card must exist and a weights file must be there."""
    for name in [cfg.data.train, *cfg.data.test]:
        load_card(name)
    if cfg.model.weights is not None and not Path(cfg.model.weights).expanduser().is_file():
        raise ConfigError(f"model.weights: no such file {cfg.model.weights}; give a local .pth or .safetensors file")


def run_dir(cell: Cell) -> Path:
    return Path(cell.config.tracking.runs_dir) / cell.run_id


def run_cell(cell: Cell, experiment: str, grid: str = "") -> Outcome:
    """Train and test one cell, tracked in MLflow; an exception marks the run FAILED with its reason."""
    folder = run_dir(cell)
    if not distributed.is_main():  # the other processes of a data-parallel run train; rank 0 tracks
        train(cell.config, folder)
        return Outcome(cell.name, FINISHED)
    save_config(cell.config, folder / "config.yaml")
    method = cell.config.method.name
    tags = {
        "grid": grid,
        "cell": cell.name,
        "label": cell.label,
        "method": method,
        "family": method.split("/")[0],
        "tune": cell.tune,
    }
    run = Run(cell.config, experiment, cell.name, tags, folder)
    select = cell.config.eval.select_metric

    def curves(values: dict[str, float], step: int) -> None:  # those of the leaderboard's metrics
        run.log_metrics({k: v for k, v in values.items() if leaderboard.tracked(k, select)}, step)

    try:
        metrics = train(cell.config, folder, log=curves)
    except KeyboardInterrupt as err:  # the folder keeps the last checkpoint: launching again resumes
        run.finish(KILLED, f"stopped by {err.args[0] if err.args else 'SIGINT'}")  # the CLI names the signal
        raise
    except Exception as err:  # recorded, not swallowed: the caller decides whether to go on
        reason = f"{type(err).__name__}: {err}"
        run.finish(FAILED, reason)
        log.error("cell %s failed: %s", cell.name, reason)
        return Outcome(cell.name, FAILED, reason)
    # at the last step, after the validation curve: MLflow's latest val/* is then the selected checkpoint's; the
    # rest of the results stays in metrics.json, an artifact
    run.log_metrics(leaderboard.headline(metrics, cell.config), step=int(metrics[STEPS]))
    run.set_tags({NOTE: leaderboard.describe(metrics, cell.config)})
    run.log_artifacts()
    run.finish(FINISHED)
    if not run.synced:
        log.warning("cell %s finished offline: its records wait in %s; `bench sync` sends them", cell.name, folder)
    return Outcome(cell.name, FINISHED)


def sync_cells(cells: list[Cell]) -> int:
    """Send to the store what the cells' run folders hold and it lacks (runs that ended while it was away);
    returns how many folders were synced. A folder that cannot be synced is named in a warning and left as it is."""
    synced = 0
    for cell in cells:
        journal = Journal(run_dir(cell))
        if not journal.pending():
            continue
        try:
            sync(journal)
            synced += 1
        except Exception as err:  # reported; the cell's state says the rest
            log.warning("%s: not synced (%s)", journal.folder, one_line(err))
    return synced


def stale(cells: list[Cell], runs: dict[str, Any]) -> dict[str, str]:
    """Run ids of the finished cells whose run (in ``runs``, from :func:`runs_by_hash`) other code made (another
    commit, or a dirty tree), with the reason. Nothing is stale where this code's commit is unknown (no git)."""
    here = provenance()
    if here["git.sha"] == "unknown":
        return {}
    reasons = {}
    for cell in cells:
        run = runs.get(cell.run_id)
        if run is None or run.info.status != FINISHED:
            continue
        sha, dirty = run.data.tags.get("git.sha", "unknown"), run.data.tags.get("git.dirty", "unknown")
        if sha != here["git.sha"]:
            reasons[cell.run_id] = f"made by commit {sha[:10]}"
        elif dirty != "false":
            reasons[cell.run_id] = "made by a tree with uncommitted changes"
    return reasons


def restart(cell: Cell) -> None:
    """Discard what a cell's run folder holds of an earlier training (checkpoints, scores, metrics, diagnostics), so
    that it trains again from the start; its claims and config stay."""
    folder = run_dir(cell)
    for name in (LAST, BEST, "metrics.json"):
        (folder / name).unlink(missing_ok=True)
    previous(folder / LAST).unlink(missing_ok=True)
    for name in ("scores", "diagnostics"):
        shutil.rmtree(folder / name, ignore_errors=True)


def finished(cells: list[Cell], experiment: str, runs: dict[str, Any] | None = None) -> set[str]:
    """Run ids of the cells whose config already has a FINISHED run in ``experiment`` (or in ``runs``, when given)."""
    if not cells:
        return set()
    runs = runs_by_hash(tracking_uri(cells[0].config), experiment) if runs is None else runs
    return {c.run_id for c in cells if c.run_id in runs and runs[c.run_id].info.status == FINISHED}
