"""The grid on a real Slurm through Submitit: same table as local, pre-emption resumes, relaunches submit only
what is missing. CI brings up a single-node cluster (``.ci/slurm.sh up``) and sets ``BENCH_REQUIRE_SLURM=1``, so
there these tests fail rather than skip when Slurm is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from bench.cli import main
from bench.grid import expand, load_grid
from bench.launch import submit
from bench.tracking import runs_by_hash
from bench.train import train
from tests.test_cli import _grid

pytestmark = pytest.mark.slow  # jobs on a real cluster

if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
    if os.environ.get("BENCH_REQUIRE_SLURM") == "1":
        raise RuntimeError("BENCH_REQUIRE_SLURM=1 but no Slurm answers here (run .ci/slurm.sh up)")
    pytest.skip("no Slurm cluster here (.ci/slurm.sh up starts one)", allow_module_level=True)

SLURM = ["--launcher", "slurm", "--set", "launch.timeout_min=60", "--set", "launch.cpus_per_task=2"]


def _job_ids(out: str) -> list[str]:
    return re.findall(r"job (\d+(?:_\d+)?)", out)


def _wait(folder: Path, job_ids: list[str], timeout: float = 600) -> None:
    """Wait for jobs through Slurm's own accounting (submitit's cached state lags)."""
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        job = submitit.SlurmJob(folder=folder / "%j", job_id=job_id)
        while job.watcher.get_state(job_id, mode="force") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            assert time.monotonic() < deadline, f"job {job_id} did not end in time"
            time.sleep(2)


def _auc(uri: str, experiment: str) -> dict[str, dict[str, float]]:
    return {
        run.data.tags["cell"]: {k: v for k, v in run.data.metrics.items() if k.startswith("auc/")}
        for run in runs_by_hash(uri, experiment).values()
    }


def test_smoke_grid_on_slurm_matches_local(tmp_path: Path, tracking_uri: str, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=6", "--set", "eval.bootstrap=0"]
    common = [*short, "--set", f"tracking.uri={tracking_uri}", "--no-report"]
    exp_local, exp_slurm = f"{tmp_path.name}-local", f"{tmp_path.name}-slurm"
    assert (
        main(["grid", "smoke", *common, "--set", f"tracking.experiment={exp_local}", "--set", "tracking.runs_dir=a"])
        == 0
    )
    capsys.readouterr()
    slurm_args = [*common, *SLURM, "--set", f"tracking.experiment={exp_slurm}", "--set", "tracking.runs_dir=b"]
    assert main(["grid", "smoke", *slurm_args]) == 0
    ids = _job_ids(capsys.readouterr().out)
    assert len(ids) == 2
    _wait(tmp_path / "b" / "submitit", ids)
    local, slurm = _auc(tracking_uri, exp_local), _auc(tracking_uri, exp_slurm)
    assert set(local) == set(slurm) and len(local) == 2
    for cell, metrics in local.items():
        assert metrics and slurm[cell] == pytest.approx(metrics, abs=1e-6)
    assert main(["grid", "smoke", *slurm_args]) == 0  # everything finished: nothing to submit
    assert "0 cells submitted" in capsys.readouterr().out or _job_ids(capsys.readouterr().out) == []


def test_preempted_cell_resumes_from_its_checkpoint(tmp_path: Path, tiny_cards, tracking_uri, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    steps = {"epochs": 2, "steps_per_epoch": 150, "batch_size": 8, "checkpoint_every": 10}
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0], base={"train": steps})
    (cell,) = expand(load_grid(str(path)), ["launch.launcher=slurm", "launch.timeout_min=60"])

    (item,) = submit([cell], tmp_path.name, "tiny", cell.config.launch, tmp_path / "runs" / "submitit")
    folder = Path(cell.config.tracking.runs_dir) / cell.run_id
    deadline = time.monotonic() + 300
    while not (folder / "last.pt").exists():
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    item.job._interrupt()  # the signal Slurm sends on pre-emption
    outcome = item.job.result()
    assert outcome.status == "FINISHED"
    run = runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id]
    assert run.data.metrics.get("resume_step", 0) > 0
    reference = expand(load_grid(str(path)), [f"tracking.runs_dir={tmp_path / 'reference'}"])[0]
    expected = train(reference.config, tmp_path / "reference" / cell.run_id)
    got = {k: v for k, v in run.data.metrics.items() if k.startswith(("auc/", "eer/"))}
    assert got and got == pytest.approx({k: expected[k] for k in got}, abs=1e-9)


def test_relaunch_submits_only_failed_cells_and_concurrent_launches_run_each_once(
    tmp_path: Path, tiny_cards, tracking_uri, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = {"linear-probe": {"optim": {"lr": 1e30, "grad_clip": None}}}
    path = _grid(tmp_path, tiny_cards, tracking_uri, per_method=bad, seeds=[0])
    cmd = [sys.executable, "-m", "bench", "grid", str(path), "--no-report", *SLURM]
    launches = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in launches]
    ids = [i for out in outs for i in _job_ids(out)]
    assert len(ids) == 2  # two cells, two launches: each cell submitted once
    _wait(tmp_path / "runs" / "submitit", ids)
    statuses = {r.data.tags["cell"]: r.info.status for r in runs_by_hash(tracking_uri, tmp_path.name).values()}
    assert statuses == {"full-ft seed=0": "FINISHED", "linear-probe seed=0": "FAILED"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert re.findall(r"submitted (.*): job", again.stdout) == ["linear-probe seed=0"]
    _wait(tmp_path / "runs" / "submitit", _job_ids(again.stdout))
