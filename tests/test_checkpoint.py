"""Checkpoints: tensors only (a planted pickle never runs), a corrupt ``last.pt`` falls back to the previous one,
dead writers' temporary files are removed, a failed write keeps the previous file."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), mounted for the test: mounting needs root, as in CI."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_named_keeps_the_previous_checkpoint_and_leaves_no_temporary(small_disk: Path) -> None:
    path = checkpoint.save_atomic({"step": torch.tensor(1)}, small_disk / LAST, keep_previous=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"^no space left on the device writing .*last\.pt; the prev"):
        checkpoint.save_atomic({"step": torch.tensor(2), "w": torch.zeros(1 << 20)}, path, keep_previous=True)
    assert checkpoint.load(path)["step"].item() == 1
    assert list(small_disk.iterdir()) == [path]


class _StopsMidWrite:
    """Pickled inside torch.save: asks this process to stop (SIGTERM) while the checkpoint is being written."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        os.kill(os.getpid(), signal.SIGTERM)
        return int, (7,)


def test_a_stop_asked_for_mid_write_comes_after_a_whole_checkpoint(tmp_path: Path) -> None:
    class Stopped(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stopped

    old = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            checkpoint.save_atomic({"step": 3, "mid": _StopsMidWrite()}, tmp_path / "last.pt")
    finally:
        signal.signal(signal.SIGTERM, old)
    whole = torch.load(tmp_path / "last.pt", weights_only=False)  # the test's own object: not a plain value
    assert whole == {"step": 3, "mid": 7}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
