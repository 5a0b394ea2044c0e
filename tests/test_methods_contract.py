"""Contract tests every registered method must pass, parametrised over the registry."""

from __future__ import annotations

import math

import pytest
import torch

from bench.adapter import Adapter
from bench.backbone import create_backbone
from bench.config import ModelConfig, OptimConfig
from bench.registry import UnsupportedBackbone, get_method, list_methods
from bench.step import Step

BACKBONES = {
    "vit": ModelConfig(name="test_vit", pretrained=False, img_size=32),
    "cnn": ModelConfig(name="test_efficientnet", pretrained=False, img_size=32),
}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    forgeries = torch.tensor([-1, -1, -1, -1, 0, 0, 1, 1])
    return images, labels, forgeries


def _apply(name: str, cfg: ModelConfig, seed: int = 0) -> Adapter:
    """The method on the backbone, or a skip where its registration says it cannot adapt this one."""
    try:
        return get_method(name).apply(create_backbone(cfg, seed=seed))
    except UnsupportedBackbone as err:
        assert get_method(name).limits, f"{name} refused a backbone without saying so in its registration: {err}"
        pytest.skip(f"{name}: {get_method(name).limits}")


def _step(model: Adapter) -> None:
    """One step of the loop's :class:`~bench.step.Step` (AdamW, decay 0.05, rate 1e-2, clipping at 1)."""
    step = Step.build(model, OptimConfig(lr=1e-2, weight_decay=0.05, schedule="none"), torch.device("cpu"), 1)
    model.train()
    images, labels, forgeries = _batch()
    values = step([{"image": images, "label": labels, "forgery": forgeries}], 0)
    assert all(math.isfinite(v) for v in values.values())


@pytest.fixture(params=list(BACKBONES))
def model_cfg(request: pytest.FixtureRequest) -> ModelConfig:
    return BACKBONES[request.param]


@pytest.mark.parametrize("name", list_methods())
def test_outputs_finite_and_two_class(name: str, model_cfg: ModelConfig) -> None:
    model = _apply(name, model_cfg, 0)
    with model.evaluating():
        logits = model(_batch()[0])
    assert logits.shape == (8, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_methods())
def test_only_declared_parameters_change(name: str, model_cfg: ModelConfig) -> None:
    model = _apply(name, model_cfg, 0)
    declared = {n for n, _ in model.trainable_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "one optimizer step changed nothing"
    assert changed <= declared, f"undeclared parameters changed: {sorted(changed - declared)[:5]}"


@pytest.mark.parametrize("name", list_methods())
def test_declared_count_equals_counted(name: str, model_cfg: ModelConfig) -> None:
    model = _apply(name, model_cfg, 0)
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grouped = sum(p.numel() for g in model.param_groups(0.1) for p in g["params"])
    assert model.num_trainable() == counted == grouped > 0


@pytest.mark.parametrize("name", list_methods())
def test_identity_at_initialisation(name: str, model_cfg: ModelConfig) -> None:
    reference = create_backbone(model_cfg, seed=3).eval()
    model = _apply(name, model_cfg, 3)
    images = _batch(1)[0]
    with torch.no_grad():
        expected = reference(images)
    with model.evaluating():
        got = model(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_methods())
def test_checkpoint_round_trip(name: str, model_cfg: ModelConfig) -> None:
    model = _apply(name, model_cfg, 0)
    _step(model)
    state = model.checkpoint_state()
    fresh = _apply(name, model_cfg, 0)  # same frozen weights, untrained
    images = _batch(2)[0]
    with fresh.evaluating(), model.evaluating():
        assert not torch.equal(fresh(images), model(images))
    fresh.load_checkpoint_state(state)
    with model.evaluating(), fresh.evaluating():
        torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).limits])
def test_a_method_that_cannot_adapt_a_backbone_says_so_in_one_line(name: str) -> None:
    with pytest.raises(UnsupportedBackbone, match=f"method {name.split('/')[0]} adapts") as err:
        get_method(name).apply(create_backbone(BACKBONES["cnn"], seed=0))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", [n for n in list_methods() if n.startswith(("masm", "fmsd"))])
def test_slotted_steps_read_nothing_back_to_the_host(name: str) -> None:
    """A step of a method with slots (mask refreshes included) reads no scalar to the host: nothing a GPU waits on."""
    model = get_method(name).apply(create_backbone(BACKBONES["vit"], seed=0), mask_every=2)
    images, labels, forgeries = _batch()
    batch = {"image": images, "label": labels, "forgery": forgeries}
    model.prepare(lambda n: iter([batch] * n), None)
    if not model.slots():
        pytest.skip(f"{name} has no slots: it steps with torch's AdamW (which reads its step counts on a CPU)")
    step = Step.build(model, OptimConfig(lr=1e-2), torch.device("cpu"), 4)
    model.train()
    step([batch], 0)
    with torch.profiler.profile() as prof:
        for i in range(1, 4):
            step([batch], i)
    assert not [e for e in prof.key_averages() if e.key == "aten::_local_scalar_dense"]
