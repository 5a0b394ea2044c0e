"""The leaderboard: what a grid's runs log to MLflow, how its experiment is tagged, and the page a person opens.

The browser test drives Debian's ``chromium`` through Playwright. It skips where no chromium is installed, except
where ``BENCH_REQUIRE_BROWSER=1`` (CI's ``.ci/run`` sets it and installs the browser), where it fails instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pytest
import timm
from mlflow.tracking import MlflowClient
from timm.models import register_model

from bench.cli import main
from bench.grid import Cell, expand, load_grid
from bench.leaderboard import AVERAGE, LAST_GRID, SHARE_KEY, VIEW_TAG, tracked
from bench.report import Artifacts, _search_runs, collect, per_seed_table, with_results
from bench.tracking import KIND, NOTE, TRAINING, runs_by_hash
from tests.test_cli import _grid
from tests.test_mlflow_server import _free_port, _stop, serve

DESCRIPTION = "Two methods on the tiny cards, two seeds."
LIMIT = 60  # metrics per run, whatever the backbone's depth


@register_model
def deep_test_vit(pretrained: bool = False, **kwargs) -> timm.models.VisionTransformer:
    """timm's tiny test ViT, as deep as ViT-L/14 (24 blocks)."""
    return timm.create_model("test_vit", pretrained=pretrained, **{"depth": 24, **kwargs})


@dataclass
class Board:
    """A grid run into a fresh sqlite store: its cells, store, experiment, the URL it printed and its folder."""

    cells: list[Cell]
    uri: str
    experiment: str
    url: str
    folder: Path


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield


def _run_grid(folder: Path, tiny_cards: tuple[str, str], **grid: object) -> tuple[list[Cell], str]:
    """Run a grid of the tiny cards in ``folder`` (as the working directory); its cells and what it printed."""
    path = _grid(folder, tiny_cards, f"sqlite:///{folder}/mlflow.db", **grid)
    out = io.StringIO()
    with _inside(folder), contextlib.redirect_stdout(out):
        assert main(["grid", str(path)]) == 0
    return expand(load_grid(str(path))), out.getvalue()


def _frame(board: Board) -> pd.DataFrame:
    """The board's runs as the report reads them."""
    with tempfile.TemporaryDirectory() as scratch:
        return with_results(_search_runs(board.experiment, board.uri), Artifacts(board.uri, Path(scratch)))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, tiny_cards: tuple[str, str]) -> Board:
    folder = tmp_path_factory.mktemp("board")
    cells, printed = _run_grid(folder, tiny_cards, description=DESCRIPTION, base={"eval": {"bootstrap": 20}})
    (url,) = [line.removeprefix("leaderboard: ") for line in printed.splitlines() if line.startswith("leaderboard: ")]
    return Board(cells, cells[0].config.tracking.uri or "", folder.name, url, folder)


def test_the_experiment_is_a_training_one_with_the_grids_description_and_view(board: Board) -> None:
    experiment = MlflowClient(board.uri).get_experiment_by_name(board.experiment)
    tags = experiment.tags
    assert tags[KIND] == TRAINING and tags[NOTE] == DESCRIPTION
    view = json.loads(tags[VIEW_TAG])
    assert view["orderByKey"] == f"metrics.`{AVERAGE}`" and view["orderByAsc"] is False
    columns = ["avg/auc", "auc/tiny-train", "auc/tiny-other", "params/trainable", "train/step_seconds"]
    assert view["selectedColumns"] == view["columnOrder"] == [f"metrics.`{c}`" for c in columns]
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "label"}]
    path = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SHARE_KEY}"
    assert board.url == f"http://127.0.0.1:5000/{path}"
    recorded = json.loads((board.folder / LAST_GRID).read_text())
    assert recorded == {"tracking_uri": board.uri, "experiment": board.experiment, "path": path}


def test_runs_log_the_headline_and_the_reports_average(board: Board) -> None:
    runs = runs_by_hash(board.uri, board.experiment)
    assert set(runs) == {cell.run_id for cell in board.cells}
    report_avg = per_seed_table(collect(_frame(board)))["avg"]
    for cell in board.cells:
        run = runs[cell.run_id]
        metrics = run.data.metrics
        assert all(tracked(key) for key in metrics if key != AVERAGE)
        per_card = {
            f"{m}/{card}" for m in ("auc", "auc_lo", "video_auc_hi", "eer") for card in ("tiny-train", "tiny-other")
        }
        assert per_card <= set(metrics) and "last/auc/tiny-other" not in metrics and "ap/tiny-other" not in metrics
        assert metrics["train/step_seconds"] > 0 and metrics["params/trainable"] > 0
        assert metrics[AVERAGE] == pytest.approx(report_avg[cell.label, cell.seed], rel=1e-12)
        assert f"| {metrics[AVERAGE]:.3f} |" in run.data.tags[NOTE].splitlines()[2]  # the AUC row ends with avg


