"""The cross-dataset table: MLflow runs -> long results -> mean ± std over seeds per method and test set.

Each run carries ``<metric>/<set>`` for the validation-selected checkpoint and ``last/<metric>/<set>`` for the last
one; the set equal to ``params.data.train`` is in-domain, the others are cross-dataset. No test-selected checkpoint
exists here, so none can be reported.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

METRICS = ("auc", "eer", "ap", "acc", "video_auc", "video_eer")
LONG_COLUMNS = ["label", "seed", "train_set", "checkpoint", "test_set", "metric", "value"]
RUN_COLUMNS = {"tags.label": "label", "params.train.seed": "seed", "params.data.train": "train_set"}
CHECKPOINT_NAMES = {"selected": "validation-selected checkpoint", "last": "last checkpoint"}
FORMATS = ("text", "markdown", "latex")
STATS = ("mean", "std", "n")


def _parse_metric(column: str) -> tuple[str, str, str] | None:
    """``(checkpoint, metric, test_set)`` of a ``metrics.[last/]<metric>/<set>`` column, or None for other metrics."""
    name = column.removeprefix("metrics.")
    checkpoint = "last" if name.startswith("last/") else "selected"
    metric, _, test_set = name.removeprefix("last/").partition("/")
    return (checkpoint, metric, test_set) if metric in METRICS and test_set else None


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose MLflow status and ``status`` tag (where present) are both FINISHED; newest first, one per cell.

    A rerun of a cell (same label, seed and training set) replaces the older run.
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
        raise ValueError(f"runs lack the column(s) {missing}: is this an experiment written by the harness?")
    return runs if runs.empty else runs.drop_duplicates(list(RUN_COLUMNS))


def collect(runs: pd.DataFrame) -> pd.DataFrame:
    """Long results of the FINISHED runs of an ``mlflow.search_runs`` frame.

    Returns:
        One row per value with columns ``label, seed, train_set, checkpoint ("selected"/"last"), test_set, metric,
        value``.
    """
    runs = _finished(runs)
    parsed = {c: p for c in runs.columns if c.startswith("metrics.") and (p := _parse_metric(c))}
    if runs.empty or not parsed:
        return pd.DataFrame(columns=LONG_COLUMNS)
    spec = pd.DataFrame([(c, *p) for c, p in parsed.items()], columns=["column", "checkpoint", "metric", "test_set"])
    long = runs.rename(columns=RUN_COLUMNS).melt(
        id_vars=list(RUN_COLUMNS.values()), value_vars=list(parsed), var_name="column", value_name="value"
    )
    long = long.dropna(subset=["value"]).merge(spec, on="column")
    return long.astype({"seed": int, "value": float})[LONG_COLUMNS].reset_index(drop=True)


def cross_dataset_table(long: pd.DataFrame, metric: str = "auc", checkpoint: str = "selected") -> pd.DataFrame:
    """Mean, sample std and number of seeds per label (rows) and test set (columns).

    Columns are the in-domain set first (named ``"<set> (in-domain)"``), the cross-dataset sets, then ``avg``: the
    mean over cross-dataset sets only, computed per seed (seeds missing a set are left out) and then summarised
    over seeds like the other columns.

    Returns:
        A frame indexed by label with two-level columns ``(column, "mean" | "std" | "n")``.
    """
    rows = long[(long["metric"] == metric) & (long["checkpoint"] == checkpoint)]
    if rows.empty:
        raise ValueError(f"no '{metric}' values for the '{checkpoint}' checkpoint in the runs")
    train_sets = sorted(rows["train_set"].unique())
    if len(train_sets) > 1:
        raise ValueError(f"runs trained on different sets {train_sets}: make one table per training set")
    per_seed = rows.pivot(index=["label", "seed"], columns="test_set", values="value")
    cross = sorted(set(per_seed.columns) - set(train_sets))
    per_seed["avg"] = per_seed[cross].mean(axis=1, skipna=False)
    per_seed = per_seed.rename(columns={train_sets[0]: f"{train_sets[0]} (in-domain)"})
    order = [c for c in per_seed.columns if c.endswith("(in-domain)")] + cross + ["avg"]
    by_label = per_seed.groupby(level="label")
    stats = pd.concat({"mean": by_label.mean(), "std": by_label.std(ddof=1), "n": by_label.count()}, axis=1)
    return stats.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([order, STATS]))


def _cell(stats: pd.Series, latex: bool) -> str:
    """``0.812 ± 0.013`` (``$0.812 \\pm 0.013$`` in LaTeX) from ``mean``, ``std``, ``n``; std left out for one seed."""
    mean, std, n = (float(stats[s]) for s in STATS)
    if n == 0 or math.isnan(mean):
        return "--" if latex else "–"
    plus_minus = r"\pm" if latex else "±"
    text = f"{mean:.3f}" if n == 1 else f"{mean:.3f} {plus_minus} {std:.3f}"
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


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """A :func:`cross_dataset_table` as aligned ``text``, a ``markdown`` pipe table or a ``latex`` booktabs tabular."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}': choose one of {list(FORMATS)}")
    if fmt == "latex":
        header, *rows = _grid(table, latex=True)
        lines = [" & ".join(row) + r" \\" for row in rows]
        spec = "l" + "r" * (len(header) - 1)
        head = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
        return "\n".join([*head, *lines, r"\bottomrule", r"\end{tabular}"])
    grid = _grid(table, latex=False)
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


def _search_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    """``mlflow.search_runs`` of one experiment at ``tracking_uri``; the global tracking URI is left as it was."""
    import mlflow

    if mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment named '{experiment}' at {tracking_uri}")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(previous)


def write_report(experiment: str, tracking_uri: str, out_dir: Path) -> str:
    """Write AUC and EER tables of both checkpoints as ``report.md``, ``.csv``, ``.tex`` and ``auc_heatmap.png``.

    Returns:
        The text to print: the AUC and EER tables of the validation-selected checkpoint.

    Raises:
        ValueError: the experiment does not exist or has no finished runs.
    """
    long = collect(_search_runs(experiment, tracking_uri))
    if long.empty:
        raise ValueError(f"MLflow experiment '{experiment}' at {tracking_uri} has no finished runs with test metrics")
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
    printed = []
    for metric in ("auc", "eer"):
        for checkpoint, name in CHECKPOINT_NAMES.items():
            table = cross_dataset_table(long, metric, checkpoint)
            stem = out_dir / f"{metric}_{checkpoint}"
            flat = table.set_axis([f"{c}:{s}" for c, s in table.columns], axis=1)
            flat.to_csv(stem.with_suffix(".csv"))
            stem.with_suffix(".tex").write_text(format_table(table, "latex") + "\n")
            markdown += ["", f"## {metric.upper()}, {name}", "", format_table(table, "markdown")]
            if checkpoint == "selected":
                printed.append(f"{metric.upper()} ({name})\n{format_table(table, 'text')}")
            if (metric, checkpoint) == ("auc", "selected"):
                heatmap(table, out_dir / "auc_heatmap.png", f"{experiment}: AUC, {name}")
    markdown += ["", "![AUC, validation-selected checkpoint](auc_heatmap.png)", ""]
    (out_dir / "report.md").write_text("\n".join(markdown))
    return "\n\n".join(printed)
