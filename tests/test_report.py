"""Tests of bench.report: long results, the cross-dataset table, its formats, the heatmap and a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench.report import collect, cross_dataset_table, format_table, heatmap, write_report

SETS = ("offline-ff", "offline-jpeg", "offline-noise")  # offline-ff is the training set: in-domain


def _run(label: str, seed: int, auc: tuple[float, ...], status: str = "FINISHED", **extra: object) -> dict:
    """One row shaped like ``mlflow.search_runs`` output; the last checkpoint scores 0.01 lower, EER is 1 - AUC."""
    row: dict = {"run_id": f"{label}-{seed}", "status": status, "params.train.seed": str(seed)}
    row |= {"params.data.train": "offline-ff", "params.method.name": label.split("/")[0], "tags.label": label}
    row |= {"tags.status": status, "metrics.val/auc": 0.99, "metrics.train/loss": 0.1}
    for name, value in zip(SETS, auc, strict=True):
        row |= {f"metrics.auc/{name}": value, f"metrics.eer/{name}": 1 - value}
        row |= {f"metrics.last/auc/{name}": value - 0.01, f"metrics.last/eer/{name}": 1.01 - value}
    return row | extra


@pytest.fixture
def runs() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _run("full-ft", 0, (0.95, 0.70, 0.80)),
            _run("full-ft", 1, (0.97, 0.74, 0.84)),
            _run("full-ft", 2, (0.10, 0.10, 0.10), status="FAILED"),
            _run("full-ft", 3, (0.10, 0.10, 0.10), **{"tags.status": "FAILED"}),  # MLflow says finished, harness not
            _run("masm/no_mask", 0, (0.90, 0.60, 0.70)),
        ]
    )


def test_collect_is_long_and_keeps_finished_runs_only(runs: pd.DataFrame) -> None:
    long = collect(runs)
    assert list(long.columns) == ["label", "seed", "train_set", "checkpoint", "test_set", "metric", "value"]
    assert sorted(long["seed"].unique()) == [0, 1]
    assert set(long["metric"]) == {"auc", "eer"}  # val/auc and train/loss are not test metrics
    assert set(long["checkpoint"]) == {"selected", "last"}
    assert len(long) == 3 * 3 * 4  # 3 runs x 3 sets x (auc, eer) x (selected, last)
    last = long[(long.label == "full-ft") & (long.seed == 1) & (long.checkpoint == "last") & (long.metric == "auc")]
    assert last.set_index("test_set")["value"].to_dict() == pytest.approx(
        dict(zip(SETS, (0.96, 0.73, 0.83), strict=True))
    )


def test_collect_keeps_the_newest_rerun_of_a_cell(runs: pd.DataFrame) -> None:
    runs["start_time"] = pd.Timestamp("2025-01-01")
    rerun = _run("masm/no_mask", 0, (0.91, 0.61, 0.71), start_time=pd.Timestamp("2025-01-02"))
    long = collect(pd.concat([runs, pd.DataFrame([rerun])], ignore_index=True))
    values = long[(long.label == "masm/no_mask") & (long.metric == "auc") & (long.checkpoint == "selected")]
    assert sorted(values["value"]) == pytest.approx([0.61, 0.71, 0.91])


def test_table_means_stds_and_cross_dataset_average(runs: pd.DataFrame) -> None:
    table = cross_dataset_table(collect(runs))
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == [
        "offline-ff (in-domain)",
        "offline-jpeg",
        "offline-noise",
        "avg",
    ]
    full = table.loc["full-ft"]
    assert full[("offline-ff (in-domain)", "mean")] == pytest.approx(0.96)
    assert full[("offline-ff (in-domain)", "std")] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert full[("offline-jpeg", "mean")] == pytest.approx(0.72)
    assert full[("offline-jpeg", "n")] == 2
    # avg per seed over cross-dataset sets only: seed 0 (0.70 + 0.80) / 2 = 0.75, seed 1 0.79 -> 0.77 ± 0.0283.
    assert full[("avg", "mean")] == pytest.approx(0.77)
    assert full[("avg", "std")] == pytest.approx(math.sqrt(2 * 0.02**2))
    one_seed = table.loc["masm/no_mask"]
    assert one_seed[("avg", "mean")] == pytest.approx(0.65)
    assert math.isnan(one_seed[("avg", "std")])
    last = cross_dataset_table(collect(runs), "auc", "last")
    assert last.loc["full-ft", ("avg", "mean")] == pytest.approx(0.76)


def test_table_errors(runs: pd.DataFrame) -> None:
    long = collect(runs)
    with pytest.raises(ValueError, match="no 'ap' values for the 'selected' checkpoint"):
        cross_dataset_table(long, "ap")
    long.loc[long.label == "masm/no_mask", "train_set"] = "offline-jpeg"
    with pytest.raises(ValueError, match="trained on different sets"):
        cross_dataset_table(long)


def test_formats(runs: pd.DataFrame) -> None:
    table = cross_dataset_table(collect(runs))
    markdown = format_table(table, "markdown").splitlines()
    assert markdown[0] == "| method | offline-ff (in-domain) | offline-jpeg | offline-noise | avg | seeds |"
    assert markdown[1] == "| --- | ---: | ---: | ---: | ---: | ---: |"
    assert markdown[2] == "| full-ft | 0.960 ± 0.014 | 0.720 ± 0.028 | 0.820 ± 0.028 | 0.770 ± 0.028 | 2 |"
    assert markdown[3] == "| masm/no_mask | 0.900 | 0.600 | 0.700 | 0.650 | 1 |"
    text = format_table(table, "text").splitlines()
    assert text[0].split() == ["method", "offline-ff", "(in-domain)", "offline-jpeg", "offline-noise", "avg", "seeds"]
    assert set(text[1]) == {"-"}
    assert text[2].startswith("full-ft ") and text[2].endswith("0.770 ± 0.028      2")
    assert len({len(line) for line in text}) == 1
    latex = format_table(table, "latex")
    assert r"full-ft & $0.960 \pm 0.014$ & $0.720 \pm 0.028$ & $0.820 \pm 0.028$ & $0.770 \pm 0.028$ & 2 \\" in latex
    assert r"masm/no\_mask & $0.900$ & $0.600$" in latex
    assert latex.startswith(r"\begin{tabular}{lrrrrr}") and latex.endswith(r"\end{tabular}")
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        format_table(table, "html")


def test_missing_set_shows_a_dash_and_no_average(runs: pd.DataFrame) -> None:
    runs.loc[runs["tags.label"] == "masm/no_mask", "metrics.auc/offline-noise"] = float("nan")
    table = cross_dataset_table(collect(runs))
    assert format_table(table, "markdown").splitlines()[3] == "| masm/no_mask | 0.900 | 0.600 | – | – | 1 |"
    assert r"masm/no\_mask & $0.900$ & $0.600$ & -- & -- & 1 \\" in format_table(table, "latex")


def test_heatmap_writes_png(runs: pd.DataFrame, tmp_path: Path) -> None:
    out = heatmap(cross_dataset_table(collect(runs)), tmp_path / "figs" / "auc.png", "AUC")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_from_a_real_mlflow_store(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("offline-grid")
    for seed, auc in ((0, (0.95, 0.70, 0.80)), (1, (0.97, 0.74, 0.84))):
        row = _run("full-ft", seed, auc)
        run = client.create_run(experiment, tags={k[5:]: v for k, v in row.items() if k.startswith("tags.")})
        for key in ("params.train.seed", "params.data.train", "params.method.name"):
            client.log_param(run.info.run_id, key[7:], row[key])
        for key in [k for k in row if k.startswith("metrics.")]:
            client.log_metric(run.info.run_id, key[8:], row[key])
        client.set_terminated(run.info.run_id)
    client.set_terminated(client.create_run(client.create_experiment("failed")).info.run_id, status="FAILED")

    printed = write_report("offline-grid", uri, tmp_path / "report")
    assert printed.startswith("AUC (validation-selected checkpoint)") and "EER (validation-selected" in printed
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Checkpoint selection used validation data only" in markdown
    assert "| full-ft | 0.960 ± 0.014 | 0.720 ± 0.028 | 0.820 ± 0.028 | 0.770 ± 0.028 | 2 |" in markdown  # AUC
    assert "| full-ft | 0.040 ± 0.014 | 0.280 ± 0.028 | 0.180 ± 0.028 | 0.230 ± 0.028 | 2 |" in markdown  # EER
    assert "| full-ft | 0.950 ± 0.014 | 0.710 ± 0.028 | 0.810 ± 0.028 | 0.760 ± 0.028 | 2 |" in markdown  # last
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"auc_selected.csv", "eer_last.tex", "auc_heatmap.png"} <= names
    with pytest.raises(ValueError, match=r"no MLflow experiment named 'nope' at sqlite:///"):
        write_report("nope", uri, tmp_path / "report")
    with pytest.raises(ValueError, match=r"experiment 'failed' at sqlite:.* has no finished runs"):
        write_report("failed", uri, tmp_path / "report")
