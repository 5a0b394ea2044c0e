"""The report: MLflow runs -> cross-dataset tables, the ablation table, published tables side by side, figures.

Each run carries ``<metric>/<set>`` for the validation-selected checkpoint and ``last/<metric>/<set>`` for the last
one: the headline in MLflow's metrics (:mod:`bench.leaderboard`), all of them in its ``metrics.json`` artifact, which
is read first (:func:`with_results`). The set equal to ``params.data.train`` is in-domain, the others are
cross-dataset. No test-selected checkpoint exists here, so none can be reported; where a grid tried several values of
a tune axis (tag ``tune``), the value kept is chosen on validation AUC only (:func:`choose_tuned`). Score files
(``scores/<checkpoint>/<set>.csv``) and diagnostics (``diagnostics/*.npz``) are run artifacts too, downloaded only
where a table or figure needs them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from bench import figures, registry
from bench.adapter import Artifact
from bench.errors import InputError
from bench.metric_keys import DIAG, LAST, SELECTED, VAL, ResultKey, RobustKey, grouped
from bench.metrics import bootstrap_aucs, delong_difference, delong_p, stratified_draws

METRICS = ("auc", "eer", "ap", "acc", "video_auc", "video_eer", "auc_lo", "auc_hi", "video_auc_lo", "video_auc_hi")
TABLES = {"auc": "AUC", "video_auc": "Video AUC", "eer": "EER"}  # the cross-dataset tables: metric -> title
INTERVAL_METRICS = ("auc", "video_auc")  # tables whose cells carry a 95% interval
LONG_COLUMNS = ["label", "seed", "train_set", "checkpoint", "test_set", "metric", "value"]
RUN_COLUMNS = {"tags.label": "label", "params.train.seed": "seed", "params.data.train": "train_set"}
CHECKPOINT_NAMES = {SELECTED: "validation-selected checkpoint", LAST: "last checkpoint"}
FORMATS = ("text", "markdown", "latex")
STATS = ("mean", "std", "n")
BOUNDS = ("lo", "hi")
BOOTSTRAP = 1000  # resamples of the test videos behind each interval
BOOTSTRAP_SEED = 0
CHANCE = 0.5
CHANCE_MARK = "°"  # the interval reaches chance: not above it
ONE_SEED = "one seed: no spread over seeds"
TUNE = "tags.tune"
COLUMN = "metrics."  # what MLflow's runs frame puts before a run's value name
VALIDATION = COLUMN + grouped(VAL, "auc")  # the only number a tune value is chosen on
TUNING_COLUMNS = ["label", "train_set", "tune", *STATS, "kept"]
ALPHA = 0.05
PAPER_COLUMNS = {
    "celebdf-v1": "CDF-v1",
    "celebdf-v2": "CDF-v2",
    "dfd": "DFD",
    "dfdc": "DFDC",
    "dfdcp": "DFDCP",
    "deeperforensics": "DFo",
    "wilddeepfake": "WDF",
    "ffiw": "FFIW",
}
PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "results" / "published"
PUBLISHED_TABLES = {"effort-table1": "Effort, Table 1", "deepfakebench-v1": "DeepfakeBench v1"}
PUBLISHED_AS = {"effort": "Effort"}  # our label -> the method's name in published tables
DRIFT = COLUMN + grouped(DIAG, "drift_mean")
METHOD = "params.method.name"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
RESULTS = "metrics.json"  # the run artifact with every value its training returned
ScoreFiles = Mapping[tuple[str, int, str], pd.DataFrame]  # score frames keyed (label, seed, test_set)


def _value_name(column: str) -> str:
    """The run's value name of a ``metrics.<name>`` column (empty for other columns)."""
    return column.removeprefix(COLUMN) if column.startswith(COLUMN) else ""


def _parse_metric(column: str) -> tuple[str, str, str] | None:
    """``(checkpoint, metric, test_set)`` of a column of a :data:`METRICS` test result, or None for other columns."""
    key = ResultKey.parse(_value_name(column))
    return (key.checkpoint, key.metric, key.test_set) if key is not None and key.metric in METRICS else None


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose MLflow status and ``status`` tag (where present) are both FINISHED; newest first, one per cell.

    A rerun of a cell (same label, seed, training set and tune value) replaces the older run; a run without a
    ``tune`` tag has the empty value.
    """
    keep = pd.Series(True, index=runs.index)
    for column in ("status", "tags.status"):
        if column in runs:
            keep &= runs[column].fillna("FINISHED").eq("FINISHED")
    runs = runs[keep]
    if "start_time" in runs:
        runs = runs.sort_values("start_time", ascending=False, kind="stable")
    missing = [c for c in RUN_COLUMNS if c not in runs]
    if missing and not runs.empty:
        raise InputError(f"runs lack the column(s) {missing}: is this an experiment written by the harness?")
    if runs.empty:
        return runs
    if TUNE not in runs:
        return runs.drop_duplicates(list(RUN_COLUMNS))
    return runs.assign(**{TUNE: runs[TUNE].fillna("")}).drop_duplicates([*RUN_COLUMNS, TUNE])


def choose_tuned(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished runs of the tune value with the best mean validation AUC over seeds, per label and training set.

    Only ``metrics.val/auc`` (the validation-selected checkpoint on the validation split) decides, never a test
    metric; a tie goes to the first value in sorted order. Runs without a ``tune`` tag have the empty value.

    Returns:
        The kept runs, and the tuning table ``label, train_set, tune, mean, std, n, kept`` (the validation AUC over
        seeds per value tried): empty unless some label tried more than one value.

    Raises:
        InputError: a value to choose among has no validation AUC.
    """
    runs = _finished(runs)
    none = pd.DataFrame(columns=TUNING_COLUMNS)
    if TUNE not in runs or runs.empty:
        return runs, none
    keys = ["tags.label", "params.data.train"]
    if runs.groupby(keys)[TUNE].nunique().max() < 2:
        return runs, none
    validation = runs[VALIDATION] if VALIDATION in runs else pd.Series(np.nan, index=runs.index)
    table = validation.groupby([runs[k] for k in [*keys, TUNE]]).agg(["mean", "std", "count"]).reset_index()
    table = table.set_axis(TUNING_COLUMNS[:-1], axis=1)
    unscored = table[table["mean"].isna()]
    if not unscored.empty:
        row = unscored.iloc[0]
        raise InputError(f"runs of {row['label']} [{row['tune']}] have no {VALIDATION}: no tune value can be chosen")
    table["kept"] = table.index.isin(table.groupby(["label", "train_set"])["mean"].idxmax())
    chosen = table.loc[table["kept"], ["label", "train_set", "tune"]].set_axis([*keys, TUNE], axis=1)
    return runs.merge(chosen, on=[*keys, TUNE]), table.astype({"n": int})