def test_the_report_reads_what_mlflow_does_not_have_from_the_runs_results(board: Board) -> None:
    long = collect(_frame(board))
    assert set(long["checkpoint"]) == {"selected", "last"} and "ap" in set(long["metric"])
    report = board.folder / "results" / board.experiment
    assert {"auc_last.csv", "eer_last.csv", "report.md"} <= {p.name for p in report.iterdir()}


def test_per_layer_diagnostics_are_a_table_and_only_their_summaries_are_metrics(board: Board) -> None:
    cell = next(c for c in board.cells if c.config.method.name == "full-ft")
    run = runs_by_hash(board.uri, board.experiment)[cell.run_id]
    table = Path(MlflowClient(board.uri).download_artifacts(run.info.run_id, "diagnostics/layers.csv", board.folder))
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 12 and list(rows[0]) == ["layer", "drift", "spectrum"]  # 6 blocks: attention qkv, proj
    drift = np.mean([float(row["drift"]) for row in rows])
    assert run.data.metrics["diag/drift_mean"] == pytest.approx(drift, rel=1e-12)
    assert not any(key.startswith(("diag/drift/", "diag/spectrum/")) for key in run.data.metrics)


def test_a_run_of_vit_large_depth_logs_fewer_than_60_metrics(tmp_path: Path, tiny_cards: tuple[str, str]) -> None:
    model = {"name": "deep_test_vit", "pretrained": False, "img_size": 32}
    methods = ["full-ft", "masm"]
    base = {"model": model, "eval": {"bootstrap": 20}}
    cells, _ = _run_grid(tmp_path, tiny_cards, methods=methods, seeds=[0], base=base)
    runs = runs_by_hash(cells[0].config.tracking.uri or "", tmp_path.name)
    counts = {runs[c.run_id].data.tags["method"]: len(runs[c.run_id].data.metrics) for c in cells}
    assert set(counts) == set(methods) and max(counts.values()) < LIMIT, counts


@pytest.fixture
def chromium() -> str:
    """The system Chromium; a skip (a failure under ``BENCH_REQUIRE_BROWSER=1``) where it or Playwright is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path, reason = None, "Playwright is not installed (it is in the project's test extra)"
    else:
        reason = "no chromium here (apt-get install chromium)"
    if path is None:
        if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BENCH_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def ui(chromium: str, board: Board) -> Iterator[str]:
    """``mlflow ui`` on the board's store, as ``nox -s ui`` starts it (after the browser was found); its address."""
    port = _free_port()
    proc = serve("ui", board.uri, port, board.folder / "ui.log")
    yield f"127.0.0.1:{port}"
    _stop(proc)


@pytest.mark.slow
def test_the_printed_url_opens_the_runs_with_their_average_in_a_browser(
    chromium: str, ui: str, board: Board, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    runs = runs_by_hash(board.uri, board.experiment)
    column = f"metrics.`{AVERAGE}`"
    shot = tmp_path / "leaderboard.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(urlunsplit(urlsplit(board.url)._replace(netloc=ui)))  # the printed URL, on this UI's port
        try:
            expect(page.locator(f'.ag-header-cell[col-id="{column}"]')).to_have_text(AVERAGE, timeout=60_000)
            for cell in board.cells:
                run = runs[cell.run_id]
                rows = page.locator(f'[row-id$="{run.info.run_id}"]')
                expect(rows.get_by_text(cell.name, exact=True)).to_be_visible()
                average = rows.locator(f'[col-id="{column}"]')
                expect(average).to_be_visible()
                expect(average).to_have_text(_js_number(run.data.metrics[AVERAGE]))
        finally:
            page.screenshot(path=shot, full_page=True)
            browser.close()
            print(f"screenshot: {shot}")


def _js_number(value: float) -> str:
    """A number as the browser writes it (the shortest round trip, no ``.0`` on whole numbers)."""
    return repr(value).removesuffix(".0")
