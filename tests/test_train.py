"""The loop: schedules, exact resume, failure on a non-finite loss, selection on validation only, compiled backbone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.backbone import compile_backbone
from bench.errors import ConfigError
from bench.grid import resolve_config
from bench.step import TrainingError, schedule
from bench.train import BEST, LAST, train
from tests.conftest import tiny_config


def test_schedules_move() -> None:
    cosine = schedule("cosine", warmup=2, total=10)
    constant = schedule("constant", warmup=2, total=10)
    assert cosine(0) == constant(0) == 0.5 and cosine(1) == constant(1) == 1.0
    assert [constant(s) for s in range(2, 10)] == [1.0] * 8
    values = [cosine(s) for s in range(2, 11)]
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and math.isclose(values[-1], 0.0, abs_tol=1e-12)


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_learning_rate_follows_schedule_in_the_loop(kind: str, tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(
        tiny_config(tiny_cards, tmp_path, optim={"schedule": kind, "warmup_steps": 2}, train={"log_every": 1})
    )
    lrs: dict[int, float] = {}
    train(cfg, tmp_path / "run", log=lambda metrics, step: lrs.update({step: metrics.get("train/lr", lrs.get(step))}))
    factor = schedule(kind, 2, 6)
    expected = [cfg.optim.lr * factor(s - 1) for s in range(1, 7)]  # the rate step s used
    assert [lrs[s] for s in range(1, 7)] == pytest.approx(expected)
    assert len(set(lrs.values())) > 1  # the schedule moved


def test_resume_ends_with_the_same_metrics(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, model={"drop_rate": 0.3}))
    uninterrupted = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "b", stop_after=5) == {}  # pre-empted after step 5; last checkpoint at step 4
    resumed_from: list[float] = []
    resumed = train(cfg, tmp_path / "b", log=lambda m, s: resumed_from.extend([m[k] for k in m if k == "resume_step"]))
    assert resumed_from == [4.0]
    assert resumed == uninterrupted


def test_a_checkpoint_of_an_older_layout_is_refused_by_name(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": "masm"}))
    assert train(cfg, tmp_path / "run", stop_after=5) == {}
    state = checkpoint.load(tmp_path / "run" / LAST)
    del state["layout"]  # as written before factors were stacked
    checkpoint.save_atomic(state, tmp_path / "run" / LAST)
    with pytest.raises(TrainingError, match=r"last\.pt has checkpoint layout 1, this version reads 2"):
        train(cfg, tmp_path / "run")


def test_non_finite_loss_stops_the_run(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, optim={"lr": 1e30, "grad_clip": None}))
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(cfg, tmp_path / "run")


def test_selection_uses_validation_and_keeps_both_checkpoints(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path))
    result = train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / BEST).exists() and (tmp_path / "run" / LAST).exists()
    assert result["val/selected_step"] in (3, 6)
    names = [Path(c).stem for c in tiny_cards]
    for name in names:
        assert 0.0 <= result[f"auc/{name}"] <= 1.0 and 0.0 <= result[f"last/auc/{name}"] <= 1.0
        assert (tmp_path / "run" / "scores" / "selected" / f"{name}.csv").read_text().startswith("video,label")
    if result["val/selected_step"] == 6:  # the last checkpoint is the selected one
        assert result[f"auc/{names[1]}"] == result[f"last/auc/{names[1]}"]


def test_a_corrupt_test_frame_is_skipped_and_counted(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    import shutil

    from tests.conftest import write_folder_card

    card = write_folder_card(tmp_path / "broken", {"test": 3}, seed=2)
    victim = next((tmp_path / "broken" / "test" / "real").rglob("*.png"))
    victim.write_bytes(b"not a png")
    cfg = resolve_config(tiny_config(tiny_cards, tmp_path, data={"test": [str(card)], "max_bad_fraction": 0.1}))
    result = train(cfg, tmp_path / "run")
    rows = (tmp_path / "run" / "scores" / "selected" / "broken.csv").read_text().splitlines()
    assert result["n/broken"] == 26 and len(rows) == 27 and str(victim) not in "".join(rows)  # 27 frames, 1 bad
    strict = resolve_config(tiny_config(tiny_cards, tmp_path, data={"test": [str(card)], "max_bad_fraction": 0.0}))
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(RuntimeError, match="unreadable"):
        train(strict, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["blocks", "model", "step"])
def test_compiled_backbone_trains_as_eager(tiny_cards: tuple[str, str], tmp_path: Path, mode: str) -> None:
    runs = {}
    for compile in ("off", mode):
        cfg = resolve_config(tiny_config(tiny_cards, tmp_path, method={"name": "masm"}, train={"compile": compile}))
        train(cfg, tmp_path / compile)
        runs[compile] = cfg.run_id(), checkpoint.load(tmp_path / compile / LAST)
    (eager_id, eager), (compiled_id, compiled) = runs["off"], runs[mode]
    assert compiled_id == eager_id  # speed only: the same run
    want_state, got_state = eager["optimizer"]["state"], compiled["optimizer"]["state"]
    assert want_state.keys() == got_state.keys()
    moments = [(want_state[k]["exp_avg"], got_state[k]["exp_avg"]) for k in want_state]
    assert len(moments) == 3 * 2 + 2  # U, s and V of the qkv and proj groups, and the head
    assert all(want.abs().max() > 0 for want, _ in moments)  # gradients reached the factors
    for want, got in moments:
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


def test_compile_modes_are_checked(tiny_cards: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.compile: 'fast' is not one of off, blocks, model"):
        resolve_config(tiny_config(tiny_cards, tmp_path, train={"compile": "fast"}))
    with pytest.raises(ConfigError, match="'train.compile' expects str, got True"):
        resolve_config(tiny_config(tiny_cards, tmp_path, train={"compile": True}))
    with pytest.raises(ValueError, match="needs a backbone with `blocks` or `stages` .Linear."):
        compile_backbone(torch.nn.Linear(2, 2), "blocks")