def collect(runs: pd.DataFrame) -> pd.DataFrame:
    """Long results of the FINISHED runs of an ``mlflow.search_runs`` frame.

    Returns:
        One row per value with columns ``label, seed, train_set, checkpoint ("selected"/"last"), test_set, metric,
        value``.
    """
    runs = _finished(runs)
    parsed = {c: p for c in runs.columns if (p := _parse_metric(c))}
    if runs.empty or not parsed:
        return pd.DataFrame(columns=LONG_COLUMNS)
    spec = pd.DataFrame([(c, *p) for c, p in parsed.items()], columns=["column", "checkpoint", "metric", "test_set"])
    long = runs.rename(columns=RUN_COLUMNS).melt(
        id_vars=list(RUN_COLUMNS.values()), value_vars=list(parsed), var_name="column", value_name="value"
    )
    long = long.dropna(subset=["value"]).merge(spec, on="column")
    return long.astype({"seed": int, "value": float})[LONG_COLUMNS].reset_index(drop=True)


def in_domain(test_set: str) -> str:
    """The column name of the in-domain test set."""
    return f"{test_set} (in-domain)"


def per_seed_table(long: pd.DataFrame, metric: str = "auc", checkpoint: str = SELECTED) -> pd.DataFrame:
    """One value per ``(label, seed)`` row and column: the in-domain set, the cross-dataset sets, then ``avg``.

    ``avg`` is the mean over the cross-dataset sets only (NaN when the seed misses one).
    """
    rows = long[(long["metric"] == metric) & (long["checkpoint"] == checkpoint)]
    if rows.empty:
        raise ValueError(f"no '{metric}' values for the '{checkpoint}' checkpoint in the runs")
    train_sets = sorted(rows["train_set"].unique())
    if len(train_sets) > 1:
        raise InputError(f"runs trained on different sets {train_sets}: make one table per training set")
    per_seed = rows.pivot(index=["label", "seed"], columns="test_set", values="value")
    cross = sorted(set(per_seed.columns) - set(train_sets))
    per_seed["avg"] = per_seed[cross].mean(axis=1, skipna=False)
    per_seed = per_seed.rename(columns={train_sets[0]: in_domain(train_sets[0])})
    return per_seed[[c for c in per_seed.columns if c.endswith("(in-domain)")] + cross + ["avg"]]


def _summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds per label: columns ``(column, "mean" | "std" | "n")``."""
    by_label = per_seed.groupby(level="label")
    stats = pd.concat({"mean": by_label.mean(), "std": by_label.std(ddof=1), "n": by_label.count()}, axis=1)
    return stats.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([list(per_seed.columns), STATS]))


def cross_dataset_table(
    long: pd.DataFrame, metric: str = "auc", checkpoint: str = SELECTED, intervals: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Mean, sample std and number of seeds per label (rows) and test set (columns), and intervals if given.

    Columns are the in-domain set first (named ``"<set> (in-domain)"``), the cross-dataset sets, then ``avg``: the
    mean over cross-dataset sets only, computed per seed (seeds missing a set are left out) and then summarised
    over seeds like the other columns.

    Args:
        long: the output of :func:`collect`.
        metric: the metric tabulated.
        checkpoint: ``selected`` or ``last``.
        intervals: an :func:`interval_table` of the same metric and checkpoint, joined as ``lo`` and ``hi``.

    Returns:
        A frame indexed by label with two-level columns ``(column, "mean" | "std" | "n")``, plus ``"lo" | "hi"``
        with ``intervals``.
    """
    stats = _summary(per_seed_table(long, metric, checkpoint))
    if intervals is None:
        return stats
    columns = list(dict.fromkeys(stats.columns.get_level_values(0)))
    return stats.join(intervals).reindex(columns=pd.MultiIndex.from_product([columns, [*STATS, *BOUNDS]]))


def video_draws(frames: Sequence[pd.DataFrame], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Resamples (``resamples`` x videos) of the sorted video ids of score files, drawn within each class."""
    return stratified_draws(_video_labels(frames).to_numpy(), resamples, rng)


def _video_labels(frames: Sequence[pd.DataFrame]) -> pd.Series:
    """The label of every video of the score files, indexed by the sorted video ids."""
    return pd.concat([video_scores(frame)["label"] for frame in frames]).groupby(level=0).first()


def seed_mean_aucs(frames: Sequence[pd.DataFrame], metric: str, draws: np.ndarray) -> np.ndarray:
    """Per resample of the videos, the mean over seeds of each seed's AUC on that resample.

    Args:
        frames: one label's score files of one test set, one per seed (the same videos).
        metric: ``auc`` (each drawn video brings its frames) or ``video_auc`` (mean frame score per video).
        draws: resamples x videos, indices into the sorted video ids of ``frames`` (:func:`video_draws`).

    Returns:
        One value per resample; the 2.5 and 97.5 percentiles are the 95% interval of the mean over seeds.
    """
    videos = _video_labels(frames).index.to_numpy()
    aucs = []
    for frame in frames:
        rows = video_scores(frame).reset_index() if metric == "video_auc" else frame
        unit = np.searchsorted(videos, rows["video"].to_numpy())
        aucs.append(bootstrap_aucs(rows["label"].to_numpy(), rows["score"].to_numpy(), unit, draws))
    return np.mean(aucs, axis=0)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles (a 95% interval) of resample values."""
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def interval_table(
    long: pd.DataFrame,
    metric: str,
    checkpoint: str,
    scores: ScoreFiles,
    resamples: int = BOOTSTRAP,
) -> pd.DataFrame:
    """95% intervals of the mean over seeds per label and column of :func:`cross_dataset_table`.

    A cell whose seeds all have a score file: percentiles of :func:`seed_mean_aucs` over ``resamples`` video
    resamples (seeded by the test set's name, so reports are reproducible and labels share resamples); ``avg``: the
    mean of its cross-dataset sets' resample values (each set resampled independently). Other cells: the mean over
    seeds of the runs' logged ``<metric>_lo`` and ``<metric>_hi`` (none for ``avg``), else NaN.

    Args:
        long: the output of :func:`collect`.
        metric: ``auc`` or ``video_auc``.
        checkpoint: ``selected`` or ``last``.
        scores: that checkpoint's score files keyed ``(label, seed, test_set)``.
        resamples: resamples of the videos.

    Returns:
        A frame indexed by label with two-level columns ``(column, "lo" | "hi")``.
    """
    per_seed = per_seed_table(long, metric, checkpoint)
    train_set = long["train_set"].iloc[0]
    cross = [c for c in per_seed.columns if c != "avg" and not c.endswith("(in-domain)")]
    logged = {bound: _logged(long, f"{metric}_{bound}", checkpoint) for bound in BOUNDS}
    labels = per_seed.index.unique("label")
    out = pd.DataFrame(np.nan, index=labels, columns=pd.MultiIndex.from_product([per_seed.columns, BOUNDS]))
    for label in labels:
        values = {}
        for column in per_seed.columns.drop("avg"):
            test_set = train_set if column == in_domain(train_set) else column
            seeds = per_seed.xs(label, level="label")[column].dropna().index
            keys = [(label, seed, test_set) for seed in seeds]
            if keys and all(key in scores for key in keys):
                frames = [scores[key] for key in keys]
                rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(test_set.encode())])
                values[column] = seed_mean_aucs(frames, metric, video_draws(frames, resamples, rng))
                out.loc[label, column] = _percentiles(values[column])
            else:
                out.loc[label, column] = [logged[bound].get((label, column), math.nan) for bound in BOUNDS]
        if cross and all(column in values for column in cross):
            out.loc[label, "avg"] = _percentiles(np.mean([values[column] for column in cross], axis=0))
    return out


