"""Tests of bench.report: long results, the cross-dataset table, its intervals and formats, tuning on validation, the
heatmap and a real MLflow store."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from bench import figures, registry
from bench.adapter import Activity, Artifact
from bench.data.frames import Frame
from bench.metrics import binary_metrics, delong_difference, delong_test
from bench.options import MethodOptions
from bench.registry import list_methods, register_method, register_variant
from bench.report import (
    BOOTSTRAP,
    BOOTSTRAP_SEED,
    PAPER_COLUMNS,
    PUBLISHED_DIR,
    choose_tuned,
    collect,
    cross_dataset_table,
    detectable_difference,
    format_table,
    heatmap,
    interval_table,
    paired_delong,
    paper_table,
    read_scores,
    seed_mean_aucs,
    stouffer,
    video_counts,
    video_draws,
    video_scores,
    write_report,
)
from bench.train import write_scores

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


def _log_rows(uri: str, experiment: str, rows: list[dict]) -> None:
    """Log rows shaped like :func:`_run` as finished runs of a new experiment of the MLflow store at ``uri``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    for row in rows:
        run = client.create_run(experiment_id, tags={k[5:]: v for k, v in row.items() if k.startswith("tags.")})
        for key in ("params.train.seed", "params.data.train", "params.method.name"):
            client.log_param(run.info.run_id, key[7:], row[key])
        for key in [k for k in row if k.startswith("metrics.")]:
            client.log_metric(run.info.run_id, key[8:], row[key])
        client.set_terminated(run.info.run_id)


