"""tracking.uri pointing at a real MLflow server (started here on loopback) works like the embedded store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import build_config
from bench.grid import expand, load_grid
from bench.journal import Journal
from bench.leaderboard import headline
from bench.tracking import Run, runs_by_hash, sync
from tests.test_cli import _grid

pytestmark = pytest.mark.slow  # each test starts an MLflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder: Path, port: int) -> subprocess.Popen:
    """A real MLflow server on loopback with its store in ``folder``; returns once it answers."""
    args = ["--workers", "1", "--artifacts-destination", str(folder / "art")]
    return serve("server", f"sqlite:///{folder}/db.sqlite", port, folder / "server.log", args)


def serve(command: str, store: str, port: int, log: Path, args: Sequence[str] = ()) -> subprocess.Popen:
    """``mlflow <command>`` (``server`` or ``ui``) on loopback for the tracking ``store``; returns once it answers."""
    cmd = [sys.executable, "-m", "mlflow", command, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", store, *args]
    proc = subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the workers and job runners it started (its session)."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    proc = _start_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def test_grid_tracks_to_a_server(server: str, tmp_path: Path, tiny_cards, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, server, methods=["linear-probe"], seeds=[0])
    assert main(["grid", str(path)]) == 0
    assert "linear-probe" in capsys.readouterr().out  # the report read the runs back from the server
    (run,) = runs_by_hash(server, tmp_path.name).values()
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["auc/tiny-other"] <= 1
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(server).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "scores"} <= names
    assert main(["grid", str(path), "--no-report"]) == 0
    assert "finished already, skipped" in capsys.readouterr().out


def test_a_server_killed_mid_run_loses_nothing_and_sync_sends_it_once(
    tmp_path: Path, tiny_cards, monkeypatch, capsys
) -> None:
    """Training goes on without the store, the run folder keeps every record, and `bench sync` (run twice) leaves
    the MLflow run as an uninterrupted run would have: FINISHED, the final metrics, the whole validation curve."""
    monkeypatch.chdir(tmp_path)
    store, port = tmp_path / "store", _free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    proc = _start_server(store, port)
    path = _grid(tmp_path, tiny_cards, uri, methods=["linear-probe"], seeds=[0])
    path.write_text(path.read_text().replace("epochs: 1", "epochs: 3"))
    (cell,) = expand(load_grid(str(path)))
    original = Run.log_metrics

    def log_then_kill(run: Run, metrics: dict[str, float], step: int = 0) -> None:
        original(run, metrics, step)
        if "val/auc" in metrics and proc.poll() is None:  # after the first epoch's validation
            _stop(proc)

    monkeypatch.setattr(Run, "log_metrics", log_then_kill)
    assert main(["grid", str(path)]) == 1  # trained and tested; only the report needs the store
    assert "the tracking store failed" in capsys.readouterr().err
    folder = Path(cell.config.tracking.runs_dir) / cell.run_id
    local = json.loads((folder / "metrics.json").read_text())
    journal = Journal(folder)
    assert local["train/steps"] == 6 and journal.ended() == "FINISHED" and journal.pending()

    proc = _start_server(store, port)
    try:
        assert main(["status", str(path)]) == 0
        assert "unsynced" in capsys.readouterr().out
        assert main(["sync", "--runs-dir", str(folder.parent)]) == 0
        assert "records sent" in capsys.readouterr().out
        assert main(["sync", "--runs-dir", str(folder.parent)]) == 0
        assert "nothing to sync" in capsys.readouterr().out
        (run,) = runs_by_hash(uri, tmp_path.name).values()
        assert run.info.status == "FINISHED" and run.info.run_id == journal.head().run_id
        assert all(run.data.metrics[k] == pytest.approx(v) for k, v in headline(local, cell.config).items())
        from mlflow.tracking import MlflowClient

        curve = MlflowClient(uri).get_metric_history(run.info.run_id, "val/auc")
        assert sorted(m.step for m in curve) == [2, 4, 6, 6]  # three epochs, and the selected value at the end
        assert main(["grid", str(path), "--no-report"]) == 0
        assert "finished already, skipped" in capsys.readouterr().out
    finally:
        _stop(proc)


def test_a_run_that_starts_while_the_store_is_away_is_created_by_sync(tmp_path: Path) -> None:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    cfg = build_config({"tracking": {"uri": uri}})
    run = Run(cfg, "away", "cell", {"cell": "cell"}, tmp_path / "run")
    run.log_metrics({"val/auc": 0.75}, step=3)
    run.finish("FINISHED")
    assert not run.synced and run.journal.head().run_id is None
    (tmp_path / "store").mkdir()
    proc = _start_server(tmp_path / "store", port)
    try:
        assert sync(run.journal) == 3 and sync(run.journal) == 0
        (tracked,) = runs_by_hash(uri, "away").values()
        assert tracked.info.status == "FINISHED" and tracked.data.metrics == {"val/auc": 0.75}
        assert tracked.data.tags["cell"] == "cell" and tracked.data.params["train.seed"] == "0"
    finally:
        _stop(proc)
