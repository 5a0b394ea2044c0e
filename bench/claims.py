"""Claiming a run folder, so that two launches of the same grid never run a cell twice.

A claim is a file ``claim.<n>`` in the run folder, created with ``O_EXCL``: of two launchers racing for the same
generation ``n`` exactly one succeeds. A claim is released when its run ends (finished or failed); one whose
owner is gone without releasing it (its process died, its Slurm job ended) is stale, and so is one whose owner
record is still empty or unreadable :data:`GRACE_S` after the file was made (a launcher killed between creating and
writing it, or a full disk). Either way the next generation may be claimed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Owner = dict[str, Any]
PREFIX = "claim."
GRACE_S = 60.0
"""Seconds after which a claim whose owner record cannot be read is stale."""


def _generations(folder: Path) -> list[int]:
    names = (p.name.removeprefix(PREFIX) for p in folder.glob(f"{PREFIX}*"))
    return sorted(int(n) for n in names if n.isdigit())


def current(folder: Path) -> tuple[int, Owner] | None:
    """The newest claim of ``folder`` and its owner (an unreadable, half-written owner reads as ``{}``)."""
    generations = _generations(folder) if folder.is_dir() else []
    if not generations:
        return None
    n = generations[-1]
    try:
        return n, json.loads((folder / f"{PREFIX}{n}").read_text())
    except (OSError, json.JSONDecodeError):
        return n, {}


def claim(folder: Path, owner: Owner, is_stale: Callable[[Owner], bool]) -> int | None:
    """Claim ``folder`` for ``owner``; returns the claim's generation, or ``None`` when a live owner holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    held = current(folder)
    if held is not None and not free(folder, *held, is_stale):
        return None
    n = 0 if held is None else held[0] + 1
    try:
        fd = os.open(folder / f"{PREFIX}{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        json.dump(owner, fh)
    return n


def free(folder: Path, n: int, owner: Owner, is_stale: Callable[[Owner], bool]) -> bool:
    """Whether claim ``n`` of ``folder`` no longer holds it: released, stale, or unreadable past the grace period."""
    if not owner:
        try:
            return time.time() - (folder / f"{PREFIX}{n}").stat().st_mtime > GRACE_S
        except FileNotFoundError:
            return True
    return bool(owner.get("released")) or is_stale(owner)


def update(path: Path, n: int, **fields: Any) -> None:
    """Add fields (e.g. the Slurm job id once submitted) to claim ``n`` of the run folder ``path``, atomically."""
    claim_file = path / f"{PREFIX}{n}"
    owner = json.loads(claim_file.read_text())
    tmp = path / f".{PREFIX}{n}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**owner, **fields}))
    os.replace(tmp, claim_file)


def this_process(launcher: str) -> Owner:
    """An owner record for the current process."""
    return {"launcher": launcher, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def process_gone(owner: Owner) -> bool:
    """True when the owner was a process on this host that no longer runs."""
    if owner.get("host") != socket.gethostname() or "pid" not in owner:
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def release(folder: Path) -> None:
    """Mark the newest claim of ``folder`` as released (its run ended, finished or failed)."""
    held = current(folder)
    if held is not None:
        update(folder, held[0], released=True)