def test_write_report_from_a_real_mlflow_store(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    uri = tracking_uri
    client = mlflow.MlflowClient(uri)
    _log_rows(uri, "offline-grid", [_run("full-ft", 0, (0.95, 0.70, 0.80)), _run("full-ft", 1, (0.97, 0.74, 0.84))])
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
    assert names.isdisjoint({"video_auc_selected.csv", "test_sets.csv", "tuning.csv"})  # not logged, no scores
    assert "## Ablations" not in markdown and "## Beside" not in markdown and "## Figures" not in markdown
    assert "## Test sets" not in markdown and "## Tuning" not in markdown and "no spread over seeds" not in markdown
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
# Run activity metrics beside the ablations: the masked share only where masking runs, train/orth for both.
ACTIVITY = {"masm": {"diag/masked_fraction": 0.25, "train/orth": 0.01}, "masm/no-mask": {"train/orth": 0.03}}
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
            "forgery": np.where(y == 1, "fake", "real"),
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


def _log_grid_run(client, experiment: str, label: str, seed: int, folder: Path, like: str = "") -> None:
    """One run as the harness logs it: tags, params, test metrics of both checkpoints, diag metrics, artifacts (the
    scores and diagnostics of the label ``like``, where given, and any ``.npz`` already in ``folder/diagnostics``)."""
    source = like or label
    tags = {"label": label, "method": label, "family": label.split("/")[0], "cell": f"{label}-{seed}"}
    run_id = client.create_run(experiment, tags={**tags, "grid": "paper", "status": "FINISHED"}).info.run_id
    params = {"method.name": label, "train.seed": seed, "data.train": TRAIN}
    metrics = {"diag/drift_mean": DRIFT[source] + seed}
    metrics |= {name: value * (1 + seed) for name, value in ACTIVITY.get(source, {}).items()}
    for card in CARDS:
        frame = _scores(source, seed, card)
        path = folder / "scores" / "selected" / f"{card}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        client.log_artifact(run_id, str(path), "scores/selected")
        for key, value in binary_metrics(frame["label"], frame["score"], frame["video"]).items():
            metrics |= {f"{key}/{card}": value, f"last/{key}/{card}": value - 0.01}
    _diagnostics(source, folder / "diagnostics")
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
    (out / "printed.txt").write_text(write_report("paper-grid", tracking_uri, out))
    return out


def _auc(label: str, card: str, metric: str = "auc") -> list[float]:
    frames = (_scores(label, s, card) for s in SEEDS)
    return [binary_metrics(f["label"], f["score"], f["video"])[metric] for f in frames]


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
        full, ablated = (np.mean(_auc(label, card, "video_auc")) for label in ("masm", "masm/no-mask"))
        row = table.loc[("masm/no-mask", card)]
        assert row["mean"] == pytest.approx(ablated) and row["std"] == pytest.approx(
            np.std(_auc("masm/no-mask", card, "video_auc"), ddof=1)
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
    auc_a, auc_b, p, se = paired_delong(a, b)
    va, vb = video_scores(a), video_scores(b)
    assert len(va) == len(a) // 4  # four frames per video: the test pairs videos
    assert (auc_a, auc_b, p) == delong_test(va["label"], va["score"], vb["score"])
    assert se == pytest.approx(math.sqrt(delong_difference(va["label"], va["score"], vb["score"])[2]))
    assert se > 0 and p == pytest.approx(2 * norm.sf(abs(auc_a - auc_b) / se))
    with pytest.raises(ValueError, match="list different frames"):
        paired_delong(a, b.iloc[::-1])
    assert stouffer([-0.1], [0.03]) == pytest.approx(0.03)
    assert stouffer([0.1, -0.1], [0.01, 0.01]) == pytest.approx(1.0)
    assert 0 < stouffer([0.1, 0.1], [0.0, 0.5]) < 1e-100  # a p of 0 stays finite in z


# Two seeds' score files of four videos (two real, two fake), two frames each; sorted video ids: f0, f1, r0, r1.
TINY_VIDEOS = ["r0", "r0", "r1", "r1", "f0", "f0", "f1", "f1"]
TINY_SCORES = ((0.1, 0.3, 0.6, 0.2, 0.4, 0.9, 0.7, 0.8), (0.5, 0.2, 0.3, 0.1, 0.6, 0.35, 0.9, 0.25))


def _tiny(scores: tuple[float, ...]) -> pd.DataFrame:
    paths = [f"{video}/{i}.png" for i, video in enumerate(TINY_VIDEOS)]
    return pd.DataFrame(
        {"video": TINY_VIDEOS, "label": [0] * 4 + [1] * 4, "forgery": "x", "score": scores, "path": paths}
    )


def test_score_files_are_read_as_written_and_as_earlier_runs_wrote_them(tmp_path: Path) -> None:
    frames = [Frame("r/0.png", 0, "real", "r"), Frame("f/0.png", 1, "alpha", "f")]
    write_scores(tmp_path / "new.csv", frames, np.array([0.25, 0.75]))
    new = read_scores(tmp_path / "new.csv")
    assert list(new.columns) == ["video", "label", "forgery", "score", "path"]
    assert new["forgery"].tolist() == ["real", "alpha"] and new["score"].tolist() == [0.25, 0.75]
    (tmp_path / "old.csv").write_text((tmp_path / "new.csv").read_text().replace("forgery", "method", 1))
    pd.testing.assert_frame_equal(read_scores(tmp_path / "old.csv"), new)


def test_seed_mean_aucs_is_the_mean_over_seeds_of_each_resample_auc() -> None:
    frames = [_tiny(scores) for scores in TINY_SCORES]
    ids = ["f0", "f1", "r0", "r1"]
    draws = np.array([[0, 1, 2, 3], [0, 0, 3, 3], [1, 0, 2, 2], [1, 1, 3, 2]])
    for metric in ("auc", "video_auc"):
        expected = []
        for draw in draws:
            per_seed = []
            for frame in frames:
                rows = video_scores(frame).reset_index() if metric == "video_auc" else frame
                drawn = pd.concat([rows[rows["video"] == ids[i]] for i in draw])  # a video drawn twice counts twice
                per_seed.append(roc_auc_score(drawn["label"], drawn["score"]))
            expected.append(np.mean(per_seed))
        assert seed_mean_aucs(frames, metric, draws) == pytest.approx(expected)
    own = [binary_metrics(f["label"], f["score"], f["video"]) for f in frames]  # the first draw is every video once
    assert seed_mean_aucs(frames, "video_auc", draws)[0] == pytest.approx(np.mean([m["video_auc"] for m in own]))


def test_video_draws_keep_each_class_and_repeat_with_the_seed() -> None:
    frames = [_tiny(scores) for scores in TINY_SCORES]
    draws = video_draws(frames, 50, np.random.default_rng(1))
    assert draws.shape == (50, 4)
    assert set(draws[:, :2].ravel()) == {0, 1} and set(draws[:, 2:].ravel()) == {2, 3}  # fakes f0, f1; reals r0, r1
    assert (draws == video_draws(frames, 50, np.random.default_rng(1))).all()


def test_intervals_from_score_files_or_logged_bounds_and_the_chance_mark(runs: pd.DataFrame) -> None:
    # full-ft logged frame-AUC intervals on the cross-dataset sets: jpeg's mean lower bound reaches chance.
    for seed, (jpeg, noise) in {0: ((0.40, 0.80), (0.60, 0.90)), 1: ((0.50, 0.90), (0.62, 0.92))}.items():
        at = runs["run_id"] == f"full-ft-{seed}"
        runs.loc[at, ["metrics.auc_lo/offline-jpeg", "metrics.auc_hi/offline-jpeg"]] = jpeg
        runs.loc[at, ["metrics.auc_lo/offline-noise", "metrics.auc_hi/offline-noise"]] = noise
    long = collect(runs)
    # masm/no_mask (one seed) has score files of every set: its intervals resample them.
    scores = {("masm/no_mask", 0, card): _tiny(TINY_SCORES[i % 2]) for i, card in enumerate(SETS)}
    intervals = interval_table(long, "auc", "selected", scores, resamples=200)

    full = intervals.loc["full-ft"]
    assert (full["offline-jpeg", "lo"], full["offline-jpeg", "hi"]) == pytest.approx((0.45, 0.85))
    assert (full["offline-noise", "lo"], full["offline-noise", "hi"]) == pytest.approx((0.61, 0.91))
    assert full[["offline-ff (in-domain)", "avg"]].isna().all()  # nothing logged in-domain; no bootstrap for avg
    values = {}
    for card in SETS:
        frames = [scores["masm/no_mask", 0, card]]
        rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(card.encode())])
        values[card] = seed_mean_aucs(frames, "auc", video_draws(frames, 200, rng))
    ablated = intervals.loc["masm/no_mask"]
    assert (ablated["offline-jpeg", "lo"], ablated["offline-jpeg", "hi"]) == pytest.approx(
        tuple(np.percentile(values["offline-jpeg"], [2.5, 97.5]))
    )
    avg = np.mean([values["offline-jpeg"], values["offline-noise"]], axis=0)  # each set resampled on its own
    assert (ablated["avg", "lo"], ablated["avg", "hi"]) == pytest.approx(tuple(np.percentile(avg, [2.5, 97.5])))

    table = cross_dataset_table(long, intervals=intervals)
    row = (
        "| full-ft | 0.960 ± 0.014 | 0.720 ± 0.028 [0.450, 0.850]° | 0.820 ± 0.028 [0.610, 0.910] | 0.770 ± 0.028 | 2 |"
    )
    assert format_table(table, "markdown").splitlines()[2] == row
    text = format_table(table, "text").splitlines()[2]
    assert "0.720 ± 0.028 [0.450, 0.850]°" in text and "0.820 ± 0.028 [0.610, 0.910] " in text
    latex = format_table(table, "latex")
    assert r"$0.720 \pm 0.028\ [0.450, 0.850]^{\circ}$ & $0.820 \pm 0.028\ [0.610, 0.910]$ &" in latex
    cells = format_table(table, "markdown").splitlines()[3].split(" | ")[1:5]  # masm/no_mask: marked where due
    columns = list(dict.fromkeys(table.columns.get_level_values(0)))
    assert [cell.endswith("°") for cell in cells] == [bool(ablated[c, "lo"] <= 0.5) for c in columns]


