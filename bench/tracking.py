"""MLflow tracking: one MLflow run per grid cell, found again by the hash of its resolved config.

The default store is the embedded ``sqlite:///results/mlflow.db`` (no server); ``tracking.uri`` or
``MLFLOW_TRACKING_URI`` points at a server instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.config import ConfigError, RunConfig, flatten
from bench.locks import locked

DEFAULT_URI = "sqlite:///results/mlflow.db"
PACKAGES = ("torch", "torchvision", "timm", "mlflow", "numpy", "scikit-learn", "peft", "submitit")
HASH_TAG = "config_hash"
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def tracking_uri(cfg: RunConfig) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, in one line, when an MLflow server URI has no server answering."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri {uri}: no MLflow server answers ({reason}); start one (`mlflow server --port N`), or "
            "unset tracking.uri and MLFLOW_TRACKING_URI for the embedded sqlite store"
        ) from None


_READY: set[str] = set()
"""The sqlite stores this process has made sure exist."""


def _client(uri: str) -> Any:
    """An MLflow client; a sqlite store is first created under a lock beside it, by one process of many (MLflow's
    table creation is not safe when several processes run it at once on a fresh file)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _READY:
        database = Path(uri.removeprefix("sqlite:///"))
        with locked(database.with_name(f".{database.name}.lock")):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates or migrates the tables
        _READY.add(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, create: bool = True) -> str | None:
    """The id of experiment ``name``, created when absent (once, even when several processes ask at once)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None or not create:
        return None if experiment is None else experiment.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except MlflowException:  # another process created it in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of an embedded sqlite store go beside it (``mlartifacts/``), not into the working directory;
    a server decides for itself (``None``)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).resolve().as_uri()


def runs_by_hash(uri: str, experiment: str) -> dict[str, Any]:
    """The newest MLflow run of each config hash in ``experiment`` (``{}`` when the experiment does not exist)."""
    exp_id = experiment_id(uri, experiment, create=False)
    if exp_id is None:
        return {}
    runs = _client(uri).search_runs([exp_id], max_results=50_000, order_by=["attributes.start_time ASC"])
    return {run.data.tags[HASH_TAG]: run for run in runs if HASH_TAG in run.data.tags}


def provenance() -> dict[str, str]:
    """Git commit and dirty flag of the project, and the versions of the packages that shape results."""
    tags: dict[str, str] = {}
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        tags["git.sha"], tags["git.dirty"] = sha.stdout.strip(), str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.CalledProcessError):
        tags["git.sha"], tags["git.dirty"] = "unknown", "unknown"
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tags


class Run:
    """One MLflow run for one cell; reopened (not duplicated) when the same config runs again."""

    def __init__(self, cfg: RunConfig, experiment: str, name: str, tags: dict[str, str]) -> None:
        self.uri = tracking_uri(cfg)
        self.client = _client(self.uri)
        exp_id = experiment_id(self.uri, experiment)
        previous = runs_by_hash(self.uri, experiment).get(cfg.run_id())
        if previous is not None and previous.info.status != FINISHED:
            self.run_id = previous.info.run_id
            self.client.update_run(self.run_id, status=RUNNING)
        else:
            self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            params = flatten(cfg.to_dict())
            self.client.log_batch(self.run_id, params=_params(params))
        all_tags = {HASH_TAG: cfg.run_id(), "status": RUNNING, **provenance(), **tags}
        self.client.log_batch(self.run_id, tags=_tags(all_tags))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[start : start + 900])

    def log_artifacts(self, folder: Path, exclude_suffixes: tuple[str, ...] = (".pt",)) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix not in exclude_suffixes:
                parent = path.parent.relative_to(folder).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def finish(self, status: str, reason: str = "") -> None:
        """End the run with ``status``; a finished run drops the reason an earlier stop or failure left."""
        tags = {"status": status, **({"failure_reason": reason[:4000]} if reason else {})}
        self.client.log_batch(self.run_id, tags=_tags(tags))
        if status == FINISHED and "failure_reason" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "failure_reason")
        self.client.set_terminated(self.run_id, status=status)


def _params(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]
