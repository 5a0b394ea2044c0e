"""Checkpoints: tensors only (a planted pickle never runs), a corrupt ``last.pt`` falls back to the previous one,
dead writers' temporary files are removed, a failed write keeps the previous file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.grid import resolve_config
from bench.train import LAST, train
from tests.conftest import tiny_config


class Planted:
    """Unpickling this creates a file: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_in_last_pt_is_refused_and_never_runs(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path))
    run = tmp_path / "run"
    assert train(cfg, run, stop_after=2) == {}
    marker = tmp_path / "ran"
    torch.save({"step": 2, "payload": Planted(marker)}, run / LAST)
    with pytest.raises(checkpoint.UnsafeCheckpoint, match=r"last\.pt holds objects other than tensors"):
        train(cfg, run)
    assert not marker.exists()


def test_a_truncated_last_pt_resumes_from_the_previous_checkpoint(
    tiny_cards: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path))
    uninterrupted = train(cfg, tmp_path / "a")
    run = tmp_path / "b"
    assert train(cfg, run, stop_after=5) == {}  # checkpoints at steps 2, 3 (epoch end) and 4
    assert checkpoint.load(checkpoint.previous(run / LAST))["step"] == 3
    data = (run / LAST).read_bytes()
    (run / LAST).write_bytes(data[: len(data) // 3])
    (run / ".last.pt.4242.tmp").write_bytes(b"half a checkpoint")  # a writer killed mid-write
    (run / ".claim.0.4242.tmp").write_text("{}")  # not a checkpoint's: a launcher may be writing it now
    resumed_from: list[float] = []
    with caplog.at_level(logging.WARNING, logger="bench.train"):
        resumed = train(cfg, run, log=lambda m, s: resumed_from.extend([m[k] for k in m if k == "resume_step"]))
    assert resumed_from == [3.0]
    assert resumed == uninterrupted
    assert not (run / ".last.pt.4242.tmp").exists() and (run / ".claim.0.4242.tmp").exists()
    assert any("last.pt is unreadable" in r.message for r in caplog.records)


def test_with_no_readable_checkpoint_the_run_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / LAST).write_bytes(b"")
    warnings: list[str] = []
    assert checkpoint.load_latest(tmp_path / LAST, warn=warnings.append) is None
    assert len(warnings) == 1 and "last.pt is unreadable" in warnings[0]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = checkpoint.save_atomic({"step": torch.tensor(1)}, tmp_path / LAST)

    class Unwritable:
        def __reduce__(self) -> tuple:
            raise OSError(28, "No space left on device")

    with pytest.raises(checkpoint.CheckpointError, match=r"no space left on the device writing .*last\.pt"):
        checkpoint.save_atomic({"step": Unwritable()}, path, keep_previous=True)
    assert checkpoint.load(path)["step"].item() == 1
    assert list(tmp_path.iterdir()) == [path]