def test_detectable_difference_is_just_significant_by_stouffer() -> None:
    se = [0.02, 0.04]
    d = detectable_difference(se)
    assert d == pytest.approx(norm.isf(0.025) * math.sqrt(2) / (1 / 0.02 + 1 / 0.04))
    assert stouffer([d, d], [2 * norm.sf(d / s) for s in se]) == pytest.approx(0.05)
    assert math.isnan(detectable_difference([0.0, 0.1]))  # no variance on one seed: nothing to test


def test_video_counts_take_the_first_score_file_of_each_set() -> None:
    one_class = _tiny(TINY_SCORES[0]).iloc[4:]
    scores = {("b", 0, "x"): one_class, ("a", 1, "x"): _tiny(TINY_SCORES[0]), ("a", 0, "y"): one_class}
    counts = video_counts(scores)
    assert counts.values.tolist() == [["x", 2, 2, 8], ["y", 0, 2, 4]]


def test_a_one_seed_report_says_so(tracking_uri: str, tmp_path: Path) -> None:
    _log_rows(tracking_uri, "one-seed", [_run("full-ft", 0, (0.95, 0.70, 0.80))])
    printed = write_report("one-seed", tracking_uri, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "## AUC, validation-selected checkpoint — one seed: no spread over seeds" in markdown
    assert "## EER, last checkpoint — one seed: no spread over seeds" in markdown
    assert printed.startswith("AUC (validation-selected checkpoint) — one seed: no spread over seeds\n")
    assert "| full-ft | 0.950 | 0.700 | 0.800 | 0.750 | 1 |" in markdown


def _tuned(label: str, seed: int, tune: str, val: float, auc: tuple[float, ...]) -> dict:
    return _run(label, seed, auc, **{"run_id": f"{label}-{tune}-{seed}", "tags.tune": tune, "metrics.val/auc": val})


# optim.lr=0.001 is the better value on validation (mean 0.95) and the worse one on the test sets: it must be kept.
TUNED = [
    _tuned("masm", 0, "optim.lr=0.001", 0.96, (0.99, 0.60, 0.62)),
    _tuned("masm", 1, "optim.lr=0.001", 0.94, (0.98, 0.64, 0.66)),
    _tuned("masm", 0, "optim.lr=0.01", 0.90, (0.97, 0.90, 0.92)),
    _tuned("masm", 1, "optim.lr=0.01", 0.92, (0.96, 0.88, 0.90)),
    _tuned("full-ft", 0, "", 0.99, (0.95, 0.70, 0.80)),
]


def test_choose_tuned_keeps_the_value_best_on_validation_not_on_test() -> None:
    kept, tuning = choose_tuned(pd.DataFrame(TUNED))
    assert sorted(kept["run_id"]) == ["full-ft--0", "masm-optim.lr=0.001-0", "masm-optim.lr=0.001-1"]
    rows = tuning.set_index(["label", "tune"])
    assert list(tuning.columns) == ["label", "train_set", "tune", "mean", "std", "n", "kept"]
    assert rows.loc[("masm", "optim.lr=0.001"), ["mean", "std"]].tolist() == pytest.approx([0.95, math.sqrt(2e-4)])
    assert rows.loc[("masm", "optim.lr=0.01"), "mean"] == pytest.approx(0.91)
    assert rows["n"].tolist() == [1, 2, 2] and rows["kept"].tolist() == [True, True, False]
    table = cross_dataset_table(collect(kept))
    assert table.loc["masm", ("offline-jpeg", "mean")] == pytest.approx(0.62)  # the kept value's test AUC
    assert table.loc["masm", ("offline-jpeg", "n")] == 2


def test_choose_tuned_ties_untuned_runs_and_missing_validation(runs: pd.DataFrame) -> None:
    tied = pd.DataFrame(TUNED[::-1]).assign(**{"metrics.val/auc": 0.9})
    assert set(choose_tuned(tied)[0]["tags.tune"]) == {"", "optim.lr=0.001"}  # the first value in sorted order
    kept, tuning = choose_tuned(runs)  # no tune tag: every finished run kept
    assert sorted(kept["run_id"]) == ["full-ft-0", "full-ft-1", "masm/no_mask-0"] and tuning.empty
    kept, tuning = choose_tuned(pd.DataFrame(TUNED[:2] + TUNED[4:]))  # one value per label: nothing to choose
    assert len(kept) == 3 and tuning.empty
    untagged = {**TUNED[4], "tags.tune": None, "metrics.val/auc": 0.5, "start_time": 1}  # an older run, no tag
    kept, tuning = choose_tuned(pd.DataFrame([*TUNED, untagged]).fillna({"start_time": 2}))
    assert len(kept) == 3 and tuning.loc[tuning["label"] == "full-ft", ["mean", "n"]].values.tolist() == [[0.99, 1]]
    unscored = pd.DataFrame(TUNED)
    unscored.loc[unscored["tags.tune"] == "optim.lr=0.01", "metrics.val/auc"] = float("nan")
    with pytest.raises(ValueError, match=r"runs of masm \[optim.lr=0.01\] have no metrics.val/auc"):
        choose_tuned(unscored)


def test_write_report_keeps_the_tune_value_chosen_on_validation(tracking_uri: str, tmp_path: Path) -> None:
    _log_rows(tracking_uri, "tuned-grid", TUNED)
    printed = write_report("tuned-grid", tracking_uri, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Tuning (chosen on validation only)" in markdown
    assert "| full-ft | offline-ff | (none) | 0.990 | 1 | yes |" in markdown
    assert "| masm | offline-ff | optim.lr=0.001 | 0.950 ± 0.014 | 2 | yes |" in markdown
    assert "| masm | offline-ff | optim.lr=0.01 | 0.910 ± 0.014 | 2 |  |" in markdown
    assert "| masm | 0.985 ± 0.007 | 0.620 ± 0.028 | 0.640 ± 0.028 | 0.630 ± 0.028 | 2 |" in markdown
    assert "0.900" not in markdown.split("## AUC, validation-selected checkpoint")[1]  # no run of optim.lr=0.01
    assert printed.endswith(
        "Tuning (chosen on validation only)\nfull-ft: (none) kept of 1 tried (val AUC 0.990)\n"
        "masm: optim.lr=0.001 kept of 2 tried (val AUC 0.950 ± 0.014)"
    )
    tuning = pd.read_csv(tmp_path / "tuning.csv", keep_default_na=False)
    assert tuning[["label", "tune", "n", "kept"]].values.tolist() == [
        ["full-ft", "", 1, True],
        ["masm", "optim.lr=0.001", 2, True],
        ["masm", "optim.lr=0.01", 2, False],
    ]


def _section(markdown: str, heading: str) -> str:
    """The body of the Markdown section ``## <heading>``."""
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _column(card: str) -> str:
    return f"{card} (in-domain)" if card == TRAIN else card


def test_report_tables_carry_video_level_intervals_from_the_score_files(paper_report: Path) -> None:
    label = "masm/no-mask"
    markdown, printed = ((paper_report / name).read_text() for name in ("report.md", "printed.txt"))
    for metric, title in (("auc", "AUC"), ("video_auc", "Video AUC")):
        table = pd.read_csv(paper_report / f"{metric}_selected.csv", index_col=0)
        values = {}
        for card in CARDS:
            frames = [_scores(label, seed, card) for seed in SEEDS]
            rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(card.encode())])
            values[card] = seed_mean_aucs(frames, metric, video_draws(frames, BOOTSTRAP, rng))
        values["avg"] = np.mean([values[card] for card in CARDS[1:]], axis=0)
        for card, resampled in values.items():
            column = _column(card) if card != "avg" else card
            low, high = np.percentile(resampled, [2.5, 97.5])
            assert table.loc[label, [f"{column}:lo", f"{column}:hi"]].tolist() == pytest.approx([low, high])
        dfd = table.loc[label]
        cell = f"{dfd['dfd:mean']:.3f} ± {dfd['dfd:std']:.3f} [{dfd['dfd:lo']:.3f}, {dfd['dfd:hi']:.3f}]"
        assert f"{cell} |" in _section(markdown, f"{title}, validation-selected checkpoint")
        assert f"{cell} " in printed.split(f"{title} (validation-selected checkpoint)")[1]
    assert "°: the interval reaches 0.5" in _section(markdown, "AUC, validation-selected checkpoint")
    last = _section(markdown, "AUC, last checkpoint")  # no score files of the last checkpoint, no logged bounds
    assert "| masm | " in last and "[" not in last.split("Brackets:")[0]


