"""MLflow tracking: one MLflow run per grid cell, found again by the hash of its resolved config.

The default store is the embedded ``sqlite:///results/mlflow.db`` (no server); ``tracking.uri`` or
``MLFLOW_TRACKING_URI`` points at a server instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.config import RunConfig, flatten
from bench.errors import ConfigError
from bench.journal import HEAD, RECORDS, Head, Journal
from bench.locks import locked

logger = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow.db"
PACKAGES = ("torch", "torchvision", "timm", "mlflow", "numpy", "scikit-learn", "peft", "submitit")
HASH_TAG = "config_hash"
KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"
"""The experiment tag from which MLflow's UI tells a model-training experiment (opened on its runs) from a GenAI one."""
NOTE = "mlflow.note.content"
"""The tag that MLflow shows as an experiment's or a run's description (Markdown)."""
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""How long one call to a tracking server may take before a run goes on offline (a few seconds for a server that
is gone, 30 s for one that hangs; MLflow's own defaults retry for minutes). Set in the environment to change."""


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

    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
    if uri.startswith("sqlite:///") and uri not in _READY:
        database = Path(uri.removeprefix("sqlite:///"))
        with locked(database.with_name(f".{database.name}.lock")):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates or migrates the tables
        _READY.add(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, create: bool = True) -> str | None:
    """The id of experiment ``name``, created when absent (once, even when several processes ask at once) as a
    model-training experiment."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None or not create:
        return None if experiment is None else experiment.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, _artifact_location(uri, name), tags={KIND: TRAINING})
    except MlflowException:  # another process created it in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def set_experiment_tags(uri: str, exp_id: str, tags: dict[str, str]) -> None:
    client = _client(uri)
    for key, value in tags.items():
        client.set_experiment_tag(exp_id, key, value)


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
    """One MLflow run for one cell, reopened (not duplicated) when the same config runs again.

    Every record goes through the run folder's :class:`~bench.journal.Journal`. When the store fails, the run goes
    on offline (said once, as a warning): the records wait in the folder, one more try is made when the run ends,
    and :func:`sync` sends what is left.
    """

    def __init__(self, cfg: RunConfig, experiment: str, name: str, tags: dict[str, str], folder: Path) -> None:
        self.uri = tracking_uri(cfg)
        self.journal = Journal(folder)
        self.offline = False
        dropped = self.journal.start(self.uri, experiment)
        if dropped:
            logger.warning(
                "%s: %d records for another store or experiment were never sent; dropped", folder, len(dropped)
            )
        self.flush()  # what an earlier attempt could not send
        params = {k: str(v)[:6000] for k, v in flatten(cfg.to_dict()).items()}
        all_tags = {HASH_TAG: cfg.run_id(), "status": RUNNING, **provenance(), **tags}
        self._record({"op": "open", "hash": cfg.run_id(), "name": name, "params": params, "tags": all_tags})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._record({"op": "metrics", "step": step, "values": {k: float(v) for k, v in metrics.items()}})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record({"op": "tags", "values": tags})

    def log_artifacts(self) -> None:
        """Upload the run folder's files (not checkpoints, temporaries or the journal)."""
        self._record({"op": "artifacts"})

    def finish(self, status: str, reason: str = "") -> None:
        """End the run with ``status``; a finished run drops the reason an earlier stop or failure left."""
        self.offline = False  # one more try: the store may be back
        self._record({"op": "finish", "status": status, "reason": reason[:4000]})

    @property
    def synced(self) -> bool:
        """Whether the store has every record."""
        return not self.journal.pending()

    def _record(self, record: dict[str, Any]) -> None:
        self.journal.append({**record, "time": int(time.time() * 1000)})
        self.flush()

    def flush(self) -> None:
        if self.offline:
            return
        try:
            sync(self.journal)
        except Exception as err:  # whatever the store does, training goes on
            self.offline = True
            logger.warning(
                "tracking store %s failed (%s); the run goes on, its folder %s keeps every record, and `bench sync` "
                "sends them once the store answers",
                self.uri,
                one_line(err),
                self.journal.folder,
            )


def one_line(err: BaseException) -> str:
    """An exception as one short line: the operating system's reason where the text has one (MLflow's carry the
    request, the retries and the connection pool around it)."""
    text = str(err).strip()
    reason = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Caused by \w+", text)
    first = reason.group(0) if reason else (text.splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def sync(journal: Journal) -> int:
    """Send the records of ``journal`` that its store does not have, in order; returns how many were sent.

    Safe to run twice or to interrupt: the head moves after each record, and a record sent again changes nothing.
    """
    head = journal.head()
    records = journal.records()
    first = head.sent
    if first >= len(records):
        return 0
    client = _client(head.uri)
    for index in range(first, len(records)):
        head.run_id = _send(client, head, records[index], journal.folder)
        head.sent = index + 1
        journal.write_head(head)
    return len(records) - first


def _send(client: Any, head: Head, record: dict[str, Any], folder: Path) -> str:
    """Apply one journal record to the store; returns the MLflow run it went to."""
    if record["op"] == "open":
        previous = runs_by_hash(head.uri, head.experiment).get(record["hash"])
        if previous is not None and previous.info.status != FINISHED:
            run_id = previous.info.run_id
            client.update_run(run_id, status=RUNNING)
        else:
            exp_id = experiment_id(head.uri, head.experiment)
            run_id = client.create_run(exp_id, start_time=record["time"], run_name=record["name"]).info.run_id
            client.log_batch(run_id, params=_params(record["params"]))
        client.log_batch(run_id, tags=_tags(record["tags"]))
        return run_id
    if head.run_id is None:
        raise RuntimeError(f"{folder / RECORDS}: a {record['op']} record before the run was opened")
    run_id = head.run_id
    if record["op"] == "metrics":
        from mlflow.entities import Metric

        items = [Metric(k, v, record["time"], record["step"]) for k, v in record["values"].items()]
        for start in range(0, len(items), 900):
            client.log_batch(run_id, metrics=items[start : start + 900])
    elif record["op"] == "tags":
        client.log_batch(run_id, tags=_tags(record["values"]))
    elif record["op"] == "artifacts":
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix not in (".pt", ".tmp") and path.name not in (RECORDS, HEAD):
                parent = path.parent.relative_to(folder).as_posix()
                client.log_artifact(run_id, str(path), None if parent == "." else parent)
    elif record["op"] == "finish":
        status, reason = record["status"], record["reason"]
        client.log_batch(run_id, tags=_tags({"status": status, **({"failure_reason": reason} if reason else {})}))
        if status == FINISHED and "failure_reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "failure_reason")
        client.set_terminated(run_id, status=status, end_time=record["time"])
    else:
        raise RuntimeError(f"{folder / RECORDS}: unknown record {record['op']!r}")
    return run_id


def _params(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]
