"""FMSD: layers chosen by gradient bias^2/variance before training, only those decomposed; resume keeps the choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.backbone import create_backbone
from bench.config import ModelConfig, OptimConfig
from bench.grid import resolve_config
from bench.registry import get_method
from bench.step import Step
from bench.train import train
from methods.fmsd import FMSD, choose, layer_scores
from methods.subspaces.layer import SubspaceLayer
from tests.conftest import tiny_config

VIT = ModelConfig(name="test_vit", pretrained=False, img_size=32)


def _batches(n: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield {
            "image": torch.randn(8, 3, 32, 32, generator=g),
            "label": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
            "forgery": torch.tensor([-1, -1, -1, -1, 0, 0, 1, 1]),
        }


def _scripted(model: FMSD, steady: set[int], batches: int = 6):
    """Gradients whose mean dominates their spread on the ``steady`` layers and vanishes in the spread elsewhere."""
    g = torch.Generator().manual_seed(1)
    shapes = [dict(model.backbone.named_modules())[n].weight.shape for n in model.candidates]
    direction = [torch.randn(s, generator=g) for s in shapes]
    for _ in range(batches):
        yield [d + (0.1 if i in steady else 10.0) * torch.randn(d.shape, generator=g) for i, d in enumerate(direction)]


def test_the_layers_with_the_highest_bias_to_variance_are_the_ones_decomposed() -> None:
    model = get_method("fmsd").apply(create_backbone(VIT, seed=0), keep=0.25)
    steady = {1, 4, 10}
    model._gradients = lambda batches: _scripted(model, steady)  # type: ignore[method-assign]
    model.prepare(_batches, None)
    assert model.selected == [model.candidates[i] for i in sorted(steady)]
    wrapped = {n for n, m in model.backbone.named_modules() if isinstance(m, SubspaceLayer)}
    assert wrapped == set(model.selected)


def test_scores_and_choices_follow_their_rules() -> None:
    grads = [[torch.ones(4) + 0.01 * i, torch.randn(4) * 5, torch.full((4,), 3.0)] for i in range(5)]
    snr = layer_scores(grads, 3, "gradsnr", ema=0.9)
    norm = layer_scores(grads, 3, "gradnorm", ema=0.9)
    assert snr.argmax() in (0, 2) and snr[1] < snr[0] and norm.argmax() in (1, 2)
    assert choose(snr, 0.34, "all", 0) == [0, 1, 2] and len(choose(snr, 0.34, "random", 0)) == 1
    assert choose(torch.tensor([0.1, 0.9, 0.5]), 0.67, "gradsnr", 0) == [1, 2]


def test_unselected_layers_have_no_subspaces_and_stay_bit_identical_and_the_output_starts_unchanged() -> None:
    reference = create_backbone(VIT, seed=3).eval()
    model = get_method("fmsd").apply(create_backbone(VIT, seed=3))
    model.prepare(_batches, None)
    images = next(_batches(1))["image"]
    with torch.no_grad():
        expected = reference(images)
    with model.evaluating():
        torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-6)
    step = Step.build(model, OptimConfig(lr=1e-2, weight_decay=0.05, schedule="none"), torch.device("cpu"), 3)
    for i, batch in enumerate(_batches(3)):
        step([batch], i)
    modules, original = dict(model.backbone.named_modules()), dict(reference.named_modules())
    unselected = [n for n in model.candidates if n not in model.selected]
    assert unselected and all(not isinstance(modules[n], SubspaceLayer) for n in unselected)
    assert all(torch.equal(modules[n].weight, original[n].weight) for n in unselected)
    assert any(not torch.equal(modules[n].effective_weight(), original[n].weight) for n in model.selected)


def test_the_selection_is_deterministic_per_seed() -> None:
    def selected(name: str, seed: int = 0) -> list[str]:
        model = get_method(name).apply(create_backbone(VIT, seed=0), seed=seed)
        model.prepare(_batches, None)
        return model.selected

    assert selected("fmsd") == selected("fmsd")
    assert selected("fmsd/random-layers", 1) == selected("fmsd/random-layers", 1)
    assert selected("fmsd/no-selection") == get_method("fmsd").apply(create_backbone(VIT, seed=0)).candidates


def test_a_resumed_run_keeps_the_selection_and_ends_as_an_uninterrupted_one(
    tiny_cards: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": "fmsd", "options": {"select_batches": 2}}))
    uninterrupted = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", stop_after=5) == {}
    calls: list[int] = []
    original = FMSD._gradients
    monkeypatch.setattr(FMSD, "_gradients", lambda self, b: calls.append(1) or original(self, b))
    assert train(cfg, tmp_path / "b") == uninterrupted and calls == []
    assert uninterrupted["diag/selected_layers"] == 6 and (tmp_path / "a" / "diagnostics" / "selection.png").is_file()