def _logged(long: pd.DataFrame, metric: str, checkpoint: str) -> dict[tuple[str, str], float]:
    """The mean over seeds of a logged metric per ``(label, column)`` (columns named as in the tables)."""
    if not ((long["metric"] == metric) & (long["checkpoint"] == checkpoint)).any():
        return {}
    means = per_seed_table(long, metric, checkpoint).drop(columns="avg").groupby(level="label").mean()
    return means.stack().to_dict()


def _cell(stats: pd.Series, latex: bool) -> str:
    """``0.812 ± 0.013 [0.761, 0.859]`` (``$0.812 \\pm 0.013\\ [0.761, 0.859]$`` in LaTeX) from ``mean``, ``std``,
    ``n`` and, where present, ``lo`` and ``hi``; std left out for one seed, :data:`CHANCE_MARK` appended when the
    interval reaches chance."""
    mean, std, n = (float(stats[s]) for s in STATS)
    if n == 0 or math.isnan(mean):
        return "--" if latex else "–"
    plus_minus = r"\pm" if latex else "±"
    text = f"{mean:.3f}" if n == 1 else f"{mean:.3f} {plus_minus} {std:.3f}"
    low, high = (float(stats.get(bound, math.nan)) for bound in BOUNDS)
    if not math.isnan(low):
        text += rf"\ [{low:.3f}, {high:.3f}]" if latex else f" [{low:.3f}, {high:.3f}]"
        text += (r"^{\circ}" if latex else CHANCE_MARK) if low <= CHANCE else ""
    return f"${text}$" if latex else text


