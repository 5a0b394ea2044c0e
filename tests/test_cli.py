"""The command line end to end on the tiny cards: a grid tracked in sqlite MLflow, skipping, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.config import merge
from bench.grid import expand, load_grid
from bench.runner import finished
from bench.tracking import runs_by_hash


def _grid(tmp_path: Path, tiny_cards: tuple[str, str], uri: str, **extra: object) -> Path:
    base = {
        "model": {"name": "test_vit", "pretrained": False, "img_size": 32},
        "data": {"train": tiny_cards[0], "test": list(tiny_cards), "workers": 0, "frames_per_video": 3},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8},
        "eval": {"bootstrap": 0},
        "tracking": {"uri": uri, "runs_dir": str(tmp_path / "runs")},
    }
    grid = merge({"name": tmp_path.name, "base": base, "methods": ["full-ft", "linear-probe"], "seeds": [0, 1]}, extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.slow
def test_grid_runs_tracks_reports_and_skips(tmp_path: Path, tiny_cards, tracking_uri, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, tracking_uri)
    assert main(["grid", str(path)]) == 0
    out = capsys.readouterr().out
    assert "full-ft" in out and "linear-probe" in out and "avg" in out
    cells = expand(load_grid(str(path)))
    uri = cells[0].config.tracking.uri
    runs = runs_by_hash(uri, tmp_path.name)
    assert set(runs) == {c.run_id for c in cells}
    run = runs[cells[0].run_id]
    assert run.info.status == "FINISHED" and run.data.tags["label"] == cells[0].label
    assert run.data.params["method.name"] == cells[0].config.method.name
    assert 0 <= run.data.metrics["auc/tiny-other"] <= 1 and run.data.metrics["params/trainable"] > 0
    assert (tmp_path / "results" / tmp_path.name / "report.md").exists()
    assert finished(cells, tmp_path.name) == {c.run_id for c in cells}
    assert main(["grid", str(path), "--no-report"]) == 0
    assert capsys.readouterr().out.count("finished already, skipped") == len(cells)


def test_dry_run_lists_cells(tmp_path: Path, tiny_cards, tracking_uri, capsys) -> None:
    assert main(["grid", str(_grid(tmp_path, tiny_cards, tracking_uri)), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("todo") for line in lines)
    assert main(["grid", str(_grid(tmp_path, tiny_cards, tracking_uri)), "--dry-run", "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("seed=1") for line in lines)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"methods": ["no-such-method"]}, "unknown method 'no-such-method'"),
        ({"base": {"optim": {"lrr": 1}}}, "unknown key 'optim.lrr'"),
        ({"base": {"train": {"epochs": "many"}}}, "'train.epochs' expects int"),
        ({"base": {"model": {"name": "test_vit", "weights": "/nonexistent/w.pth"}}}, "model.weights: no such file"),
        ({"name": "../../x"}, "grid name '../../x' is not a name"),
        ({"methods": []}, "'methods' is empty"),
        ({"seeds": []}, "'seeds' is empty"),
        ({"base": {"optim": {"grad_clip": -1}}}, "optim.grad_clip must be a positive number"),
    ],
)
def test_bad_input_is_one_line_and_records_nothing(
    tmp_path: Path, tiny_cards, tracking_uri, capsys, change, expected
) -> None:
    path = _grid(tmp_path, tiny_cards, tracking_uri, **change)
    assert main(["grid", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert runs_by_hash(tracking_uri, tmp_path.name) == {}


def test_a_card_whose_name_escapes_its_folder_is_refused(tmp_path: Path, tiny_cards, tracking_uri, capsys) -> None:
    card = yaml.safe_load(Path(tiny_cards[1]).read_text()) | {"name": "../../../etc/evil"}
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(card))
    path = _grid(tmp_path, tiny_cards, tracking_uri)
    assert main(["grid", str(path), "--set", f"data.test=[{tmp_path / 'evil.yaml'}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "card name '../../../etc/evil' is not a name" in err and len(err.splitlines()) == 1
    assert runs_by_hash(tracking_uri, tmp_path.name) == {}


def test_malformed_grid_yaml(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: {model: [\n")
    assert main(["grid", str(path)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_failed_cell_is_recorded_failed(tmp_path: Path, tiny_cards, tracking_uri, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0])
    assert main(["grid", str(path), "--no-report", "--set", "optim.lr=1e30", "--set", "optim.grad_clip=null"]) == 1
    cells = expand(load_grid(str(path)), ["optim.lr=1e30", "optim.grad_clip=null"])
    run = runs_by_hash(tracking_uri, tmp_path.name)[cells[0].run_id]
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure_reason"]
    assert finished(cells, tmp_path.name) == set()


def test_methods_command_lists_registry(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "full-ft" in out and "linear-probe" in out


def test_grid_name_resolves_in_grids_folder() -> None:
    assert load_grid("smoke.yaml").name == load_grid("smoke").name == "smoke"


def test_robustness_table_from_perturbed_tests(tmp_path: Path, tiny_cards, tracking_uri, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    extra = {"methods": ["linear-probe"], "seeds": [0], "base": {"eval": {"perturbations": ["jpeg:1", "blur:1..2"]}}}
    assert main(["grid", str(_grid(tmp_path, tiny_cards, tracking_uri, **extra))]) == 0
    (run,) = runs_by_hash(tracking_uri, tmp_path.name).values()
    assert not any(key.startswith("robust/") for key in run.data.metrics)  # in the run's metrics.json, for the report
    table = (tmp_path / "results" / tmp_path.name / "robustness.csv").read_text()
    header = table.splitlines()[0].split(",")
    assert header[:2] == ["label", "blur:1:mean"] and {"blur:2:mean", "jpeg:1:mean"} <= set(header)
    assert "linear-probe" in table


def test_a_tracking_uri_where_no_server_listens_fails_at_once_in_one_line(
    tmp_path: Path, tiny_cards, capsys, monkeypatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, f"http://127.0.0.1:{port}")
    assert main(["grid", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"tracking.uri http://127.0.0.1:{port}: no MLflow server answers" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sigterm_records_killed_in_one_line_and_a_later_finish_clears_the_reason(
    tmp_path: Path, tiny_cards, tracking_uri, monkeypatch
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from bench.tracking import FINISHED, KILLED

    longer = {"base": {"train": {"epochs": 6, "steps_per_epoch": 5, "checkpoint_every": 2}}}
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0], **longer)
    (cell,) = expand(load_grid(str(path)))
    last = Path(cell.config.tracking.runs_dir) / cell.run_id / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "grid", str(path), "--no-report"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped by SIGTERM: run folders keep")
    run = runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id]
    assert run.info.status == KILLED and run.data.tags["failure_reason"] == "stopped by SIGTERM"

    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(path), "--no-report"]) == 0  # resumes the same run and finishes it
    run = runs_by_hash(tracking_uri, tmp_path.name)[cell.run_id]
    assert run.info.status == FINISHED and "failure_reason" not in run.data.tags


def test_cells_finished_by_other_code_are_reported_and_rerun_on_request(
    tmp_path: Path, tiny_cards, tracking_uri, capsys, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, tiny_cards, tracking_uri, methods=["full-ft"], seeds=[0, 1])
    assert main(["grid", str(path), "--no-report"]) == 0
    cells = expand(load_grid(str(path)))
    first = runs_by_hash(tracking_uri, tmp_path.name)
    MlflowClient(tracking_uri).set_tag(first[cells[0].run_id].info.run_id, "git.sha", "0" * 40)  # an older commit
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    assert "finished     stale: made by commit 0000000000" in capsys.readouterr().out
    assert main(["grid", str(path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "finished cells were made by other code" in out and f"{cells[0].name}: finished already, skipped" in out
    assert main(["grid", str(path), "--no-report", "--rerun-stale"]) == 0
    # trained again (the other cell too where this tree has uncommitted changes, so that its run is stale as well)
    assert f"] {cells[0].name} (run {cells[0].run_id})" in capsys.readouterr().out
    again = runs_by_hash(tracking_uri, tmp_path.name)[cells[0].run_id]
    assert again.info.run_id != first[cells[0].run_id].info.run_id and again.data.tags["git.sha"] != "0" * 40
    assert "resume_step" not in again.data.metrics  # from the start, not resumed from the old checkpoint


@pytest.mark.parametrize("debug", [["--debug"], "env"])
def test_debug_shows_the_traceback_of_bad_input_above_its_line(
    tmp_path: Path, capsys, monkeypatch, debug: list[str] | str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: {model: [\n")
    if debug == "env":
        monkeypatch.setenv("BENCH_DEBUG", "1")
    assert main([*(debug if isinstance(debug, list) else []), "grid", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback") and any("ConfigError" in line for line in err)
    assert err[-1].startswith("error:") and "malformed YAML" in err[-1]


def test_a_bug_is_raised_with_its_traceback_not_reported_as_bad_input(capsys, monkeypatch) -> None:
    import bench.report

    def broken(*args: object) -> str:
        raise ValueError("a bug in the report")

    monkeypatch.setattr(bench.report, "write_report", broken)
    with pytest.raises(ValueError, match="a bug in the report"):
        main(["report", "--experiment", "smoke"])
    assert "error:" not in capsys.readouterr().err


def test_an_unknown_experiment_is_bad_input(tmp_path: Path, tracking_uri, capsys) -> None:
    assert main(["report", "--experiment", "nope", "--tracking-uri", tracking_uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no MLflow experiment named 'nope'") and len(err.splitlines()) == 1
