"""MASM inside the loop's contract: routing, masks, constraints, Effort's and LoRA's shapes, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.backbone import create_backbone
from bench.cli import main
from bench.config import ModelConfig, OptimConfig
from bench.grid import resolve_config
from bench.registry import get_method
from bench.step import Step, build_optimizer
from bench.train import train
from tests.conftest import tiny_config

VIT = ModelConfig(name="test_vit", pretrained=False, img_size=32)


def _model(name: str = "masm", **options: object) -> torch.nn.Module:
    return get_method(name).apply(create_backbone(VIT, seed=0), **{"K": 4, **options})


def _factors(model: torch.nn.Module, k: int) -> list[torch.Tensor]:
    return [f.detach().clone() for layer in model.layers for f in layer.subspace(k)]


def _optimizer(model: torch.nn.Module, decay: float = 0.05, lr: float = 1e-2) -> torch.optim.Optimizer:
    return build_optimizer(model, OptimConfig(lr=lr, weight_decay=decay), torch.device("cpu"))


def _slot_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, layer: int, k: int) -> list[torch.Tensor]:
    """Slot (layer, k): its factors and their AdamW moments and step count, copied."""
    group, i = model.layers[layer].home
    columns = slice(k * model.options.r, (k + 1) * model.options.r)
    out = [f.detach().clone() for f in model.layers[layer].subspace(k)]
    for p in (group.u, group.s, group.v):
        state = optimizer.state[p]
        out += [state["exp_avg"][i][..., columns].clone(), state["exp_avg_sq"][i][..., columns].clone()]
        out.append(state["steps"][i, k].clone())
    return out


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, forgeries: list[int], step: int = 0) -> None:
    """The loop's step with ``optimizer``, unclipped and at a constant rate."""
    g = torch.Generator().manual_seed(step)
    images = torch.randn(len(forgeries), 3, 32, 32, generator=g)
    labels = torch.tensor([int(m >= 0) for m in forgeries])
    model.train()
    batch = {"image": images, "label": labels, "forgery": torch.tensor(forgeries)}
    Step(model, optimizer, None, torch.device("cpu"), grad_clip=None)([batch], step)


def test_routing_moves_only_the_subspace_of_the_batch_forgery() -> None:
    model = _model(mask="none")
    optimizer = _optimizer(model)
    before = [_factors(model, k) for k in range(4)]
    _step(model, optimizer, [2] * 8)  # fakes of forgery method 2 only
    for k in range(4):
        same = all(torch.equal(a, b) for a, b in zip(before[k], _factors(model, k), strict=True))
        assert same == (k != 2), f"subspace {k}"


def test_reals_reach_every_subspace_and_no_routing_mixes() -> None:
    routed = _model(routing="method", mask="none").route(torch.tensor([-1, 0, 3]))
    assert routed.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
    assert _model(routing="none", mask="none").route(torch.tensor([0])) is None
    balanced = _model(routing="balanced", mask="none").route(torch.tensor([-1, 2]))
    assert balanced.tolist() == [[0.25] * 4, [0, 0, 1, 0]]


def test_masked_factors_and_their_moments_do_not_move() -> None:
    model = _model(mask="none")
    optimizer = _optimizer(model)
    _step(model, optimizer, [-1, -1, 0, 1, 2, 3, 0, 1], step=0)  # creates AdamW moments for every factor
    model.mask[0, 1] = False  # layer 0, subspace 1 frozen
    masked, free = _slot_state(model, optimizer, 0, 1), _slot_state(model, optimizer, 0, 0)
    _step(model, optimizer, [-1, -1, 0, 1, 2, 3, 0, 1], step=1)
    assert all(torch.equal(a, b) for a, b in zip(_slot_state(model, optimizer, 0, 1), masked, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_factors(model, 0)[:3], free[:3], strict=True))


def test_constraints_zero_at_init_positive_after_training() -> None:
    model = _model(mask="none")
    model.train()
    forgeries = torch.tensor([-1, -1, 0, 1, 2, 3, 0, 1])
    _, parts = model.training_loss(torch.randn(8, 3, 32, 32), (forgeries >= 0).long(), forgeries)
    assert parts["orth"] == pytest.approx(0, abs=1e-9) and parts["spec"] == pytest.approx(0, abs=1e-9)
    optimizer = _optimizer(model, decay=0.0, lr=5e-2)
    for step in range(3):
        _step(model, optimizer, forgeries.tolist(), step)
    _, parts = model.training_loss(torch.randn(8, 3, 32, 32), (forgeries >= 0).long(), forgeries)
    assert parts["orth"] > 1e-8 and parts["spec"] > 1e-8


