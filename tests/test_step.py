"""The training step compiled whole (``train.compile: step``): one graph, the eager step's numbers, clear refusals."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch._inductor.compile_fx import compile_fx, compile_fx_inner

from bench.adapter import Adapter
from bench.backbone import create_backbone
from bench.config import ModelConfig, OptimConfig
from bench.registry import get_method, list_methods
from bench.slot_optim import SlotAdamW
from bench.step import Step, TrainingError

CPU = torch.device("cpu")
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.05, schedule="cosine", warmup_steps=2)
STEPS = 4
Trained = tuple[list[dict[str, float]], dict[str, Tensor]]
"""A run's step values and its parameters after them."""


def _batches(steps: int) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    labels, forgeries = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([-1, -1, -1, -1, 0, 0, 1, 1])
    return [
        {"image": torch.randn(8, 3, 32, 32, generator=g), "label": labels, "forgery": forgeries} for _ in range(steps)
    ]


def _step(name: str, compiled: bool, dtype: torch.dtype = torch.float32) -> Step:
    """The step of ``name`` on a tiny ViT in ``dtype``, over ``STEPS`` steps of :data:`OPTIM`."""
    torch.manual_seed(0)  # the methods that draw their initial factors (LoRA's A, ...) draw the same
    model = get_method(name).apply(create_backbone(ModelConfig(name="test_vit", pretrained=False, img_size=32), 0))
    return Step.build(model.to(dtype).train(), OPTIM, CPU, STEPS, compiled=compiled)


def _train(name: str, compiled: bool, dtype: torch.dtype = torch.float32) -> Trained:
    """``STEPS`` steps of ``name`` on a tiny ViT in ``dtype``: the step's values and the parameters after them."""
    step = _step(name, compiled, dtype)
    batches = [{**b, "image": b["image"].to(dtype)} for b in _batches(STEPS)]
    values = [step([batch], i) for i, batch in enumerate(batches)]
    return values, {n: p.detach().clone() for n, p in step.model.named_parameters()}


