"""Optimizers as papers use them: one step of each on a toy model equals the update computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bench.adapter import Adapter
from bench.config import OptimConfig
from bench.errors import ConfigError
from bench.step import build_optimizer, schedule
from bench.train import train
from tests.conftest import tiny_config

LR, DECAY, GRAD, START, EPS = 0.1, 0.5, -1e-3, 10.0, 1e-8


def _step(name: str, traceable: bool = False) -> tuple[float, float]:
    """Weight and bias of a 1x1 linear layer (both 10, gradient -0.001) after one step of ``name`` (the compiled
    step's optimizer where ``traceable``)."""
    model = Adapter(nn.Linear(1, 1))
    for p in model.parameters():
        p.data.fill_(START)
        p.grad = torch.full_like(p, GRAD)
    optim = OptimConfig(name=name, lr=LR, weight_decay=DECAY)
    optimizer = build_optimizer(model, optim, torch.device("cpu"), traceable=traceable)
    optimizer.step()
    return model.backbone.weight.item(), model.backbone.bias.item()


def test_adamw_decays_the_weight_apart_from_the_gradient_and_spares_the_bias() -> None:
    adam = LR * GRAD / (abs(GRAD) + EPS)  # Adam's first step: lr times the gradient's sign, nearly
    weight, bias = _step("adamw")
    assert weight == pytest.approx(START * (1 - LR * DECAY) - adam, rel=1e-6)
    assert bias == pytest.approx(START - adam, rel=1e-6)


def test_adam_and_sgd_add_the_decay_to_the_gradient_of_every_trainable_tensor() -> None:
    coupled = GRAD + DECAY * START  # 4.999: the decay outweighs the gradient and flips the step's sign
    adam = START - LR * coupled / (abs(coupled) + EPS)
    assert _step("adam") == pytest.approx((adam, adam), rel=1e-6)
    sgd = START - LR * coupled  # momentum's buffer starts at the first gradient
    assert _step("sgd") == pytest.approx((sgd, sgd), rel=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_the_compiled_steps_optimizer_makes_the_same_update(name: str) -> None:
    assert _step(name, traceable=True) == pytest.approx(_step(name), rel=1e-6)


def test_schedule_none_is_one_rate_from_the_first_step_and_refuses_a_warm_up() -> None:
    assert [schedule("none", 0, 10)(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="optim.warmup_steps=0"):
        OptimConfig(schedule="none", warmup_steps=5)
    with pytest.raises(ConfigError, match="optim.name: 'lamb' is not one of adamw, adam, sgd"):
        OptimConfig(name="lamb")


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_loop_trains_with_coupled_decay_at_one_rate(name: str, tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = tiny_config(tiny_cards, tmp_path, optim={"name": name, "schedule": "none"}, train={"log_every": 1})
    rates: list[float] = []
    metrics = train(cfg, tmp_path / "run", log=lambda m, step: rates.extend([m["train/lr"]] if "train/lr" in m else []))
    assert rates == [cfg.optim.lr] * metrics["train/steps"] and 0 <= metrics["auc/tiny-other"] <= 1
