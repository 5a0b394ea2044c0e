"""Atomic checkpoint files: written to a temporary name and renamed, so a crash never leaves a torn file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_atomic` on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
