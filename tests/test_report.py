"""Tests of bench.report: long results, the cross-dataset table, its formats, the heatmap and a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from bench.metrics import binary_metrics, delong_test
from bench.report import (
    PAPER_COLUMNS,
    PUBLISHED_DIR,
    collect,
    cross_dataset_table,
    format_table,
    heatmap,
    paired_delong,
    paper_table,
    stouffer,
    video_scores,
    write_report,
)

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


def test_write_report_from_a_real_mlflow_store(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    uri = tracking_uri
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
    # No ablations, no paper's test sets, no artifacts: those parts are left out quietly.
    assert names.isdisjoint({"ablation.csv", "roc.png", "spectra.png", "mask_history.png", "ablation_bars.png"})
    assert "## Ablations" not in markdown and "## Beside" not in markdown and "## Figures" not in markdown
    with pytest.raises(ValueError, match=r"no MLflow experiment named 'nope' at sqlite:///"):
        write_report("nope", uri, tmp_path / "report")
    with pytest.raises(ValueError, match=r"experiment 'failed' at sqlite:.* has no finished runs"):
        write_report("failed", uri, tmp_path / "report")


# An experiment shaped like a grid on real cards: trained on FF++, tested in-domain and on two paper test sets.
TRAIN = "ff-c23"
CARDS = (TRAIN, "celebdf-v2", "dfd")
FRAMES = 240
# Separation of real and fake scores per label and test set; masm/no-mask is clearly worse on dfd only.
SEPARATION = {
    "masm": (2.0, 1.0, 1.0),
    "masm/no-mask": (2.0, 1.0, 0.3),
    "full-ft": (2.5, 0.6, 0.6),
    "effort": (2.0, 0.9, 0.9),
}
DRIFT = {"masm": 2.0, "masm/no-mask": 4.0, "full-ft": 30.0, "effort": 3.0}
SEEDS = (0, 1)


def _scores(label: str, seed: int, card: str) -> pd.DataFrame:
    """Frame scores: a part shared by every label of a seed and card (so paired tests have power) plus own noise."""
    y = np.repeat([0, 1], FRAMES // 2)
    shared = np.random.default_rng([seed, CARDS.index(card)]).normal(0, 1, FRAMES)
    own = np.random.default_rng([seed, CARDS.index(card), 100 + list(SEPARATION).index(label)]).normal(0, 0.3, FRAMES)
    logit = SEPARATION[label][CARDS.index(card)] * (2 * y - 1) + shared + own
    videos = [f"{card}-v{i // 4}" for i in range(FRAMES)]
    return pd.DataFrame(
        {
            "video": videos,
            "label": y,
            "method": np.where(y == 1, "fake", "real"),
            "score": 1 / (1 + np.exp(-logit)),
            "path": [f"{v}/{i % 4}.png" for i, v in enumerate(videos)],
        }
    )


def _diagnostics(label: str, folder: Path) -> None:
    """What the SVD methods write: spectra for masm and its ablation and effort, a mask history for masm only."""
    if label == "full-ft":
        return
    folder.mkdir(parents=True, exist_ok=True)
    layers = [f"blocks.{i}.attn.proj" for i in range(4)]
    spectra = {f"{n}/{w}": np.linspace(3, 0.01, 16) * (1.02 if w == "after" else 1) for n in layers for w in "ab"}
    np.savez(
        folder / "spectra.npz", **{k.replace("/a", "/after").replace("/b", "/before"): v for k, v in spectra.items()}
    )
    if label == "masm":
        masks = np.random.default_rng(0).random((3, len(layers), 4)) > 0.3
        np.savez(folder / "mask_history.npz", masks=masks, layers=np.array(layers), every=20)


def _log_grid_run(client, experiment: str, label: str, seed: int, folder: Path) -> None:
    """One run as the harness logs it: tags, params, test metrics of both checkpoints, diag metrics, artifacts."""
    tags = {"label": label, "method": label, "family": label.split("/")[0], "cell": f"{label}-{seed}"}
    run_id = client.create_run(experiment, tags={**tags, "grid": "paper", "status": "FINISHED"}).info.run_id
    params = {"method.name": label, "train.seed": seed, "data.train": TRAIN}
    metrics = {"diag/drift_mean": DRIFT[label] + seed}
    for card in CARDS:
        frame = _scores(label, seed, card)
        path = folder / "scores" / "selected" / f"{card}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        client.log_artifact(run_id, str(path), "scores/selected")
        for key, value in binary_metrics(frame["label"], frame["score"]).items():
            metrics |= {f"{key}/{card}": value, f"last/{key}/{card}": value - 0.01}
    _diagnostics(label, folder / "diagnostics")
    for path in sorted((folder / "diagnostics").glob("*.npz")):
        client.log_artifact(run_id, str(path), "diagnostics")
    client.log_batch(
        run_id, metrics=[_metric(k, v) for k, v in metrics.items()], params=[_param(k, v) for k, v in params.items()]
    )
    client.set_terminated(run_id)


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), 0, 0)


def _param(key: str, value: object):
    from mlflow.entities import Param

    return Param(key, str(value))


@pytest.fixture(scope="module")
def paper_report(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a grid of 4 labels x 2 seeds x 3 cards logged into the session's MLflow store (once)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    base = tmp_path_factory.mktemp("paper-runs")
    experiment = client.create_experiment("paper-grid", artifact_location=(base / "artifacts").as_uri())
    for label in SEPARATION:
        for seed in SEEDS:
            _log_grid_run(client, experiment, label, seed, base / f"{label.replace('/', '_')}-{seed}")
    out = tmp_path_factory.mktemp("paper-report")
    write_report("paper-grid", tracking_uri, out)
    return out


def _auc(label: str, card: str) -> list[float]:
    return [binary_metrics(f["label"], f["score"])["auc"] for f in (_scores(label, s, card) for s in SEEDS)]


def _stouffer_by_hand(card: str) -> float:
    z = []
    for seed in SEEDS:
        full, ablated = _scores("masm", seed, card), _scores("masm/no-mask", seed, card)
        full, ablated = video_scores(full), video_scores(ablated)
        auc_full, auc_ablated, p = delong_test(full["label"], full["score"], ablated["score"])
        z.append(np.sign(auc_ablated - auc_full) * norm.isf(p / 2))
    return float(2 * norm.sf(abs(sum(z)) / math.sqrt(len(z))))


def test_ablation_table_changes_and_significance(paper_report: Path) -> None:
    table = pd.read_csv(paper_report / "ablation.csv").set_index(["label", "column"])
    assert list(dict.fromkeys(table.index.get_level_values(0))) == ["masm", "masm/no-mask"]
    for card in CARDS[1:]:
        full, ablated = np.mean(_auc("masm", card)), np.mean(_auc("masm/no-mask", card))
        row = table.loc[("masm/no-mask", card)]
        assert row["mean"] == pytest.approx(ablated) and row["std"] == pytest.approx(
            np.std(_auc("masm/no-mask", card), ddof=1)
        )
        assert row["delta"] == pytest.approx(ablated - full)
        assert row["p"] == pytest.approx(_stouffer_by_hand(card), rel=1e-9)
    assert table.loc[("masm/no-mask", "dfd"), "significant"] and table.loc[("masm/no-mask", "dfd"), "delta"] < -0.1
    assert not table.loc[("masm/no-mask", "celebdf-v2"), "significant"]
    assert math.isnan(table.loc[("masm/no-mask", "avg"), "p"]) and math.isnan(table.loc[("masm", "dfd"), "p"])
    assert table.loc[("masm", "dfd"), "delta"] == 0

    markdown = (paper_report / "report.md").read_text()
    dfd = table.loc[("masm/no-mask", "dfd")]
    assert f"{dfd['mean']:.3f} ± {dfd['std']:.3f} ({dfd['delta']:+.3f}*) |" in markdown
    cdf = table.loc[("masm/no-mask", "celebdf-v2")]
    assert f"{cdf['mean']:.3f} ± {cdf['std']:.3f} ({cdf['delta']:+.3f}) |" in markdown
    assert "| method | ff-c23 (in-domain) | celebdf-v2 | dfd |" in markdown  # the p-value table
    tex = (paper_report / "ablation.tex").read_text()
    assert f"(${dfd['delta']:+.3f}^{{*}}$)" in tex and tex.count(r"\begin{tabular}") == 2


def test_paper_table_beside_effort(paper_report: Path) -> None:
    markdown = (paper_report / "report.md").read_text()
    assert "## Beside Effort, Table 1" in markdown and "## Beside DeepfakeBench v1" in markdown
    assert "| method | CDF-v2 | DFD | avg |" in markdown
    assert f"| Effort | 0.956 | 0.965 | {(0.956 + 0.965) / 2:.3f} |" in markdown  # avg over the two sets shown
    cdf, dfd = np.mean(_auc("effort", "celebdf-v2")), np.mean(_auc("effort", "dfd"))
    avg = np.mean([np.mean(pair) for pair in zip(_auc("effort", "celebdf-v2"), _auc("effort", "dfd"), strict=True)])
    assert (
        f"| effort - Effort | {cdf - 0.956:+.3f} | {dfd - 0.965:+.3f} | {avg - (0.956 + 0.965) / 2:+.3f} |" in markdown
    )
    assert "| effort (ours) | " in markdown and "| SBI | 0.886 | 0.827 | 0.857 |" in markdown
    tidy = pd.read_csv(paper_report / "paper_effort-table1.csv")
    difference = tidy[tidy["kind"] == "difference"].set_index("column")["mean"]
    assert difference["CDF-v2"] == pytest.approx(cdf - 0.956)


def test_report_figures_are_pngs_and_linked(paper_report: Path) -> None:
    markdown = (paper_report / "report.md").read_text()
    for name in ("roc.png", "ablation_bars.png", "drift_vs_auc.png", "spectra.png", "mask_history.png"):
        assert (paper_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown


def test_paper_table_uses_the_published_average_when_every_set_is_covered() -> None:
    published = pd.read_csv(PUBLISHED_DIR / "effort-table1.csv")
    cards = [c for c, column in PAPER_COLUMNS.items() if column in published.columns]
    long = pd.DataFrame(
        [("effort", 0, TRAIN, "selected", card, "auc", 0.9) for card in cards],
        columns=["label", "seed", "train_set", "checkpoint", "test_set", "metric", "value"],
    )
    tidy = paper_table(long, published).set_index(["kind", "method", "column"])["mean"]
    assert tidy["published", "ProDet", "avg"] == pytest.approx(0.828)  # as printed (its values average 0.825)
    assert tidy["difference", "effort - Effort", "avg"] == pytest.approx(0.9 - 0.917)
    assert tidy["ours", "effort", "FFIW"] == pytest.approx(0.9)
    assert paper_table(long.assign(test_set="offline-jpeg"), published).empty


def test_paired_delong_needs_the_same_frames_and_stouffer_keeps_one_p() -> None:
    a, b = _scores("masm", 0, "dfd"), _scores("masm/no-mask", 0, "dfd")
    auc_a, auc_b, p = paired_delong(a, b)
    va, vb = video_scores(a), video_scores(b)
    assert len(va) == len(a) // 4  # four frames per video: the test pairs videos
    assert (auc_a, auc_b, p) == delong_test(va["label"], va["score"], vb["score"])
    with pytest.raises(ValueError, match="list different frames"):
        paired_delong(a, b.iloc[::-1])
    assert stouffer([-0.1], [0.03]) == pytest.approx(0.03)
    assert stouffer([0.1, -0.1], [0.01, 0.01]) == pytest.approx(1.0)
    assert 0 < stouffer([0.1, 0.1], [0.0, 0.5]) < 1e-100  # a p of 0 stays finite in z
