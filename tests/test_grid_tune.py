"""The grid's tune axis: cells per value, names and labels, precedence, errors, and the ``tune`` tag of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.errors import ConfigError
from bench.grid import GridSpec, expand, load_grid
from bench.runner import run_cell
from bench.tracking import runs_by_hash


def _spec(tiny_cards: tuple[str, str], tmp_path: Path, **keys: object) -> GridSpec:
    base = {
        "model": {"name": "test_vit", "pretrained": False, "img_size": 32},
        "data": {"train": tiny_cards[0], "test": list(tiny_cards), "workers": 0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "runs_dir": str(tmp_path / "runs")},
    }
    return GridSpec(name="tuned", base=base, **keys)


def test_tune_axis_multiplies_cells_names_them_and_keeps_labels(tiny_cards, tmp_path: Path) -> None:
    spec = _spec(
        tiny_cards,
        tmp_path,
        methods=["full-ft", "linear-probe"],
        seeds=[0, 1],
        per_method={"linear-probe": {"optim": {"lr": 1.0e-2}}},
        tune={"optim.lr": [1.0e-4, 1.0e-3]},
    )
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 2
    assert [c.name for c in cells[:4]] == [
        "full-ft [optim.lr=0.0001] seed=0",
        "full-ft [optim.lr=0.0001] seed=1",
        "full-ft [optim.lr=0.001] seed=0",
        "full-ft [optim.lr=0.001] seed=1",
    ]
    assert [c.label for c in cells] == ["full-ft"] * 4 + ["linear-probe"] * 4
    assert [c.tune for c in cells[4:]] == ["optim.lr=0.0001"] * 2 + ["optim.lr=0.001"] * 2
    # The tune value overrides per_method (linear-probe's 1e-2) and is the config's value.
    assert [c.config.optim.lr for c in cells] == [1e-4, 1e-4, 1e-3, 1e-3] * 2
    assert len({c.run_id for c in cells}) == len(cells)


def test_several_tune_keys_give_their_product_with_sorted_names(tiny_cards, tmp_path: Path) -> None:
    spec = _spec(tiny_cards, tmp_path, tune={"optim.weight_decay": [0.0, 0.05], "optim.lr": [1.0e-3, 3.0e-3]})
    cells = expand(spec)
    assert [c.tune for c in cells] == [
        "optim.lr=0.001, optim.weight_decay=0.0",
        "optim.lr=0.001, optim.weight_decay=0.05",
        "optim.lr=0.003, optim.weight_decay=0.0",
        "optim.lr=0.003, optim.weight_decay=0.05",
    ]
    assert [(c.config.optim.lr, c.config.optim.weight_decay) for c in cells] == [
        (1e-3, 0.0),
        (1e-3, 0.05),
        (3e-3, 0.0),
        (3e-3, 0.05),
    ]
    assert cells[0].name == "full-ft [optim.lr=0.001, optim.weight_decay=0.0] seed=0"
    switched = expand(_spec(tiny_cards, tmp_path, tune={"train.amp": [True, False]}))
    assert [(c.tune, c.config.train.amp) for c in switched] == [("train.amp=true", True), ("train.amp=false", False)]
    untuned = expand(_spec(tiny_cards, tmp_path))
    assert [(c.name, c.tune) for c in untuned] == [("full-ft seed=0", "")]


def test_set_still_wins_over_the_tune_value(tiny_cards, tmp_path: Path) -> None:
    (cell,) = expand(_spec(tiny_cards, tmp_path, tune={"optim.lr": [1.0e-3]}), ["optim.lr=0.5"])
    assert cell.config.optim.lr == 0.5 and cell.tune == "optim.lr=0.001"
    # With several values, --set on the tuned key makes the cells equal, which is refused.
    with pytest.raises(ConfigError, match=r"cells with identical configs: full-ft \[optim.lr=0.001\] seed=0"):
        expand(_spec(tiny_cards, tmp_path, tune={"optim.lr": [1.0e-3, 1.0e-2]}), ["optim.lr=0.5"])


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"lr": [1.0e-3]}, r"grid-bad\.yaml: tune key 'lr' must be dotted section\.key"),
        ({"optim.": [1.0e-3]}, r"grid-bad\.yaml: tune key 'optim\.' must be dotted section\.key"),
        ({"optim.lr": []}, r"grid-bad\.yaml: tune key 'optim\.lr' needs a non-empty list of values, got \[\]"),
        ({"optim.lr": 1.0e-3}, r"grid-bad\.yaml: tune key 'optim\.lr' needs a non-empty list of values, got 0\.001"),
        ({"optim.lrr": [1.0e-3]}, r"grid-bad\.yaml: unknown key 'optim\.lrr'; valid keys: name, lr, weight_decay"),
        ({"optimiser.lr": [1.0e-3]}, r"grid-bad\.yaml: unknown section 'optimiser'"),
    ],
)
def test_bad_tune_keys_are_one_line_errors_naming_file_and_key(
    tiny_cards, tmp_path: Path, tune: dict, message: str
) -> None:
    path = tmp_path / "grid-bad.yaml"
    path.write_text(yaml.safe_dump({"base": _spec(tiny_cards, tmp_path).base, "tune": tune}))
    with pytest.raises(ConfigError, match=message) as err:
        expand(load_grid(str(path)), where=str(path))
    assert "\n" not in str(err.value)


def test_run_cell_tags_the_run_with_its_tune_value(tiny_cards, tmp_path: Path) -> None:
    spec = _spec(tiny_cards, tmp_path, tune={"optim.lr": [1.0e-3]})
    spec.base |= {"train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}, "eval": {"bootstrap": 0}}
    (cell,) = expand(spec)
    assert run_cell(cell, "tuned").status == "FINISHED"
    run = runs_by_hash(cell.config.tracking.uri, "tuned")[cell.run_id]
    assert run.data.tags["tune"] == "optim.lr=0.001" and run.data.tags["label"] == "full-ft"
    assert run.data.tags["mlflow.runName"] == "full-ft [optim.lr=0.001] seed=0"


def test_the_tracked_val_metrics_are_the_selected_checkpoints_not_the_last_epochs(tiny_cards, tmp_path: Path) -> None:
    """The report tunes on MLflow's ``val/auc``: it must be the selected checkpoint's even where a later epoch's
    validation (logged on the curve) was worse."""
    from mlflow.tracking import MlflowClient

    spec = _spec(tiny_cards, tmp_path, methods=["linear-probe"])
    spec.base |= {
        "optim": {"lr": 3.0e-1, "warmup_steps": 0},
        "train": {"epochs": 4, "steps_per_epoch": 1, "batch_size": 8},
        "eval": {"bootstrap": 0},
    }
    (cell,) = expand(spec)
    assert run_cell(cell, "selected").status == "FINISHED"
    run = runs_by_hash(cell.config.tracking.uri, "selected")[cell.run_id]
    curve: dict[int, float] = {}
    for point in sorted(
        MlflowClient(cell.config.tracking.uri).get_metric_history(run.info.run_id, "val/auc"), key=lambda m: m.timestamp
    ):
        curve.setdefault(point.step, point.value)  # each epoch's validation, before the final results
    selected = int(run.data.metrics["val/selected_step"])
    assert selected < 4 and curve[4] < curve[selected]  # the plant: the last epoch is not the best
    assert run.data.metrics["val/auc"] == max(curve.values()) == curve[selected]
