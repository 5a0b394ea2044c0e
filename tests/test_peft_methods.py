"""PEFT methods beyond the contract: AdaLoRA's rank allocation through the loop's hooks and across a resume; BOFT's
butterfly trained as asked or refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.backbone import create_backbone
from bench.config import ModelConfig
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.registry import get_method
from bench.train import LAST, train
from methods.adalora import AdaLoRA
from tests.conftest import tiny_config

VIT = ModelConfig(name="test_vit", pretrained=False, img_size=32)
SCHEDULE = {"total_step": 12, "tinit": 2, "tfinal": 4, "delta_t": 2}
"""No pruning up to step 2, allocations on the even steps up to the final one at step 8, then the budget fixed."""


def _adalora() -> AdaLoRA:
    backbone = create_backbone(VIT, seed=0)
    torch.manual_seed(0)  # PEFT draws the factors from the global generator
    model = get_method("adalora").apply(backbone, **SCHEDULE)
    assert isinstance(model, AdaLoRA)
    return model


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 3, 32, 32, generator=g), torch.tensor([0, 1] * 4), torch.tensor([-1, 0] * 4)


def _pruned_are_zero(model: AdaLoRA) -> bool:
    """Whether every value the rank pattern prunes is zero."""
    values = dict(model.backbone.named_parameters())
    return all(not values[name].view(-1)[~torch.tensor(keep)].any() for name, keep in model.config.rank_pattern.items())


def _train(model: AdaLoRA, peft_order: bool = False) -> list[tuple[int, dict | None, bool]]:
    """Train the schedule's steps with the hooks in the loop's order (or PEFT's allocation called where its docs put
    it, between the optimizer step and ``zero_grad``); after each step: the total rank, the rank pattern and whether
    the values it prunes are zero."""
    optimizer = torch.optim.AdamW(model.param_groups(0.05), lr=1e-2)
    trainable = [p for _, p in model.trainable_parameters()]
    after = []
    model.train()
    for step in range(SCHEDULE["total_step"]):
        model.training_loss(*_batch(step))[0].backward()
        if not peft_order:
            model.before_optimizer_step(step)
        torch.nn.utils.clip_grad_norm_(trainable, 0.1)  # clips in place: PEFT scores the gradients as clipped
        optimizer.step()
        if peft_order:
            model.allocate(step)
        optimizer.zero_grad(set_to_none=True)
        if not peft_order:
            model.after_optimizer_step(step)
        pattern = model.config.rank_pattern
        after.append(
            (sum(model.ranks().values()), pattern and dict(pattern), pattern is not None and _pruned_are_zero(model))
        )
    return after


def test_adalora_prunes_to_its_target_budget_and_the_pruned_values_stay_zero() -> None:
    model = _adalora()
    totals, patterns, zeroed = zip(*_train(model), strict=True)
    layers = len(model.tuned)  # 12 layers of 6 triplets, pruned to 4 on average: 72 -> 48
    assert totals[:4] == (6 * layers,) * 4  # no pruning up to tinit, nor at an odd step
    assert totals[4] == 55  # step 4: the cubic schedule's budget, int(24 * (1 - 2/6)^3 + 48)
    assert totals[8:] == (4 * layers,) * 4  # the final allocation at step 8, then the budget fixed
    assert all(p == patterns[8] for p in patterns[8:]) and sum(sum(keep) for keep in patterns[8].values()) == 48
    assert all(zeroed[8:])  # re-masked after every optimizer step


def test_adalora_hooks_allocate_exactly_as_peft_documents_it() -> None:
    hooks, direct = _adalora(), _adalora()
    assert _train(hooks) == _train(direct, peft_order=True)
    for (name, a), (_, b) in zip(hooks.trainable_parameters(), direct.trainable_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_adalora_resumed_run_prunes_as_the_uninterrupted_one(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    run = {"epochs": 2, "steps_per_epoch": 6, "checkpoint_every": 4}
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": "adalora"}, train=run))
    assert cfg.method.options["total_step"] == 12  # bound to the run; pruning from step 1, the final one at step 10
    uninterrupted = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", stop_after=9) == {}  # pre-empted; resumes from step 8
    assert train(cfg, tmp_path / "b") == uninterrupted
    last = {run: checkpoint.load(tmp_path / run / LAST)["model"] for run in "ab"}
    values = [k for k in last["a"] if ".lora_E." in k]
    assert sum(int(last["a"][k].count_nonzero()) for k in values) == 2 * len(values)  # K = 2: 3 triplets -> 2
    assert last["b"]["_extra_state"]["rank_pattern"] == last["a"]["_extra_state"]["rank_pattern"]
    assert all(torch.equal(last["b"][k], last["a"][k]) for k in values)


def test_adalora_refuses_a_run_whose_length_is_left_to_the_data(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = tiny_config(tiny_cards, tmp_path, method={"name": "adalora"}, train={"steps_per_epoch": None})
    with pytest.raises(ConfigError, match=r"set train.steps_per_epoch .*\(method 'adalora'\)"):
        resolve_config(cfg)


def test_boft_trains_the_butterfly_asked_for_or_refuses_it() -> None:
    from peft.tuners.boft.layer import get_fbd_cuda

    if get_fbd_cuda() is None:  # PEFT would train one factor instead
        with pytest.raises(ConfigError, match="butterfly=2 needs PEFT's fbd CUDA extension"):
            get_method("boft").apply(create_backbone(VIT, seed=0), butterfly=2)
        return
    model = get_method("boft").apply(create_backbone(VIT, seed=0), butterfly=2)
    assert {p.shape[0] for n, p in model.named_parameters() if "boft_R" in n} == {2}