@pytest.fixture
def unheld(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Per graph that inductor compiles meanwhile: the inputs it writes in place without holding them static.

    CUDA graphs replay a graph in place only if it writes nothing else (they skip it for "mutated inputs"); this
    reads inductor's own bookkeeping of both, which it keeps on the CPU too.
    """
    found: list[list[str]] = []

    def inner(gm: torch.fx.GraphModule, example_inputs: list[Tensor], **kwargs: Any) -> Any:
        compiled = compile_fx_inner(gm, example_inputs, **kwargs)
        static = set(kwargs.get("static_input_idxs") or ())
        names = [node.name for node in gm.graph.nodes if node.op == "placeholder"]
        found.append([names[i] for i in compiled.mutated_input_idxs if i not in static])
        return compiled

    real = torch.compile
    backend = partial(compile_fx, inner_compile=inner)
    monkeypatch.setattr(torch, "compile", lambda fn, fullgraph, mode: real(fn, fullgraph=fullgraph, backend=backend))
    with torch.compiler.config.patch(force_disable_caches=True):  # a cached graph is not compiled again
        yield found


def _assert_matches(compiled: Trained, eager: Trained, rel: float, atol: float, param_atol: float) -> None:
    """The step's values within ``rel`` (down to ``atol``) and the parameters within ``rel * 10`` (Adam's
    normalisation spreads rounding; down to ``param_atol``)."""
    for ours, theirs in zip(compiled[0], eager[0], strict=True):
        assert ours == pytest.approx(theirs, rel=rel, abs=atol)
    for key, value in eager[1].items():
        torch.testing.assert_close(compiled[1][key], value, rtol=rel * 10, atol=param_atol, msg=key)


OWN_TEST = ("full-ft", "effort", "masm")
ROUNDING_STEERED = ("effort-paper",)
"""Its keep-singular-value loss is an absolute value that starts at exactly zero: the sign of its first gradient is
rounding, so any change of operation order (float64 included) moves its trajectory, eager or compiled."""


@pytest.mark.slow
@pytest.mark.parametrize("name", OWN_TEST)
def test_the_whole_step_compiles_to_one_graph_and_matches_the_eager_step(name: str, unheld: list[list[str]]) -> None:
    eager = _train(name, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = _train(name, compiled=True)  # fullgraph=True: a graph break would raise
    assert counters["stats"]["unique_graphs"] == 1, "the step was traced more than once"
    assert unheld == [[]], "the step writes inputs that CUDA graphs would copy"
    assert [v["lr"] for v in compiled[0]] == [v["lr"] for v in eager[0]]
    _assert_matches(compiled, eager, rel=1e-4, atol=1e-6, param_atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_methods() if "/" not in n and n not in OWN_TEST + ROUNDING_STEERED])
def test_every_method_compiles_to_its_eager_step_or_is_refused_in_one_line(name: str) -> None:
    """In float64 (the losses are read as float32); Adam's normalisation lets rounding of near-zero gradients show in
    a parameter's sixth digit, far below what a hook left out does (OSF's factors: 2.6% apart)."""
    torch._dynamo.reset()
    try:
        compiled = _train(name, compiled=True, dtype=torch.float64)
    except TrainingError as err:
        assert str(err).startswith("train.compile=step: ") and str(err).endswith("; use train.compile=blocks")
        assert "\n" not in str(err)
        return
    _assert_matches(compiled, _train(name, compiled=False, dtype=torch.float64), rel=1e-6, atol=1e-9, param_atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", OWN_TEST)
def test_a_compiled_step_resumes_an_eager_runs_checkpoint_in_one_graph_held_in_place(
    name: str, unheld: list[list[str]]
) -> None:
    """The rates of a loaded optimizer are floats; the step keeps its own tensors (a float is an input of the graph,
    and CUDA graphs skip a graph with one), and saves floats, so a checkpoint is the same under either step."""
    half, batches = STEPS // 2, _batches(STEPS)
    eager = _step(name, compiled=False)
    for i in range(half):
        eager([batches[i]], i)
    checkpoint = copy.deepcopy({"model": eager.model.checkpoint_state(), "optimizer": eager.optimizer.state_dict()})
    rest = [eager([batches[i]], i) for i in range(half, STEPS)]
    torch._dynamo.reset()
    counters.clear()
    resumed = _step(name, compiled=True)
    resumed.model.load_checkpoint_state(checkpoint["model"])
    resumed.optimizer.load_state_dict(checkpoint["optimizer"])
    got = [resumed([batches[i]], i) for i in range(half, STEPS)]
    assert counters["stats"]["unique_graphs"] == 1 and unheld == [[]]
    for ours, theirs in zip(got, rest, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    assert [type(g["lr"]) for g in resumed.optimizer.state_dict()["param_groups"]] == [float] * len(
        eager.optimizer.param_groups
    )


def test_a_gradient_hook_is_refused_by_a_compiled_step() -> None:
    model = Adapter(nn.Linear(2, 2))
    model.backbone.weight.register_hook(lambda grad: grad * 2)
    with pytest.raises(TrainingError, match=r"^train\.compile=step: backbone\.weight has a gradient hook, .*blocks$"):
        Step.build(model, OPTIM, CPU, 1, compiled=True)
    Step.build(model, OPTIM, CPU, 1)  # eager: hooks run as they are


class _ReadsTheHost(Adapter):
    """A method whose loss reads a number to the host, which no graph can hold."""

    def training_loss(self, images: Tensor, labels: Tensor, forgeries: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self(images).logsumexp(-1).mean()
        return loss * (1.0 if loss.item() > 0 else 2.0), {}


@pytest.mark.slow
def test_a_step_that_cannot_be_captured_is_refused_in_one_line() -> None:
    torch._dynamo.reset()
    model = _ReadsTheHost(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)))
    step = Step.build(model, OPTIM, CPU, STEPS, compiled=True)
    with pytest.raises(TrainingError, match=r"^train\.compile=step: .*cannot be captured as one graph .*blocks$"):
        step(_batches(1), 0)


def test_a_compiled_step_refuses_sgd() -> None:
    model = Adapter(nn.Linear(2, 2))
    with pytest.raises(TrainingError, match=r"optim\.name=sgd cannot run in a compiled step"):
        Step.build(model, OptimConfig(name="sgd"), CPU, 1, compiled=True)


def test_torch_adamw_state_resumes_in_the_compiled_steps_optimizer_and_back() -> None:
    """A run resumed with another ``train.compile`` continues as if it had not changed optimizer."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=g) for _ in range(6)]
    start = torch.randn(3, 4, generator=g)
    torch_p, ours_p = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    reference = torch.optim.AdamW([torch_p], lr=0.1, weight_decay=0.05)
    first = torch.optim.AdamW([ours_p], lr=0.1, weight_decay=0.05)
    for grad in grads[:3]:
        torch_p.grad, ours_p.grad = grad.clone(), grad.clone()
        reference.step()
        first.step()
    resumed = SlotAdamW([{"params": [ours_p], "weight_decay": 0.05}], {}, lr=0.1)
    resumed.load_state_dict(first.state_dict())
    for grad in grads[3:5]:
        torch_p.grad, ours_p.grad = grad.clone(), grad.clone()
        reference.step()
        resumed.step()
    torch.testing.assert_close(ours_p.detach(), torch_p.detach())
    back = torch.optim.AdamW([ours_p], lr=0.1, weight_decay=0.05)
    back.load_state_dict(resumed.state_dict())
    torch_p.grad, ours_p.grad = grads[5].clone(), grads[5].clone()
    reference.step()
    back.step()
    torch.testing.assert_close(ours_p.detach(), torch_p.detach())
    assert float(back.state[ours_p]["step"]) == float(reference.state[torch_p]["step"]) == 6