def test_report_counts_the_test_videos(paper_report: Path) -> None:
    markdown = (paper_report / "report.md").read_text()
    rows = "\n".join(f"| {_column(card)} | 30 | 30 | {FRAMES} |" for card in CARDS)  # in-domain first
    assert rows in _section(markdown, "Test sets")
    assert pd.read_csv(paper_report / "test_sets.csv").values.tolist() == [
        [card, 30, 30, FRAMES] for card in sorted(CARDS)
    ]


def test_ablation_states_the_detectable_difference_and_run_activity(paper_report: Path) -> None:
    table = pd.read_csv(paper_report / "ablation.csv").set_index(["label", "column"])
    cells = []
    for card in CARDS:
        se = []
        for seed in SEEDS:
            full, ablated = (video_scores(_scores(label, seed, card)) for label in ("masm", "masm/no-mask"))
            se.append(math.sqrt(max(delong_difference(full["label"], full["score"], ablated["score"])[2], 0)))
        expected = norm.isf(0.025) * math.sqrt(len(SEEDS)) / sum(1 / s for s in se) if min(se) > 0 else math.nan
        assert table.loc[("masm/no-mask", _column(card)), "detectable"] == pytest.approx(expected, nan_ok=True)
        cells.append("–" if math.isnan(expected) else f"{expected:.3f}")
    assert cells[-1] != "–"  # dfd: a finite difference, one ablation, so the median is its own
    section = _section(
        (paper_report / "report.md").read_text(), "Ablations of `masm` (video AUC, validation-selected checkpoint)"
    )
    means = section.split("p-values")[0]
    assert f"| detectable at p<0.05 | {' | '.join(cells)} | – | – |  |  |" in means
    # Activity: only the columns some run logged, the mean over seeds (seed 1 logs twice seed 0's value), – if absent.
    assert "| method | ff-c23 (in-domain) | celebdf-v2 | dfd | avg | seeds | masked | orth |" in means
    assert [line.rsplit(" | ", 3)[1:] for line in means.splitlines() if line.startswith("| masm")] == [
        ["2", "0.375", "0.015 |"],
        ["2", "–", "0.045 |"],
    ]
    assert table.loc[("masm", "dfd"), "diag/masked_fraction"] == pytest.approx(0.375)
    assert "train/spec" not in table.columns and "`orth` (train/orth)" in means


