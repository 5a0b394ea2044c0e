"""Sessions: ``bench`` (the main job), ``tests``, ``lint``. Each installs what it needs into its own venv."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]  # `nox` alone; bench, perf and ui are asked for by name
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
LAST_GRID = Path("results") / "last-grid.json"  # written by `bench grid` (bench.leaderboard.LAST_GRID)
TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # the pair that installs on the x86_64 CI machine


def _install(session: nox.Session, *extras: str) -> None:
    session.install(*TORCH)
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")
    # MTCNN face detection for `bench data prepare`; its metadata pins an old torch, so without its dependencies
    session.install("--no-deps", "facenet-pytorch>=2.5")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run a grid end to end and print its table: ``nox -s bench -- --grid ablations.yaml`` (default: smoke)."""
    _install(session)
    args = session.posargs or ["--grid", "smoke"]
    session.run("bench", "grid", *args)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (``nox -s tests -- -k metrics`` passes arguments to pytest)."""
    _install(session, "test")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check, and mypy on the engine and the methods (against the installed packages)."""
    _install(session, "lint")
    session.run("ruff", "check", "bench", "methods", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "bench", "methods", "tests", "noxfile.py")
    session.run("mypy", "bench", "methods")


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """The cost of every method side by side: ``nox -s perf -- --backbone vit_small_patch16_224 --device cpu``."""
    _install(session)
    session.run("bench", "perf", *(session.posargs or ["--backbone", "vit_small_patch16_224", "--device", "cpu"]))


def _port(args: list[str]) -> str:
    """The ``--port``/``-p`` of ``mlflow ui`` arguments (its default, 5000, without)."""
    port = "5000"
    for flag, value in itertools.pairwise([*args, ""]):
        if flag in ("--port", "-p"):
            port = value
        elif flag.startswith("--port="):
            port = flag.removeprefix("--port=")
    return port


def _leaderboard(store: str, port: str) -> str:
    """Where the last grid's leaderboard is (``bench grid`` records it in ``results/last-grid.json``)."""
    if not LAST_GRID.is_file():
        return "no grid has run yet: `nox -s bench` runs one"
    last = json.loads(LAST_GRID.read_text())
    if last["tracking_uri"] == store:
        return f"leaderboard of {last['experiment']}: http://127.0.0.1:{port}/{last['path']}"
    return f"the last grid, {last['experiment']}, went to {last['tracking_uri']}, not to this store ({store})"


@nox.session(python=PYTHON)
def ui(session: nox.Session) -> None:
    """The MLflow UI on the results store, on loopback, and the URL of the last grid's leaderboard:
    ``nox -s ui -- --port 5001`` (other ``mlflow ui`` flags too)."""
    session.install("mlflow>=3.0")
    store = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///results/mlflow.db")
    session.log(_leaderboard(store, _port(session.posargs)))
    session.run("mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", *session.posargs)
