"""The CUDA path: SVD layers under bf16 autocast, constraints kept in float32, the compiled step as CUDA graphs,
and ``bench perf`` with MFU.

Skipped without a CUDA device; run them on one with ``nox -s tests -- tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from bench import perf
from bench.backbone import create_backbone
from bench.config import ModelConfig, OptimConfig
from bench.step import Step, backward
from methods.subspaces.layer import SubspaceLayer
from tests.test_perf import _run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def test_low_rank_linear_under_bf16_autocast_tracks_float32() -> None:
    torch.manual_seed(0)
    layer = SubspaceLayer(nn.Linear(256, 768), K=4, r=1, blocks=3).to(CUDA)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.mul_(1.5)
    layer.route = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], device=CUDA)
    x = torch.randn(4, 50, 256, device=CUDA, requires_grad=True)

    def run(amp: bool) -> list[torch.Tensor]:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            y = layer(x)
        y.float().square().mean().backward()
        assert x.grad is not None
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        assert len(grads) == 3 and all(g.dtype == torch.float32 for g in grads)
        return [y.float().detach(), x.grad.clone(), torch.cat([g.flatten() for g in grads])]

    for want, got in zip(run(False), run(True), strict=True):
        assert ((got - want).norm() / want.norm()).item() < 3e-2


def test_constraints_stay_float32_under_autocast() -> None:
    method, options = perf._resolve("masm", 1)
    backbone = create_backbone(ModelConfig(name="test_vit", pretrained=False, img_size=32), seed=0)
    model = method.build(backbone, options).to(CUDA).train()
    parts = backward(model.training_loss, perf.synthetic_batch(8, 32, CUDA))  # bf16 autocast, as the loop
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert parts["orth"] < 1e-8 and parts["spec"] < 1e-8  # zero at injection; bf16 rounding would leave ~1e-5


@pytest.mark.parametrize("name", ["full-ft", "effort", "masm"])
def test_the_compiled_step_replays_as_cuda_graphs(name: str) -> None:
    """``train.compile: step`` on CUDA (``reduce-overhead``): torch skips none of the step's graphs."""
    torch._dynamo.reset()
    counters.clear()
    method, options = perf._resolve(name, 4)
    model = method.build(create_backbone(ModelConfig(name="test_vit", pretrained=False, img_size=32), seed=0), options)
    step = Step.build(model.to(CUDA).train(), OptimConfig(), CUDA, 4, compiled=True)
    batch = perf.synthetic_batch(8, 32, CUDA)
    losses = [step([batch], i)["loss"] for i in range(4)]
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert all(math.isfinite(loss) for loss in losses)


def test_perf_of_the_compiled_step_on_cuda_counts_no_cuda_graph_skips(tmp_path, tiny_cards, capsys) -> None:
    argv = ["--backbone", "test_vit", "--img-size", "32", "--methods", "masm", "--device", "cuda", "--steps", "2"]
    argv += ["--warmup", "4", "--card", tiny_cards[0], "--loader-batches", "2", "--compile", "step"]
    assert _run([*argv, "--out", str(tmp_path), "--json"]) == 0
    assert [r[perf.SKIPS] for r in json.loads(capsys.readouterr().out)] == [0, 0]


def test_perf_on_cuda_reports_mfu(tmp_path, tiny_cards, capsys) -> None:
    argv = ["--backbone", "test_vit", "--img-size", "32", "--methods", "masm", "--device", "cuda", "--steps", "2"]
    argv += ["--warmup", "1", "--card", tiny_cards[0], "--loader-batches", "2"]
    argv += ["--out", str(tmp_path), "--json", "--profile"]
    assert _run(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["full-ft", "masm"]
    assert all(0 < r["mfu"] < 1 and r["peak_mem_mb"] > 0 for r in rows)
    assert all(r["prof_kernels"] > 100 and 0 < r["prof_device_busy"] <= 1 for r in rows)  # a share of the wall time
    assert all(r["repeats"] == 1 and r["step_spread"] == 0 for r in rows)  # one process per row on CUDA by default