def test_state_mask_refreshes_on_schedule_and_freezes_the_fastest_subspace() -> None:
    model = _model(mask="state", mask_every=2, rho_max=0.5, tau=0.5)
    optimizer = _optimizer(model)
    for step in range(2):
        _step(model, optimizer, [-1, -1, 0, 1, 2, 3, 0, 1], step)
    assert len(model.history) == 1
    model.loss_ema.copy_(torch.tensor([0.1, 0.7, 0.7, 0.7]))  # subspace 0 runs far ahead
    model.refresh_mask()
    frozen = (~model.mask).sum(0).tolist()
    assert frozen[0] == len(model.layers) // 2 and frozen[1:] == [0, 0, 0]


def test_activity_diagnostics_report_drift_and_the_spread_of_routed_losses(tmp_path: Path) -> None:
    model = _model(mask="none")
    assert model.diagnostics(tmp_path)["factor_drift"] == pytest.approx(0.0, abs=1e-6)  # untrained: W_eff == W
    optimizer = _optimizer(model, decay=0.0, lr=5e-2)
    for step in range(2):
        _step(model, optimizer, [-1, -1, 0, 1, 2, 3, 0, 1], step)
    model.loss_ema.copy_(torch.tensor([0.2, 0.4, 0.4, 0.4]))
    scalars = model.diagnostics(tmp_path)
    assert scalars["factor_drift"] == pytest.approx(float(model.drift().mean())) and scalars["factor_drift"] > 1e-4
    assert scalars["routed_loss_spread"] == pytest.approx(0.1 / 0.35, rel=1e-6)  # sample std / mean


def test_masm_resumes_exactly_with_its_mask_state(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(
        tiny_config(tiny_cards, tmp_path, method={"name": "masm", "options": {"mask_every": 2, "mask": "random"}})
    )
    assert cfg.method.options["K"] == 2  # bound from the tiny card's two forgery methods
    uninterrupted = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", stop_after=5) == {}
    assert train(cfg, tmp_path / "b") == uninterrupted
    history = np.load(tmp_path / "a" / "diagnostics" / "mask_history.npz")
    refreshes = int(uninterrupted["val/selected_step"]) // 2  # diagnostics describe the selected weights
    assert history["masks"].shape == (refreshes, len(history["layers"]), 2)
    assert 0 <= uninterrupted["diag/drift_mean"] < 90 and "diag/diversity_mean" in uninterrupted


def test_routing_needs_one_subspace_per_method(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="one subspace per training forgery method"):
        resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": "masm", "options": {"K": 3}}))


def test_effort_parameter_count_on_clip_vit_large(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--backbone", "vit_large_patch14_clip_224.openai", "--method", "effort"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("effort"))
    assert row.split()[1] == "196,704"  # 24 blocks x 4 projections x (1024 + 1 + 1024): Effort's "0.19M"


def test_lora_is_peft_on_the_same_targets_with_matched_rank() -> None:
    from peft.tuners.lora import LoraLayer

    lora = get_method("lora").apply(create_backbone(VIT, seed=0))
    effort = get_method("masm").apply(create_backbone(VIT, seed=0), K=4, r=1)
    assert set(lora.tuned) == set(effort.layer_names)
    assert all(isinstance(m, LoraLayer) and m.r["default"] == 4 for m in lora.tuned.values())


def test_lora_evaluates_merged_and_restores_its_base_weights_exactly() -> None:
    lora = get_method("lora").apply(create_backbone(VIT, seed=0))
    with torch.no_grad():
        for layer in lora.tuned.values():
            layer.lora_B["default"].weight.normal_(0, 0.3)  # B starts at zero: give the update a size
    base = {n: m.get_base_layer().weight.clone() for n, m in lora.tuned.items()}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lora.eval()
    with torch.no_grad():
        unmerged = lora(images)
    for _ in range(20):
        with lora.evaluating():
            assert all(m.merged for m in lora.tuned.values())
            merged = lora(images)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert not any(m.merged for m in lora.tuned.values())
    assert all(torch.equal(m.get_base_layer().weight, base[n]) for n, m in lora.tuned.items())


def test_params_lists_every_method_on_the_meta_device(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.registry import list_methods

    assert main(["params", "--backbone", "test_vit"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == list_methods()
    assert rows["fmsd/no-selection"] == rows["masm"] and int(rows["fmsd"].replace(",", "")) > 0


def test_the_docs_sections_the_code_cites_exist() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", (root / "docs" / "masm.md").read_text(), re.M))
    cited = {
        section
        for path in [*root.glob("bench/**/*.py"), *root.glob("methods/**/*.py")]
        for section in re.findall(r"docs/masm\.md, section (\d+(?:\.\d+)*)", path.read_text())
    }
    assert cited and cited <= headings, cited - headings
