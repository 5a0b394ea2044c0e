"""tracking.uri pointing at a real MLflow server (started here on loopback) works like the embedded store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cli import main
from bench.tracking import runs_by_hash
from tests.test_cli import _grid


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += [
        "--backend-store-uri",
        f"sqlite:///{folder}/db.sqlite",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


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
