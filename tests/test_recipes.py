"""Recipes: Effort's released values resolve with no difference, and every departure is reported."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.config import build_config
from bench.grid import expand, load_grid
from bench.recipes import differences, load_recipe

EFFORT_RELEASED = {  # read off YZY-stack/Effort-AIGI-Detection at 96f5dea (effort.yaml, train.py, trainer.py)
    "optim.name": "adam",
    "optim.lr": 2e-4,
    "optim.betas": [0.9, 0.999],
    "optim.eps": 1e-8,
    "optim.weight_decay": 5e-4,
    "optim.schedule": "none",
    "optim.grad_clip": None,
    "train.epochs": 10,
    "train.batch_size": 32,
    "data.frames_per_video": 8,
    "model.img_size": 224,
    "data.augment": "effort-released",
}


def test_effort_released_holds_the_sources_values_and_resolves_with_no_difference() -> None:
    recipe = load_recipe("effort-released")
    values = {f.key: f.value for f in recipe.fields}
    assert {k: values[k] for k in EFFORT_RELEASED} == EFFORT_RELEASED
    assert differences(recipe, build_config(recipe.overrides())) == []


def test_a_changed_value_is_reported_with_the_source() -> None:
    recipe = load_recipe("effort-released")
    cfg = build_config({**recipe.overrides(), "optim": {**recipe.overrides()["optim"], "lr": 1e-3}})
    ((field, ours),) = differences(recipe, cfg)
    assert (field.key, ours, field.value) == ("optim.lr", 1e-3, 2e-4) and "effort.yaml" in field.source


def test_the_paper_grid_trains_its_effort_row_with_the_released_recipe() -> None:
    recipe = load_recipe("effort-released")
    rows = {c.label: c.config for c in expand(load_grid("paper-effort-table")) if c.seed == 0}
    assert differences(recipe, rows["effort"]) == [] and differences(recipe, rows["masm"]) == []
    assert [f.key for f, _ in differences(recipe, rows["full-ft"])] == ["optim.lr"]


def test_bench_recipe_marks_differences_and_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "effort-released"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no differences")
    assert main(["recipe", "effort-released", "--set", "optim.lr=1e-3", "--set", "train.amp=true"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n!=") == 2 and out.rstrip().endswith("2 different")
    assert main(["recipe", "effort"]) == 2
    assert "recipe 'effort': no such recipe in grids/recipes/ (effort-released)" in capsys.readouterr().err
