"""The ``bench`` command: run grids and single configs, list methods, look at data, write reports."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.config import ConfigError

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="run a grid's cells (skipping finished ones) and print its table")
    grid.add_argument("grid_pos", nargs="?", metavar="GRID", help="grid file or name in grids/")
    grid.add_argument("--grid", dest="grid_opt", metavar="GRID", help="same as the positional GRID")
    grid.add_argument("--dry-run", action="store_true", help="list the cells and whether they are finished")
    grid.add_argument("--no-report", action="store_true", help="skip the report at the end")
    _add_sets(grid)

    run = sub.add_parser("run", help="run one configuration")
    run.add_argument("config", nargs="?", help="experiment YAML (sections of the run config)")
    run.add_argument("--experiment", default="default", help="MLflow experiment")
    _add_sets(run)

    report = sub.add_parser("report", help="write the cross-dataset tables of an experiment")
    report.add_argument("--experiment", required=True)
    report.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the sqlite store")
    report.add_argument("--out", default=None, help="folder (default results/<experiment>)")

    methods = sub.add_parser("methods", help="list registered methods")
    methods.add_argument("pattern", nargs="?", default="*")

    data = sub.add_parser("data", help="data set tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser("preview", help="write a PNG grid of real and fake samples per method")
    preview.add_argument("card")
    preview.add_argument("--split", default="test")
    preview.add_argument("--root", default="data", help="data root")
    preview.add_argument("--out", default=None, help="PNG path (default results/preview-<card>.png)")
    return parser


def cmd_grid(args: argparse.Namespace) -> int:
    from bench.grid import expand, experiment_name, load_grid
    from bench.runner import check_inputs, finished, run_cell
    from bench.tracking import tracking_uri

    name = args.grid_opt or args.grid_pos or "smoke"
    spec = load_grid(name)
    cells = expand(spec, args.sets, where=name)
    for cell in cells:
        check_inputs(cell.config)
    experiment = experiment_name(spec, cells[0].config)
    done = finished(cells, experiment)
    if args.dry_run:
        for cell in cells:
            print(f"{'finished' if cell.run_id in done else 'todo':9s} {cell.run_id}  {cell.name}")
        return 0
    failures = []
    for i, cell in enumerate(cells, 1):
        if cell.run_id in done:
            print(f"[{i}/{len(cells)}] {cell.name}: finished already, skipped")
            continue
        print(f"[{i}/{len(cells)}] {cell.name} (run {cell.run_id})", flush=True)
        outcome = run_cell(cell, experiment, grid=spec.name)
        if outcome.status != "FINISHED":
            failures.append(outcome)
            print(f"  {outcome.status}: {outcome.reason}", file=sys.stderr)
    if not args.no_report:
        _print_report(experiment, tracking_uri(cells[0].config), None)
    for outcome in failures:
        print(f"error: cell {outcome.cell} {outcome.status}: {outcome.reason}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.grid import Cell
    from bench.registry import resolve_config
    from bench.runner import check_inputs, run_cell
    from bench.tracking import tracking_uri

    cfg = resolve_config(load_config(args.config, args.sets))
    check_inputs(cfg)
    cell = Cell(f"{cfg.method.name} seed={cfg.train.seed}", cfg.method.name, cfg.train.seed, cfg)
    outcome = run_cell(cell, cfg.tracking.experiment or args.experiment)
    if outcome.status != "FINISHED":
        print(f"error: {outcome.status}: {outcome.reason}", file=sys.stderr)
        return EXIT_FAILED
    _print_report(cfg.tracking.experiment or args.experiment, tracking_uri(cfg), None)
    return 0


def _print_report(experiment: str, uri: str | None, out: str | None) -> None:
    from bench.report import write_report
    from bench.tracking import DEFAULT_URI

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    folder = Path(out) if out else Path("results") / experiment
    print(write_report(experiment, uri, folder))
    print(f"report written to {folder}/")


def cmd_report(args: argparse.Namespace) -> int:
    _print_report(args.experiment, args.tracking_uri, args.out)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from bench.registry import get_method, list_methods

    names = list_methods(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {get_method(name).summary}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from bench.data.cards import load_card
    from bench.data.catalog import split_frames
    from bench.data.preview import preview

    card = load_card(args.card)
    frames = split_frames(card, args.split, args.root, frames_per_video=1000)
    groups: dict[str, list[str]] = {}
    for frame in frames:
        groups.setdefault(frame.method, []).append(frame.path)
    out = Path(args.out or f"results/preview-{card.name}.png")
    print(preview(groups, out))
    return 0


COMMANDS = {"grid": cmd_grid, "run": cmd_run, "report": cmd_report, "methods": cmd_methods, "data": cmd_data}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input gives one ``error:`` line and exit code 2, failed runs exit code 1."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from bench.backbone import BackboneError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, BackboneError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