def _latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped."""
    for char in "&%$#_{}":
        text = text.replace(char, f"\\{char}")
    return text


def _grid(table: pd.DataFrame, latex: bool) -> list[list[str]]:
    """Header and rows of formatted cells, with a ``seeds`` column (the most seeds behind any cell of the row)."""
    escape = _latex_escape if latex else str
    columns = list(dict.fromkeys(table.columns.get_level_values(0)))
    seeds = table.xs("n", axis=1, level=1).max(axis=1)
    rows = [
        [escape(str(label))] + [_cell(table.loc[label, c], latex) for c in columns] + [str(int(seeds[label]))]
        for label in table.index
    ]
    return [[escape(c) for c in ["method", *columns, "seeds"]], *rows]


def render(grid: list[list[str]], fmt: str) -> str:
    """Header and rows of ready cells as aligned ``text``, a ``markdown`` pipe table or a ``latex`` tabular."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}': choose one of {list(FORMATS)}")
    if fmt == "latex":
        header, *rows = grid
        lines = [" & ".join(row) + r" \\" for row in rows]
        spec = "l" + "r" * (len(header) - 1)
        head = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
        return "\n".join([*head, *lines, r"\bottomrule", r"\end{tabular}"])
    if fmt == "markdown":
        rule = ["---", *["---:"] * (len(grid[0]) - 1)]
        return "\n".join("| " + " | ".join(row) + " |" for row in [grid[0], rule, *grid[1:]])
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in grid
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """A :func:`cross_dataset_table` as aligned ``text``, a ``markdown`` pipe table or a ``latex`` booktabs tabular."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}': choose one of {list(FORMATS)}")
    return render(_grid(table, latex=fmt == "latex"), fmt)


def heatmap(table: pd.DataFrame, out: Path, title: str) -> Path:
    """An annotated seaborn heatmap of the table's means, written as a PNG to ``out``."""
    import seaborn as sns
    from matplotlib.figure import Figure

    means = table.xs("mean", axis=1, level=1).astype(float)
    fig = Figure(figsize=(1.3 * means.shape[1] + 2.5, 0.5 * means.shape[0] + 1.8))
    ax = fig.subplots()
    sns.heatmap(means, annot=True, fmt=".3f", cmap="viridis", ax=ax)
    ax.set(title=title, xlabel="test set", ylabel="")
    ax.tick_params(axis="y", labelrotation=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight", format="png")
    return out


def run_index(runs: pd.DataFrame) -> pd.DataFrame:
    """``label, seed, train_set, run_id`` of the finished runs, with ``drift`` (the mean semantic drift) and the
    methods' activity values (:func:`bench.registry.activity`, named without ``metrics.``) where logged."""
    runs = _finished(runs)
    logged = {METHOD: "method", DRIFT: "drift", **{COLUMN + key: key for key in registry.activity()}}
    columns = {**RUN_COLUMNS, "run_id": "run_id", **{c: name for c, name in logged.items() if c in runs}}
    return runs.rename(columns=columns)[list(columns.values())].astype({"seed": int}).reset_index(drop=True)


def run_ids(index: pd.DataFrame, first_seed: bool = False) -> dict[tuple[str, int], str]:
    """``(label, seed) -> run id`` of the rows of a :func:`run_index`; only each label's lowest seed if asked."""
    if first_seed:
        index = index.sort_values("seed", kind="stable").drop_duplicates("label")
    return dict(zip(zip(index["label"], index["seed"], strict=True), index["run_id"], strict=True))


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow's download progress bars switched off inside (they would clutter the printed report)."""
    previous = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = previous


def read_scores(path: Path) -> pd.DataFrame:
    """A score file: ``video, label, forgery, score, path`` per frame (the forgery column is ``method`` in the files
    of earlier runs)."""
    frame = pd.read_csv(path, dtype={"video": str, "forgery": str, "method": str, "path": str})
    return frame.rename(columns={"method": "forgery"})


class Artifacts:
    """Run artifacts, each downloaded on first use into a scratch folder; a missing artifact is ``None``."""

    def __init__(self, tracking_uri: str, scratch: Path) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri)
        self.scratch = scratch
        self._listed: dict[tuple[str, str], set[str]] = {}

    def get(self, run_id: str, path: str) -> Path | None:
        """The local copy of the artifact ``path`` of a run (e.g. ``scores/selected/x.csv``), or None."""
        folder = path.rpartition("/")[0]
        if (run_id, folder) not in self._listed:
            self._listed[run_id, folder] = {f.path for f in self.client.list_artifacts(run_id, folder or None)}
        if path not in self._listed[run_id, folder]:
            return None
        local = self.scratch / run_id / path
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            with _quiet_downloads():
                self.client.download_artifacts(run_id, path, str(local.parent))
        return local

    def scores(self, run_id: str, test_set: str, checkpoint: str = SELECTED) -> pd.DataFrame | None:
        """The per-frame scores of one test set (:func:`read_scores`), or None."""
        local = self.get(run_id, f"scores/{checkpoint}/{test_set}.csv")
        return None if local is None else read_scores(local)

    def results(self, run_id: str) -> dict[str, float] | None:
        """Every value the run's training returned (its ``metrics.json``), or None."""
        local = self.get(run_id, RESULTS)
        return None if local is None else json.loads(local.read_text())

    def arrays(self, run_id: str, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``diagnostics/<name>`` (an ``.npz``), or None."""
        local = self.get(run_id, f"diagnostics/{name}")
        if local is None:
            return None
        with np.load(local) as npz:
            return {key: npz[key] for key in npz.files}


def with_results(runs: pd.DataFrame, artifacts: Artifacts) -> pd.DataFrame:
    """An ``mlflow.search_runs`` frame with the values of the finished runs' ``metrics.json`` as ``metrics.<key>``
    columns: the results that MLflow has the headline of only (the last checkpoint, AP, accuracy, robustness, ...).
    Where MLflow has a value too, its value stands."""
    ids = [] if runs.empty else _finished(runs)["run_id"]
    records = {run_id: values for run_id in ids if (values := artifacts.results(run_id))}
    if not records:
        return runs
    extra = pd.DataFrame.from_dict(records, orient="index").add_prefix(COLUMN)
    extra = extra.reindex(runs["run_id"]).set_axis(runs.index)
    shared = extra.columns.intersection(runs.columns)
    runs = pd.concat([runs, extra[extra.columns.difference(runs.columns)]], axis=1)
    runs[shared] = runs[shared].fillna(extra[shared])
    return runs


def _test_sets(long: pd.DataFrame, label: str, seed: int) -> list[str]:
    """The test sets with an AUC of the selected checkpoint for one run."""
    rows = long[(long["label"] == label) & (long["seed"] == seed)]
    return sorted(rows.loc[(rows["metric"] == "auc") & (rows["checkpoint"] == SELECTED), "test_set"].unique())


def ablation_labels(labels: Sequence[str], reference: str) -> list[str]:
    """The reference then its ablations ``<reference>/*`` (sorted); empty without the reference or any ablation."""
    ablations = sorted(label for label in labels if label.startswith(f"{reference}/"))
    return [reference, *ablations] if reference in labels and ablations else []


def video_scores(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per video (sorted by id): its label and the mean score of its frames."""
    return frames.groupby("video", sort=True).agg(label=("label", "first"), score=("score", "mean"))


def paired_delong(reference: pd.DataFrame, other: pd.DataFrame) -> tuple[float, float, float, float]:
    """DeLong's test of two score files of the same frames, on video-level scores: ``(auc_ref, auc_other, p, se)``.

    Frames of one video are not independent samples, so the test pairs videos (mean frame score), not frames;
    the AUCs returned are video AUCs and ``se`` is DeLong's standard error of their difference.

    Raises:
        ValueError: the files do not list the same frames (``path``) in the same order, so nothing pairs them.
    """
    if not reference["path"].reset_index(drop=True).equals(other["path"].reset_index(drop=True)):
        raise ValueError("score files to compare list different frames: were both runs tested on the same card data?")
    ref, oth = video_scores(reference), video_scores(other)
    auc_ref, auc_other, var = delong_difference(
        ref["label"].to_numpy(), ref["score"].to_numpy(), oth["score"].to_numpy()
    )
    return auc_ref, auc_other, delong_p(auc_ref - auc_other, var), math.sqrt(max(var, 0.0))


def stouffer(differences: Sequence[float], pvalues: Sequence[float]) -> float:
    """Two-sided p of Stouffer's combination of signed two-sided tests: ``z_i = sign(d_i) Φ⁻¹(1 - p_i/2)``.

    ``Z = Σ z_i / √n``; a p of 0 is clipped to the smallest positive float so that z stays finite.
    """
    p = np.clip(np.asarray(pvalues, dtype=float), np.finfo(float).tiny, 1.0)
    z = np.sign(np.asarray(differences, dtype=float)) * norm.isf(p / 2)
    return float(2 * norm.sf(abs(z.sum()) / math.sqrt(len(z))))


def detectable_difference(standard_errors: Sequence[float], alpha: float = ALPHA) -> float:
    """The smallest AUC difference that Stouffer's combination of per-seed tests would make just significant.

    With seed ``i``'s difference tested as ``z_i = d / SE_i``, ``Z = d Σ (1/SE_i) / √n`` reaches ``z_{1-α/2}`` at
    ``d = z_{1-α/2} √n / Σ (1/SE_i)``; NaN when some standard error is 0 (e.g. both AUCs 1: no variance to test).
    """
    se = np.asarray(standard_errors, dtype=float)
    if (se <= 0).any():
        return math.nan
    return float(norm.isf(alpha / 2) * math.sqrt(len(se)) / np.sum(1 / se))


def ablation_pvalues(scores: ScoreFiles, reference: str) -> pd.DataFrame:
    """DeLong's test of each label against the reference per seed and test set, combined over seeds by Stouffer.

    Args:
        scores: score frames of the selected checkpoint keyed ``(label, seed, test_set)``; a seed counts where both
            the label and the reference have it.
        reference: the label every other label is compared with.

    Returns:
        Columns ``label, test_set, p, seeds, detectable`` (:func:`detectable_difference` of the seeds' tests).
    """
    rows = []
    for (label, seed, test_set), frame in scores.items():
        base = scores.get((reference, seed, test_set))
        if label != reference and base is not None:
            auc_base, auc, p, se = paired_delong(base, frame)
            rows.append((label, test_set, auc - auc_base, p, se))
    per_seed = pd.DataFrame(rows, columns=["label", "test_set", "difference", "p", "se"])
    combined = [
        (label, test_set, stouffer(group["difference"], group["p"]), len(group), detectable_difference(group["se"]))
        for (label, test_set), group in per_seed.groupby(["label", "test_set"])
    ]
    return pd.DataFrame(combined, columns=["label", "test_set", "p", "seeds", "detectable"])


def ablation_table(
    long: pd.DataFrame, pvalues: pd.DataFrame, reference: str, activity: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Video AUC of the reference and its ablations (selected checkpoint) with the change against the reference:
    the AUC that the DeLong tests of :func:`ablation_pvalues` compare.

    Args:
        long: the output of :func:`collect`.
        pvalues: the output of :func:`ablation_pvalues`.
        reference: the full method.
        activity: per label (index), run values to show beside (columns named by their keys).

    Returns:
        A tidy frame, one row per label and column of :func:`cross_dataset_table`: ``label, column, mean, std, n,
        delta`` (mean minus the reference's mean), ``p`` and ``detectable`` (from :func:`ablation_pvalues`; NaN for
        ``avg``, the reference and untested cells), ``significant`` (``p < ALPHA``) and the ``activity`` columns.
    """
    labels = ablation_labels(long["label"].unique(), reference)
    stats = cross_dataset_table(long[long["label"].isin(labels)], metric="video_auc")
    columns = list(dict.fromkeys(stats.columns.get_level_values(0)))
    tidy = stats.stack(level=0)[list(STATS)]
    tidy = tidy.reindex(pd.MultiIndex.from_product([labels, columns], names=["label", "column"])).reset_index()
    base = tidy[tidy["label"] == reference].set_index("column")["mean"]
    tidy["delta"] = tidy["mean"] - tidy["column"].map(base)
    train_set = long["train_set"].iloc[0]
    named = pvalues.assign(column=[in_domain(s) if s == train_set else s for s in pvalues["test_set"]])
    tidy = tidy.merge(named[["label", "column", "p", "detectable"]], on=["label", "column"], how="left")
    tidy["significant"] = tidy["p"] < ALPHA
    return tidy if activity is None else tidy.merge(activity, left_on="label", right_index=True, how="left")


def _p_cell(p: float) -> str:
    """A p-value: three decimals, scientific below 0.001, a dash when missing."""
    if math.isnan(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _change_cell(row: pd.Series, latex: bool) -> str:
    """``mean ± std (+0.012*)``: the change against the reference, starred when significant."""
    if math.isnan(row["delta"]):
        return _cell(row, latex)
    star = ("^{*}" if latex else "*") if row["significant"] else ""
    change = f"${row['delta']:+.3f}{star}$" if latex else f"{row['delta']:+.3f}{star}"
    return f"{_cell(row, latex)} ({change})"


def _number(value: float, latex: bool, spec: str = ".3f") -> str:
    """A number formatted by ``spec``, a dash when missing."""
    if math.isnan(value):
        return "--" if latex else "–"
    return f"{value:{spec}}"


def format_ablation(tidy: pd.DataFrame, fmt: str) -> tuple[str, str]:
    """An :func:`ablation_table` as two tables: mean ± std with the change per cell, the activity columns present and
    a last row with the median over the ablations of the detectable difference per test set; and the p-values."""
    latex = fmt == "latex"
    escape = _latex_escape if latex else str
    columns = list(dict.fromkeys(tidy["column"]))
    activity = [(key, header) for key, header in _activity_headers(tidy["label"].iloc[0]).items() if key in tidy]
    by_label = {label: rows.set_index("column") for label, rows in tidy.groupby("label", sort=False)}
    means = [[escape(c) for c in ["method", *columns, "seeds", *(header for _, header in activity)]]]
    pvalues = [[escape(c) for c in ["method", *columns[:-1]]]]
    for i, (label, rows) in enumerate(by_label.items()):
        cell = _cell if i == 0 else _change_cell  # the first label is the reference
        cells = [cell(rows.loc[c], latex) for c in columns]
        runs = [_number(float(rows[name].iloc[0]), latex, ".3g") for name, _ in activity]
        means.append([escape(label), *cells, str(int(rows["n"].max())), *runs])
        if i:
            pvalues.append([escape(label), *[_p_cell(float(rows.loc[c, "p"])) for c in columns[:-1]]])
    detectable = tidy.groupby("column", sort=False)["detectable"].median()
    if detectable.notna().any():
        name = rf"detectable at $p<{ALPHA}$" if latex else f"detectable at p<{ALPHA}"
        cells = [_number(float(detectable[c]), latex) for c in columns]
        means.append([name, *cells, _number(math.nan, latex), *[""] * len(activity)])
    return render(means, fmt), render(pvalues, fmt)


def load_published(path: Path) -> pd.DataFrame:
    """A published table: ``method``, its test-set columns (paper names), optional ``avg``, ``note`` and ``source``."""
    return pd.read_csv(path)


def paper_table(
    long: pd.DataFrame, published: pd.DataFrame, published_as: Mapping[str, str] = PUBLISHED_AS
) -> pd.DataFrame:
    """Our frame AUCs (selected checkpoint) in a published table's layout, beside its rows.

    Columns are the published test sets our test sets cover (cards named by :data:`PAPER_COLUMNS`), in the paper's
    order, then ``avg``: the published average where we cover all its sets, else the mean over the covered ones
    (ours per seed, then over seeds). For each ``published_as`` pair present in both, a difference row (ours - theirs).

    Returns:
        A tidy frame ``kind ("published" | "ours" | "difference"), method, column, mean, std, n``; empty when no
        test set maps to a column of ``published``.
    """
    auc = long[(long["metric"] == "auc") & (long["checkpoint"] == SELECTED)]
    auc = auc.assign(column=auc["test_set"].map(PAPER_COLUMNS)).dropna(subset=["column"])
    sets = [c for c in published.columns if c in PAPER_COLUMNS.values()]
    columns = [c for c in sets if c in set(auc["column"])]
    if not columns:
        return pd.DataFrame(columns=["kind", "method", "column", *STATS])
    per_seed = auc.pivot(index=["label", "seed"], columns="column", values="value")[columns]
    per_seed["avg"] = per_seed.mean(axis=1, skipna=False)
    ours = _summary(per_seed).stack(level=0)[list(STATS)].rename_axis(["method", "column"]).reset_index()
    theirs = published.set_index("method")[columns]
    full = columns == sets and "avg" in published
    theirs["avg"] = published.set_index("method")["avg"] if full else theirs.mean(axis=1)
    theirs = theirs.stack().rename("mean").rename_axis(["method", "column"]).reset_index()
    parts = [theirs.assign(kind="published", n=1), ours.assign(kind="ours")]
    for label, name in published_as.items():
        mine, other = (frame[frame["method"] == key] for frame, key in ((ours, label), (theirs, name)))
        if len(mine) and len(other):
            change = mine.set_index("column")["mean"] - other.set_index("column")["mean"]
            parts.append(change.reset_index().assign(kind="difference", method=f"{label} - {name}", n=1))
    return pd.concat(parts, ignore_index=True)[["kind", "method", "column", *STATS]]


def format_paper(tidy: pd.DataFrame, fmt: str) -> str:
    """A :func:`paper_table`: published rows as printed, ours as mean ± std over seeds, differences signed."""
    latex = fmt == "latex"
    escape = _latex_escape if latex else str
    columns = list(dict.fromkeys(tidy["column"]))
    grid = [[escape(c) for c in ["method", *columns]]]
    for (kind, method), rows in tidy.groupby(["kind", "method"], sort=False):
        rows = rows.set_index("column")
        name = f"{method} (ours)" if kind == "ours" else method
        cells = [_paper_cell(kind, rows.loc[c], latex) for c in columns]
        grid.append([escape(name), *cells])
    return render(grid, fmt)


def _paper_cell(kind: str, row: pd.Series, latex: bool) -> str:
    """One cell of :func:`format_paper`."""
    if kind == "ours":
        return _cell(row, latex)
    if math.isnan(row["mean"]):
        return "--" if latex else "–"
    text = f"{row['mean']:+.3f}" if kind == "difference" else f"{row['mean']:.3f}"
    return f"${text}$" if latex else text


def _write_tables(stem: Path, tidy: pd.DataFrame, tables: Sequence[str]) -> None:
    """``<stem>.csv`` (the tidy frame) and ``<stem>.tex`` (the LaTeX tables, one after the other)."""
    tidy.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".tex").write_text("\n\n".join(tables) + "\n")


def _score_frames(
    long: pd.DataFrame, runs: Mapping[tuple[str, int], str], artifacts: Artifacts, checkpoint: str = SELECTED
) -> ScoreFiles:
    """One checkpoint's scores of the given ``(label, seed) -> run id`` runs, keyed ``(label, seed, test_set)``."""
    frames = {}
    for (label, seed), run_id in runs.items():
        for test_set in _test_sets(long, label, seed):
            if (frame := artifacts.scores(run_id, test_set, checkpoint)) is not None:
                frames[label, seed, test_set] = frame
    return frames


def _activity_headers(reference: str) -> dict[str, str]:
    """The activity values ``reference`` declares (:attr:`bench.adapter.Adapter.activity`): key -> column header."""
    return {a.key: a.header for a in registry.get_method(reference).activity}


def _activity(index: pd.DataFrame, labels: Sequence[str], reference: str) -> pd.DataFrame:
    """The mean over seeds per label of the activity values of ``reference`` that some of ``labels`` logged."""
    rows = index[index["label"].isin(labels)]
    logged = [key for key in _activity_headers(reference) if key in rows and rows[key].notna().any()]
    return rows.groupby("label")[logged].mean()


def _seeds_note(n: pd.Series) -> str:
    """`` — one seed: no spread over seeds`` for a table whose cells all come from one seed, else nothing."""
    return f" — {ONE_SEED}" if n.max() <= 1 else ""


def ablation_groups(labels: Sequence[str]) -> dict[str, list[str]]:
    """Per registered method with ablations (:func:`bench.registry.ablations`), its :func:`ablation_labels` among
    ``labels``, where it has some."""
    return {ref: found for ref in registry.ablations() if (found := ablation_labels(labels, ref))}


def _ablation_section(long: pd.DataFrame, index: pd.DataFrame, scores: ScoreFiles, out_dir: Path) -> list[str]:
    """The ablation tables of every reference with ablations (``ablation.csv`` with a ``reference`` column, ``.tex``)
    and a report section each; nothing without ablations."""
    tidies: list[pd.DataFrame] = []
    latex: list[str] = []
    lines: list[str] = []
    for reference, labels in ablation_groups(long["label"].unique()).items():
        pvalues = ablation_pvalues({key: frame for key, frame in scores.items() if key[0] in labels}, reference)
        tidy = ablation_table(long, pvalues, reference, activity=_activity(index, labels, reference))
        tidies.append(tidy.assign(reference=reference))
        latex += format_ablation(tidy, "latex")
        lines += _ablation_lines(reference, tidy)
    if tidies:
        tidy = pd.concat(tidies, ignore_index=True)
        _write_tables(out_dir / "ablation", tidy[["reference", *tidy.columns.drop("reference")]], latex)
    return lines


def _ablation_lines(reference: str, tidy: pd.DataFrame) -> list[str]:
    """The report section of one reference's :func:`ablation_table`."""
    means, pvalues = format_ablation(tidy, "markdown")
    activity = ", ".join(f"`{header}` ({key})" for key, header in _activity_headers(reference).items() if key in tidy)
    return [
        "",
        f"## Ablations of `{reference}` (video AUC, validation-selected checkpoint){_seeds_note(tidy['n'])}",
        "",
        f"Cells: mean ± std over seeds and, in brackets, the change of the mean against `{reference}`; `*` marks"
        f" p < {ALPHA}. p: DeLong's test of the two video AUCs (mean frame score per video: frames of one video are"
        " not independent) on the same videos per seed, combined over the seeds both have by Stouffer's method"
        " (z signed by the AUC difference). Seeds share the test videos, which makes p somewhat optimistic."
        f" `detectable at p<{ALPHA}`: per test set, the median over the ablations of the smallest AUC difference"
        " these seeds and videos would show as significant, from DeLong's standard errors SE_i of the paired"
        f" video-AUC differences: {norm.isf(ALPHA / 2):.2f} √n / Σ 1/SE_i (– where some SE_i is 0)."
        + (f" Run activity, mean over seeds (– where a run did not log it): {activity}." if activity else ""),
        "",
        means,
        "",
        "p-values",
        "",
        pvalues,
    ]


def _paper_sections(
    long: pd.DataFrame, out_dir: Path, published_dir: Path, published_as: Mapping[str, str]
) -> list[str]:
    """One table per published source whose test sets we cover (``paper_<name>.csv``, ``.tex``) and its section."""
    lines = []
    train_sets = ", ".join(f"`{s}`" for s in sorted(long["train_set"].unique()))
    for name, title in PUBLISHED_TABLES.items():
        path = published_dir / f"{name}.csv"
        if not path.is_file():
            continue
        published = load_published(path)
        tidy = paper_table(long, published, published_as)
        if tidy.empty:
            continue
        _write_tables(out_dir / f"paper_{name}", tidy, [format_paper(tidy, "latex")])
        lines += [
            "",
            f"## Beside {title}",
            "",
            f"Frame AUC of the validation-selected checkpoint, ours trained on {train_sets}; published rows from"
            f" {published['source'].iloc[0]}. `avg` is the published one where we cover all its test sets, else the"
            " mean over the columns shown.",
            "",
            format_paper(tidy, "markdown"),
        ]
    return lines


def seed_interval(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """``level`` confidence interval of the mean over seeds (Student's t on the sample std); NaNs below two seeds."""
    n = int(values.count())
    if n < 2:
        return math.nan, math.nan
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return float(values.mean()) - half, float(values.mean()) + half


def _ablation_figure(long: pd.DataFrame, groups: Mapping[str, list[str]], out: Path) -> Path | None:
    """Per reference, bars of its and its ablations' cross-dataset AUC with 95% t-intervals over seeds."""
    panels = {}
    for reference, labels in groups.items():
        avg = per_seed_table(long[long["label"].isin(labels)])["avg"].dropna()
        bars = [(label, avg[label].mean(), *seed_interval(avg[label])) for label in labels if label in avg.index]
        panels[reference] = pd.DataFrame(bars, columns=["label", "mean", "lo", "hi"])
    return figures.ablation_bars(panels, out) if panels else None


def _drift_figure(long: pd.DataFrame, index: pd.DataFrame, out: Path) -> Path | None:
    """Mean semantic drift against cross-dataset AUC per label, for the labels that logged a drift."""
    if "drift" not in index:
        return None
    drift = index.dropna(subset=["drift"]).groupby("label")["drift"].agg(["mean", "std"])
    auc = per_seed_table(long)["avg"].dropna().groupby(level="label").agg(["mean", "std"])
    points = drift.add_prefix("drift_").join(auc.add_prefix("auc_"), how="inner")
    if points.empty:
        return None
    return figures.drift_scatter(points.rename_axis("label").reset_index(), out)


def _artifact_figure(
    artifact: Artifact, first: Mapping[tuple[str, int], str], artifacts: Artifacts, out_dir: Path
) -> Path | None:
    """A declared artifact's figure, from the first seed of each label that wrote the file."""
    arrays = {label: a for (label, _), run in first.items() if (a := artifacts.arrays(run, artifact.file))}
    return artifact.draw(arrays, out_dir / artifact.figure) if arrays else None


def _roc_figure(long: pd.DataFrame, first: Mapping[tuple[str, int], str], scores: ScoreFiles, out: Path) -> Path | None:
    """ROC curves per test set (in-domain first) of the first seed of each label."""
    train_set = long["train_set"].iloc[0]
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    frames = {key: frame for key, frame in scores.items() if key[:2] in first}
    for key in sorted(frames, key=lambda key: (key[2] != train_set, key[2], key[0])):  # in-domain first
        label, _, test_set = key
        curves.setdefault(in_domain(test_set) if test_set == train_set else test_set, {})[label] = frames[key]
    return figures.roc_curves(curves, out) if curves else None


ROC = "ROC curves per test set (first seed of each method, validation-selected checkpoint)"
DRIFT_CAPTION = "Semantic drift against cross-dataset AUC (mean ± std over seeds)"


def _ablation_caption(references: Sequence[str]) -> str:
    """The ablation bars' caption, naming the references."""
    names, whose = ", ".join(f"`{r}`" for r in references), "its" if len(references) == 1 else "their"
    return f"Cross-dataset AUC of {names} and {whose} ablations, 95% t-intervals over seeds"


def _figure_section(
    long: pd.DataFrame, index: pd.DataFrame, scores: ScoreFiles, artifacts: Artifacts, out_dir: Path
) -> list[str]:
    """Draw the figures whose inputs exist, the artifacts' that the runs' methods declare among them, and return
    their report section."""
    first = run_ids(index, first_seed=True)
    groups = ablation_groups(long["label"].unique())
    methods = index["method"].dropna().unique() if "method" in index else []
    drawn = [
        (_roc_figure(long, first, scores, out_dir / "roc.png"), ROC),
        (_ablation_figure(long, groups, out_dir / "ablation_bars.png"), _ablation_caption(list(groups))),
        (_drift_figure(long, index, out_dir / "drift_vs_auc.png"), DRIFT_CAPTION),
        *((_artifact_figure(a, first, artifacts, out_dir), a.caption) for a in registry.artifacts(methods)),
    ]
    lines = []
    for path, caption in drawn:
        if path is not None:
            lines += ["", f"{caption}:", "", f"![{caption}]({path.name})"]
    return ["", "## Figures", *lines] if lines else []


def robustness_table(runs: pd.DataFrame, metric: str = "auc") -> pd.DataFrame | None:
    """Method x perturbation x level: ``robust/<kind>/<level>/<metric>/<set>`` averaged over the test sets per seed,
    then mean ± std over seeds (columns ``<kind>:<level>``); None when no run was evaluated under perturbations."""
    runs = _finished(runs)
    keys = {c: key for c in runs.columns if (key := RobustKey.parse(_value_name(c))) and key.metric == metric}
    if runs.empty or not keys:
        return None
    long = runs.rename(columns=RUN_COLUMNS).melt(
        id_vars=["label", "seed"], value_vars=list(keys), var_name="column", value_name="value"
    )
    long["perturbation"] = long["column"].map(lambda c: f"{keys[c].kind}:{keys[c].level}")
    long = long.dropna(subset=["value"]).astype({"seed": int})
    per_seed = long.pivot_table(index=["label", "seed"], columns="perturbation", values="value", aggfunc="mean")
    order = sorted(per_seed.columns, key=lambda c: (c.split(":")[0], int(c.split(":")[1])))
    return _summary(per_seed[order])


def _robustness_section(runs: pd.DataFrame, out_dir: Path) -> list[str]:
    table = robustness_table(runs)
    if table is None:
        return []
    flat = table.set_axis([f"{c}:{s}" for c, s in table.columns], axis=1)
    flat.to_csv(out_dir / "robustness.csv")
    (out_dir / "robustness.tex").write_text(format_table(table, "latex") + "\n")
    return [
        "",
        "## Robustness (AUC under test-time perturbations, validation-selected checkpoint)",
        "",
        "Columns `<perturbation>:<level>`; cells: AUC averaged over the test sets, mean ± std over seeds.",
        "",
        format_table(table, "markdown"),
    ]


def _search_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    """``mlflow.search_runs`` of one experiment at ``tracking_uri``; the global tracking URI is left as it was."""
    import mlflow

    if mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise InputError(f"no MLflow experiment named '{experiment}' at {tracking_uri}")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(previous)


def video_counts(scores: ScoreFiles) -> pd.DataFrame:
    """Real and fake videos and frames of each test set (sorted), from its first score file by label and seed.

    Returns:
        Columns ``test_set, real, fake, frames``.
    """
    rows: list[tuple[str, int, int, int]] = []
    for label, seed, test_set in sorted(scores, key=lambda key: (key[2], key[0], key[1])):
        if not rows or rows[-1][0] != test_set:
            frame = scores[label, seed, test_set]
            videos = frame.groupby("label")["video"].nunique()
            rows.append((test_set, int(videos.get(0, 0)), int(videos.get(1, 0)), len(frame)))
    return pd.DataFrame(rows, columns=["test_set", "real", "fake", "frames"])


def _test_set_section(long: pd.DataFrame, scores: ScoreFiles, out_dir: Path) -> list[str]:
    """The sizes of the test sets (``test_sets.csv``) and their section; nothing without score files."""
    sizes = video_counts(scores)
    if sizes.empty:
        return []
    sizes.to_csv(out_dir / "test_sets.csv", index=False)
    train_sets = set(long["train_set"])
    sizes = sizes.sort_values("test_set", key=lambda sets: ~sets.isin(train_sets), kind="stable")  # in-domain first
    grid = [["card", "real videos", "fake videos", "frames"]]
    grid += [[in_domain(s) if s in train_sets else s, str(r), str(f), str(n)] for s, r, f, n in sizes.itertuples(False)]
    return [
        "",
        "## Test sets",
        "",
        "Videos are the unit of independence (frames of one video are correlated): intervals resample videos.",
        "",
        render(grid, "markdown"),
    ]


INTERVAL_NOTE = (
    f"Brackets: 95% interval of the mean over seeds, at video level: {BOOTSTRAP} resamples of the test videos"
    " (within each class; the same resamples for every seed; frame AUC takes each drawn video with its frames), the"
    " AUC of each seed on a resample averaged over seeds. `avg`: each cross-dataset set resampled independently, the"
    " sets averaged. Without score files: the runs' logged intervals averaged over seeds (none for `avg`); without"
    f" those, none. {CHANCE_MARK}: the interval reaches {CHANCE} or lies below it: not above chance."
)


def _table_sections(
    long: pd.DataFrame, scores: Mapping[str, ScoreFiles], experiment: str, out_dir: Path
) -> tuple[list[str], list[str]]:
    """The cross-dataset tables of :data:`TABLES` for both checkpoints, where the runs logged the metric.

    Writes ``<metric>_<checkpoint>.csv`` and ``.tex`` and ``auc_heatmap.png``.

    Returns:
        The Markdown lines and the texts to print (the validation-selected checkpoint's tables).
    """
    markdown, printed = [], []
    for metric, title in TABLES.items():
        for checkpoint, name in CHECKPOINT_NAMES.items():
            if not ((long["metric"] == metric) & (long["checkpoint"] == checkpoint)).any():
                continue
            intervals = (
                interval_table(long, metric, checkpoint, scores[checkpoint]) if metric in INTERVAL_METRICS else None
            )
            table = cross_dataset_table(long, metric, checkpoint, intervals)
            stem = out_dir / f"{metric}_{checkpoint}"
            table.set_axis([f"{c}:{s}" for c, s in table.columns], axis=1).to_csv(stem.with_suffix(".csv"))
            stem.with_suffix(".tex").write_text(format_table(table, "latex") + "\n")
            note = _seeds_note(table.xs("n", axis=1, level=1).max(axis=1))
            legend = ["", INTERVAL_NOTE] if intervals is not None else []
            markdown += ["", f"## {title}, {name}{note}", "", format_table(table, "markdown"), *legend]
            if checkpoint == SELECTED:
                printed.append("\n".join([f"{title} ({name}){note}", format_table(table, "text"), *legend[1:]]))
            if (metric, checkpoint) == ("auc", SELECTED):
                heatmap(table, out_dir / "auc_heatmap.png", f"{experiment}: AUC, {name}")
                markdown += ["", "![AUC, validation-selected checkpoint](auc_heatmap.png)"]
    return markdown, printed


def _tuning_section(tuning: pd.DataFrame, out_dir: Path) -> tuple[list[str], str]:
    """The tuning table (``tuning.csv``) and its section, and a line per label to print; nothing without tuning."""
    if tuning.empty:
        return [], ""
    tuning.to_csv(out_dir / "tuning.csv", index=False)
    grid = [["method", "trained on", "tune", "val AUC", "seeds", "kept"]]
    lines = ["Tuning (chosen on validation only)"]
    for _, row in tuning.iterrows():
        tried = tuning[(tuning["label"] == row["label"]) & (tuning["train_set"] == row["train_set"])]
        value = row["tune"] or "(none)"
        kept = "yes" if row["kept"] else ""
        grid.append([row["label"], row["train_set"], value, _cell(row, False), str(row["n"]), kept])
        if row["kept"]:
            lines.append(f"{row['label']}: {value} kept of {len(tried)} tried (val AUC {_cell(row, False)})")
    markdown = [
        "",
        "## Tuning (chosen on validation only)",
        "",
        "Per method and training set, the tune value with the best mean validation AUC over seeds"
        f" (`{_value_name(VALIDATION)}` of the validation-selected checkpoint) is kept; ties go to the"
        " first value in sorted order. Every table and figure below shows the kept runs only; no test set took part"
        " in the choice.",
        "",
        render(grid, "markdown"),
    ]
    return markdown, "\n".join(lines)


def write_report(
    experiment: str,
    tracking_uri: str,
    out_dir: Path,
    *,
    published_dir: Path = PUBLISHED_DIR,
    published_as: Mapping[str, str] = PUBLISHED_AS,
) -> str:
    """Write the report of an experiment into ``out_dir``: ``report.md`` with its tables and figures.

    Where runs tried several tune values (tag ``tune``), only each label's value with the best mean validation AUC
    is kept for everything below (:func:`choose_tuned`, ``tuning.csv``). Always: frame AUC, video AUC (where logged)
    and EER tables of both checkpoints (``<metric>_<checkpoint>.csv``, ``.tex``) and ``auc_heatmap.png``; AUC cells
    carry 95% video-level intervals (:func:`interval_table`), marked where they reach chance. Where the experiment
    has what they need: the sizes of the test sets (``test_sets.csv``), the ablation table of ``masm`` with the
    detectable difference and run activity (``ablation.csv``, ``.tex``), our runs beside the published tables of
    ``published_dir`` (``paper_<name>.csv``, ``.tex``) and the figures of :mod:`bench.figures`. Run artifacts are
    downloaded only for these, into a temporary folder.

    Args:
        experiment: the MLflow experiment.
        tracking_uri: its tracking URI.
        out_dir: the folder written.
        published_dir: where ``<name>.csv`` of :data:`PUBLISHED_TABLES` are.
        published_as: our label -> the same method's name in published tables (adds a difference row).

    Returns:
        The text to print: the tables of the validation-selected checkpoint, and the tune values kept.

    Raises:
        InputError: the experiment does not exist or has no finished runs, or a tune value has no validation AUC.
    """
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        runs = with_results(_search_runs(experiment, tracking_uri), Artifacts(tracking_uri, Path(scratch)))
    runs, tuning = choose_tuned(runs)
    long = collect(runs)
    if long.empty:
        raise InputError(f"MLflow experiment '{experiment}' at {tracking_uri} has no finished runs with test metrics")
    out_dir.mkdir(parents=True, exist_ok=True)
    train_sets = ", ".join(f"`{s}`" for s in sorted(long["train_set"].unique()))
    markdown = [
        f"# Cross-dataset report: {experiment}",
        "",
        f"Trained on {train_sets}. Checkpoint selection used validation data only (a split of the training data);"
        " no number here was selected on a test set.",
        "Cells: mean ± sample standard deviation over seeds (the std is omitted for one seed). `avg` is the mean"
        " over the cross-dataset test sets only, computed per seed, then over seeds.",
    ]
    index = run_index(runs)
    tuning_lines, tuning_text = _tuning_section(tuning, out_dir)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        artifacts = Artifacts(tracking_uri, Path(scratch))
        scores = {
            checkpoint: _score_frames(long, run_ids(index), artifacts, checkpoint) for checkpoint in CHECKPOINT_NAMES
        }
        tables, printed = _table_sections(long, scores, experiment, out_dir)
        markdown += tuning_lines
        markdown += _test_set_section(long, scores[SELECTED] or scores[LAST], out_dir)
        markdown += tables
        markdown += _robustness_section(runs, out_dir)
        markdown += _ablation_section(long, index, scores[SELECTED], out_dir)
        markdown += _paper_sections(long, out_dir, published_dir, published_as)
        markdown += _figure_section(long, index, scores[SELECTED], artifacts, out_dir)
    (out_dir / "report.md").write_text("\n".join([*markdown, ""]))
    return "\n\n".join([*printed, *([tuning_text] if tuning_text else [])])
