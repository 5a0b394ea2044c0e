"""Data-parallel training: two CPU processes with gloo give the metrics of one process on the same data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from bench import distributed
from bench.config import RunConfig
from bench.grid import resolve_config
from bench.train import train
from tests.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, cfg: RunConfig, run_dir: Path, port: int, queue: mp.Queue) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    assert distributed.init_from_env()
    assert distributed.world() == (rank, 2)
    queue.put((rank, train(cfg, run_dir)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full-ft", "masm"])
def test_two_gloo_processes_match_one(method: str, tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": method}))
    single = train(cfg, tmp_path / "single")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, cfg, tmp_path / "ddp", port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    keys = [k for k in single if k.startswith(("auc/", "last/auc/", "eer/", "val/auc"))]
    assert keys and {k: results[0][k] for k in keys} == pytest.approx({k: single[k] for k in keys}, abs=1e-4)
    assert {k: results[1][k] for k in keys} == {k: results[0][k] for k in keys}  # every rank sees the same metrics
    assert (tmp_path / "ddp" / "scores" / "selected").is_dir()
