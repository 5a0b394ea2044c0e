"""The tracking journal of a run folder: every record a run sends to MLflow is first appended to
``tracking.jsonl``, and ``tracking.json`` says where it goes (store, experiment, MLflow run) and how many records the
store has. A store that stops answering mid-run therefore costs nothing: training goes on, the records wait in the
folder, and :func:`bench.tracking.sync` (``bench sync``) sends them once the store is back. Records carry their
own timestamps, so sending one twice changes nothing (MLflow drops a metric identical in key, step, time and value).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RECORDS, HEAD = "tracking.jsonl", "tracking.json"


@dataclass
class Head:
    """Where a journal's records go and how many the store has (``run_id`` is ``None`` until the store made one)."""

    uri: str
    experiment: str
    run_id: str | None = None
    sent: int = 0


class Journal:
    """The journal of one run folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def exists(self) -> bool:
        return (self.folder / HEAD).is_file()

    def head(self) -> Head:
        return Head(**json.loads((self.folder / HEAD).read_text()))

    def write_head(self, head: Head) -> None:
        tmp = self.folder / f".{HEAD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(head)))
        os.replace(tmp, self.folder / HEAD)

    def start(self, uri: str, experiment: str) -> list[dict[str, Any]]:
        """Point the journal at ``uri``/``experiment``; a journal kept for another store or experiment is begun
        anew, and the records it had not sent there are returned (the caller says they are dropped)."""
        if self.exists():
            head = self.head()
            if (head.uri, head.experiment) == (uri, experiment):
                return []
            dropped = self.pending()
            self.clear()
        else:
            dropped = []
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write_head(Head(uri, experiment))
        return dropped

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` durably (on a line of its own, after a line a crash may have torn)."""
        with (self.folder / RECORDS).open("a+b") as fh:
            torn = fh.tell() > 0 and fh.seek(-1, os.SEEK_END) >= 0 and fh.read(1) != b"\n"
            fh.write((b"\n" if torn else b"") + json.dumps(record, sort_keys=True).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a line torn by a crash mid-write is not one)."""
        path = self.folder / RECORDS
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def pending(self) -> list[dict[str, Any]]:
        """The records the store does not have yet."""
        return self.records()[self.head().sent :] if self.exists() else []

    def ended(self) -> str | None:
        """The status of the last record when it ends the run (``FINISHED``, ``FAILED``, ``KILLED``), else ``None``."""
        records = self.records()
        return records[-1]["status"] if records and records[-1]["op"] == "finish" else None

    def clear(self) -> None:
        for name in (RECORDS, HEAD):
            (self.folder / name).unlink(missing_ok=True)


def unsynced(runs_dir: str | Path) -> list[Journal]:
    """The journals under ``runs_dir`` (one level: run folders) that hold records their store does not have."""
    root = Path(runs_dir)
    folders = sorted(p.parent for p in root.glob(f"*/{HEAD}")) if root.is_dir() else []
    return [j for j in map(Journal, folders) if j.pending()]