def test_a_new_method_gets_its_ablation_table_and_figures(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method registered here, `foo`, with an ablation `foo/bar`, an artifact and an activity value of its own: the
    report draws them as it does MASM's (the runs score like masm and masm/no-mask, and also hold MASM's files and
    values, which foo does not declare)."""
    import mlflow

    @dataclass
    class FooOptions(MethodOptions):
        pass

    def draw(arrays: Mapping[str, Mapping[str, np.ndarray]], out: Path) -> Path:
        drawn.update({label: int(a["seed"]) for label, a in arrays.items()})
        fig = Figure()
        fig.subplots().plot([0, 1])
        return figures.save(fig, out)

    drawn: dict[str, int] = {}
    trace = Artifact("foo_trace.npz", draw, "Foo's trace (first seed)")
    list_methods()  # the built-in methods first, so that the copy restored after the test holds them
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    orth = Activity("train/orth", "foo's orth")
    register_method("foo", FooOptions, "a throwaway method", artifacts=(trace,), activity=(orth,))(
        lambda backbone, options: None
    )
    register_variant("foo/bar", "foo", "its ablation")

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("foo-grid", artifact_location=(tmp_path / "artifacts").as_uri())
    for label, like in (("foo", "masm"), ("foo/bar", "masm/no-mask")):
        for seed in SEEDS:
            folder = tmp_path / f"{label.replace('/', '_')}-{seed}"
            (folder / "diagnostics").mkdir(parents=True)
            np.savez(folder / "diagnostics" / trace.file, seed=seed)
            _log_grid_run(client, experiment, label, seed, folder, like=like)
    out = tmp_path / "report"
    write_report("foo-grid", tracking_uri, out)

    table = pd.read_csv(out / "ablation.csv").set_index(["label", "column"])
    assert set(table["reference"]) == {"foo"} and list(dict.fromkeys(table.index.get_level_values(0))) == [
        "foo",
        "foo/bar",
    ]
    full, ablated = (np.mean(_auc(like, "dfd", "video_auc")) for like in ("masm", "masm/no-mask"))
    assert table.loc[("foo/bar", "dfd"), "delta"] == pytest.approx(ablated - full)
    assert table.loc[("foo/bar", "dfd"), "p"] == pytest.approx(_stouffer_by_hand("dfd"))
    markdown = (out / "report.md").read_text()
    assert "## Ablations of `foo` (video AUC, validation-selected checkpoint)" in markdown
    assert "`foo's orth` (train/orth)" in markdown and "diag/masked_fraction" not in table.columns  # masm's
    assert table.loc[("foo/bar", "dfd"), "train/orth"] == pytest.approx(np.mean([0.03 * (1 + s) for s in SEEDS]))
    assert drawn == {"foo": 0, "foo/bar": 0}  # the first seed of each label
    for name, caption in (
        ("ablation_bars.png", "Cross-dataset AUC of `foo` and its ablations"),
        (trace.figure, trace.caption),
    ):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and caption in markdown
    assert not (out / "spectra.png").exists() and not (out / "mask_history.png").exists()  # not foo's
