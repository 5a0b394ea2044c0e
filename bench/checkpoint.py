"""Checkpoint files: written to a temporary name and renamed, so a crash never leaves a torn file, and loaded as
tensors and plain values only, so a planted or downloaded checkpoint cannot run code."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read, phrased as one line naming the file."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint that holds objects other than tensors and plain values (unpickling it could run code)."""


def previous(path: str | Path) -> Path:
    """Where :func:`save_atomic` with ``keep_previous`` moves the file it replaces: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(obj: Any, path: str | Path, keep_previous: bool = False) -> Path:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A failed write removes its temporary file and leaves ``path`` as it was. With ``keep_previous``, the file that
    ``path`` held moves to :func:`previous` first, for :func:`load_latest` to fall back to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _signals_deferred():
        try:
            with tmp.open("wb") as fh:  # through a Python file, so that the operating system's reason reaches us
                torch.save(obj, fh)
        except (OSError, RuntimeError) as err:
            tmp.unlink(missing_ok=True)
            full = _full(err)
            if full:
                raise CheckpointError(f"{full} writing {path}; the previous file is kept") from None
            reason = f"{type(err).__name__}: {err}"
            raise CheckpointError(f"writing {path} failed ({reason}); the previous file is kept") from err
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
    return path


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block ends (their handlers run in the main thread, so only there): a
    stop asked for mid-write then comes after a whole checkpoint, instead of tearing the write into an error."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: asked.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(asked):
            signal.raise_signal(signum)  # to the handlers of before, now that the file is whole


def _full(err: BaseException | None) -> str:
    """``"no space left on the device"`` or ``"disk quota exceeded"`` when that is why ``err`` (or the error it
    arose from: torch's writer reports a failed write as an opaque ``RuntimeError``) happened, else ``""``."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return "no space left on the device"
        if isinstance(err, OSError) and err.errno == errno.EDQUOT:
            return "disk quota exceeded"
        err = err.__cause__ or err.__context__
    return ""


def load(path: str | Path) -> Any:
    """Load a checkpoint on the CPU: tensors, numbers, strings and containers of them, nothing else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).splitlines()[-1] if str(err) else type(err).__name__
        raise UnsafeCheckpoint(
            f"{path} holds objects other than tensors and plain values, refused (loading them could run code): "
            f"{detail[:200]}"
        ) from None
    except (OSError, EOFError, RuntimeError) as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err or 'empty'})") from None


def saved_step(path: str | Path) -> int | None:
    """The optimizer step a training checkpoint holds, read without loading its tensors (memory-mapped); ``None``
    when there is no such file or it cannot be read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return None


def load_latest(path: str | Path, warn: Callable[[str], object] = print) -> Any | None:
    """:func:`load` of ``path``, else of its :func:`previous` (``warn`` says why), else ``None`` (a fresh start).

    An :class:`UnsafeCheckpoint` is raised, never skipped: it is a planted file, not an accident.
    """
    for candidate in (Path(path), previous(path)):
        if not candidate.exists():
            continue
        try:
            return load(candidate)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as err:
            warn(f"{err}; falling back to the previous checkpoint or a fresh start")
    return None


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that writers of the checkpoints ``names`` left when they died mid-write (call
    only as the folder's one owner)."""
    stale = sorted(p for name in names for p in Path(folder).glob(f".{name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
