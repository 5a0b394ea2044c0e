"""The ``bench`` command: run grids and single configs, list methods, look at data, write reports."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench.config import build_config
from bench.data.commands import add_checkout_option, add_data_commands
from bench.errors import ConfigError, InputError
from bench.perf import add_perf_command

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
DEBUG_ENV = "BENCH_DEBUG"


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help=f"bad input also prints its traceback (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="run a grid's cells (skipping finished ones), print its table and leaderboard")
    grid.add_argument("grid_pos", nargs="?", metavar="GRID", help="grid file or name in grids/")
    grid.add_argument("--grid", dest="grid_opt", metavar="GRID", help="same as the positional GRID")
    grid.add_argument("--dry-run", action="store_true", help="list the cells and whether they are finished")
    grid.add_argument("--no-report", action="store_true", help="skip the report at the end")
    grid.add_argument("--launcher", choices=("local", "debug", "slurm"), help="overrides launch.launcher")
    grid.add_argument("--seeds", type=int, nargs="+", help="run only these seeds (default: the grid's)")
    grid.add_argument(
        "--rerun-stale", action="store_true", help="train again the finished cells that another commit made"
    )
    _add_sets(grid)
    grid.set_defaults(handler=cmd_grid)

    status = sub.add_parser(
        "status", help="each cell's state: finished (or stale), failed, running, pending, interrupted, not started"
    )
    status.add_argument("grid", metavar="GRID")
    _add_sets(status)
    status.set_defaults(handler=cmd_status)

    run = sub.add_parser("run", help="run one configuration")
    run.add_argument("config", nargs="?", help="experiment YAML (sections of the run config)")
    run.add_argument("--experiment", default="default", help="MLflow experiment")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder with its own config.yaml")
    _add_sets(run)
    run.set_defaults(handler=cmd_run)

    sync = sub.add_parser("sync", help="send to MLflow what runs recorded while their tracking store was away")
    sync.add_argument("--runs-dir", default="runs", help="the folder of run folders (tracking.runs_dir)")
    sync.set_defaults(handler=cmd_sync)

    recipe = sub.add_parser("recipe", help="a paper's recipe beside a config or a grid, every difference marked")
    recipe.add_argument("name", metavar="NAME", help="a recipe in grids/recipes/")
    recipe.add_argument("--grid", help="compare each row of this grid (default: the recipe over the defaults)")
    _add_sets(recipe)
    recipe.set_defaults(handler=cmd_recipe)

    report = sub.add_parser("report", help="write the cross-dataset tables of an experiment")
    report.add_argument("--experiment", required=True)
    report.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the sqlite store")
    report.add_argument("--out", default=None, help="folder (default results/<experiment>)")
    report.set_defaults(handler=cmd_report)

    params = sub.add_parser("params", help="trainable and total parameter counts per method (no weights needed)")
    params.add_argument("--backbone", default="lite0", help="timm model name (or lite0)")
    params.add_argument("--method", action="append", default=[], help="method (repeatable; default: all)")
    params.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    params.set_defaults(handler=cmd_params)

    add_perf_command(sub)

    methods = sub.add_parser("methods", help="list registered methods")
    methods.add_argument("pattern", nargs="?", default="*")
    methods.set_defaults(handler=cmd_methods)

    data = sub.add_parser("data", help="data set tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    add_data_commands(data_sub)
    preview = data_sub.add_parser("preview", help="write a PNG grid of real and fake samples per forgery method")
    preview.add_argument("card")
    preview.add_argument("--split", default="test")
    preview.add_argument("--root", default="data", help="data root")
    preview.add_argument("--out", default=None, help="PNG path (default results/preview-<card>.png)")
    preview.add_argument(
        "--augment", metavar="PRESET", help="show the frames as training augments them (none, flip, deepfakebench, ...)"
    )
    preview.add_argument("--synthesis", choices=("none", "sbi"), default="none", help="show fakes made from reals")
    add_checkout_option(preview)
    preview.set_defaults(handler=cmd_preview)
    return parser


def cmd_grid(args: argparse.Namespace) -> int:
    from bench.grid import expand, experiment_name, load_grid
    from bench.leaderboard import prepare
    from bench.runner import check_inputs, finished, restart, stale, sync_cells
    from bench.tracking import check_reachable, runs_by_hash, tracking_uri

    name = args.grid_opt or args.grid_pos or "smoke"
    spec = load_grid(name)
    if args.seeds:
        spec.seeds = args.seeds
    sets = [*args.sets, *([f"launch.launcher={args.launcher}"] if args.launcher else [])]
    cells = expand(spec, sets, where=name)
    for cell in cells:
        check_inputs(cell.config)
    check_reachable(tracking_uri(cells[0].config))
    if synced := sync_cells(cells):
        print(f"{synced} run folders sent to the store what they recorded while it was away")
    experiment = experiment_name(spec, cells[0].config)
    runs = runs_by_hash(tracking_uri(cells[0].config), experiment)
    done = finished(cells, experiment, runs)
    old = stale(cells, runs)
    if args.dry_run:
        for cell in cells:
            state = ("stale" if cell.run_id in old else "finished") if cell.run_id in done else "todo"
            print(f"{state:9s} {cell.run_id}  {cell.name}")
        return 0
    if old and args.rerun_stale:
        for cell in (c for c in cells if c.run_id in old):
            restart(cell)
        done -= set(old)
    elif old:
        print(
            f"{len(old)} finished cells were made by other code (another commit or uncommitted changes); "
            "--rerun-stale trains them again"
        )
    for cell in cells:
        if cell.run_id in done:
            print(f"{cell.name}: finished already, skipped")
    todo = [c for c in cells if c.run_id not in done]
    launch = cells[0].config.launch
    board = f"leaderboard: {prepare(tracking_uri(cells[0].config), experiment, spec.description, cells)}"
    if launch.launcher == "slurm":
        submitted = _submit(todo, experiment, spec.name, cells[0].config, wait=False)
        print(board)
        return submitted
    failures = _submit(todo, experiment, spec.name, cells[0].config, wait=True) if launch.launcher == "debug" else 0
    if launch.launcher == "local":
        failures = _run_here(todo, experiment, spec.name)
    if not args.no_report:
        _print_report(experiment, tracking_uri(cells[0].config), None)
    print(board)
    return EXIT_FAILED if failures else 0


def _run_here(cells: list, experiment: str, grid: str) -> int:
    """Run claimed cells one after another in this process; returns the number that did not finish."""
    from bench.launch import claim_cells, run_claimed

    failures = 0
    claimed = {c.run_id for c, _ in claim_cells(cells, "local")}
    for i, cell in enumerate(cells, 1):
        if cell.run_id not in claimed:
            print(f"[{i}/{len(cells)}] {cell.name}: held by another launch, skipped")
            continue
        print(f"[{i}/{len(cells)}] {cell.name} (run {cell.run_id})", flush=True)
        outcome = run_claimed(cell, experiment, grid)
        if outcome.status != "FINISHED":
            failures += 1
            print(f"error: cell {cell.name} {outcome.status}: {outcome.reason}", file=sys.stderr)
    return failures


def _submit(cells: list, experiment: str, grid: str, cfg, wait: bool) -> int:
    """Submit claimed cells as one Submitit job array; print the job ids (and wait for them when ``wait``)."""
    from bench.launch import submit

    folder = Path(cfg.tracking.runs_dir) / "submitit"
    submitted = submit(cells, experiment, grid, cfg.launch, folder)
    held = len(cells) - len(submitted)
    for item in submitted:
        print(f"submitted {item.cell.name}: job {item.job.job_id}")
    print(f"{len(submitted)} cells submitted" + (f", {held} held by another launch" if held else ""))
    if not wait:
        return 0
    failures = 0
    for item in submitted:
        outcome = item.job.result()
        if outcome.status != "FINISHED":
            failures += 1
            print(f"error: cell {item.cell.name} {outcome.status}: {outcome.reason}", file=sys.stderr)
    return failures


def cmd_status(args: argparse.Namespace) -> int:
    from bench.grid import expand, experiment_name, load_grid
    from bench.launch import cell_state
    from bench.runner import stale
    from bench.tracking import runs_by_hash, tracking_uri

    spec = load_grid(args.grid)
    cells = expand(spec, args.sets, where=args.grid)
    experiment = experiment_name(spec, cells[0].config)
    runs = runs_by_hash(tracking_uri(cells[0].config), experiment)
    old = stale(cells, runs)
    width = max(len(c.name) for c in cells)
    counts: dict[str, int] = {}
    for cell in cells:
        state, detail = cell_state(cell, runs.get(cell.run_id))
        if cell.run_id in old:
            detail = f"stale: {old[cell.run_id]} (bench grid --rerun-stale trains it again)"
        counts[state] = counts.get(state, 0) + 1
        print(f"{cell.name:<{width}}  {state:<11}  {detail}".rstrip())
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + (f" ({len(old)} stale)" if old else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.grid import Cell, resolve_config
    from bench.runner import check_inputs, run_cell
    from bench.tracking import check_reachable, tracking_uri

    if args.resume and args.config:
        raise ConfigError("give either a config file or --resume RUN_DIR, not both")
    source = Path(args.resume) / "config.yaml" if args.resume else args.config
    cfg = resolve_config(load_config(source, args.sets))
    check_inputs(cfg)
    check_reachable(tracking_uri(cfg))
    cell = Cell(f"{cfg.method.name} seed={cfg.train.seed}", cfg.method.name, cfg.train.seed, cfg)
    outcome = run_cell(cell, cfg.tracking.experiment or args.experiment)
    if outcome.status != "FINISHED":
        print(f"error: {outcome.status}: {outcome.reason}", file=sys.stderr)
        return EXIT_FAILED
    _print_report(cfg.tracking.experiment or args.experiment, tracking_uri(cfg), None)
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from bench.config import RunConfig, merge, parse_set
    from bench.grid import expand, load_grid
    from bench.recipes import differences, load_recipe, table

    recipe = load_recipe(args.name)
    print(f"{recipe.name}: {recipe.origin()}\n{recipe.summary}")
    if args.grid:
        rows: dict[str, RunConfig] = {}
        for cell in expand(load_grid(args.grid), args.sets, where=args.grid):
            rows.setdefault(cell.label, cell.config)
        for label, cfg in rows.items():
            found = differences(recipe, cfg)
            print(f"\n{label}: " + (f"{len(found)} different" if found else "as the recipe"))
            for f, ours in found:
                print(f"  != {f.key}: {ours} here, {f.value} in the recipe ({f.source})")
        return 0
    data = recipe.overrides()
    for assignment in args.sets:
        data = merge(data, parse_set(assignment))
    cfg = build_config(data, f"recipe {recipe.name}")
    print("\n" + table(recipe, cfg))
    for item in recipe.deliberate:
        print(f"\ndeliberately different: {item['what']}\n  source: {item['source']}\n  here:   {item['ours']}")
    found = differences(recipe, cfg)
    print(f"\n{len(found)} different" if found else "\nno differences")
    return EXIT_FAILED if found else 0


def cmd_sync(args: argparse.Namespace) -> int:
    from bench.journal import unsynced
    from bench.tracking import check_reachable, one_line, sync

    journals = unsynced(args.runs_dir)
    if not journals:
        print(f"nothing to sync: every run folder in {args.runs_dir}/ is in its store")
        return 0
    failures = 0
    for journal in journals:
        head = journal.head()
        try:
            check_reachable(head.uri)
            sent = sync(journal)
        except ConfigError as err:
            print(f"error: {journal.folder}: {err}", file=sys.stderr)
        except Exception as err:  # one line per folder; the others are still tried
            print(f"error: {journal.folder}: {one_line(err)}", file=sys.stderr)
        else:
            print(f"{journal.folder}: {sent} records sent to experiment {head.experiment} of {head.uri}")
            continue
        failures += 1
    return EXIT_FAILED if failures else 0


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
        method = get_method(name)
        print(f"{name:<{width}}  {method.summary}" + (f" ({method.limits})" if method.limits else ""))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import torch

    from bench.backbone import classifier, create_backbone
    from bench.config import ModelConfig
    from bench.registry import get_method, list_methods

    cfg = ModelConfig(name=args.backbone, pretrained=False, img_size=args.img_size)
    rows = []
    for name in args.method or list_methods():
        with torch.device("meta"):  # shapes only: no memory, no weights, no compute
            model = get_method(name).apply(create_backbone(cfg))
            model.prepare(lambda n: iter(()), None)  # no data: a choice made from data takes its first candidates
        head = {id(p) for p in classifier(model.backbone).parameters()}
        trainable = [p for _, p in model.trainable_parameters()]
        backbone = sum(p.numel() for p in trainable if id(p) not in head)
        total = sum(p.numel() for p in model.parameters())
        rows.append((name, f"{backbone:,}", f"{sum(p.numel() for p in trainable):,}", f"{total:,}"))
    header = ("method", "trainable (backbone)", "trainable (with head)", "total")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"backbone: {args.backbone} (methods that choose layers from data show their first candidates)")
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from bench.data.augment import Augment, AugmentError
    from bench.data.cards import open_card
    from bench.data.catalog import split_frames
    from bench.data.preview import drawn, preview

    card = open_card(args.card, args.deepfakebench)
    frames = split_frames(card, args.split, args.root, frames_per_video=1000)
    groups: dict[str, list] = {}
    for frame in frames:
        groups.setdefault(frame.forgery, []).append(frame.path)
    drawn_as = [x for x in (args.synthesis if args.synthesis != "none" else "", args.augment or "") if x]
    out = Path(args.out or f"results/preview-{'-'.join([card.name, *drawn_as])}.png")
    if drawn_as:
        try:
            augment = Augment(args.augment or "none")
        except AugmentError as err:
            raise ConfigError(f"--augment: {err}") from None
        images, captions = drawn(groups, augment, args.synthesis)
        print(preview(images, out, captions=captions))
    else:
        print(preview(groups, out))
    return 0


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command; its argument is the signal's name."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input (an :class:`~bench.errors.InputError`) gives one ``error:`` line and exit code 2, after
    its traceback with ``--debug`` or ``BENCH_DEBUG=1``; failed runs exit code 1; any other exception is raised."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # each retry of a tracking call

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.handler(args)
    except InputError as err:
        if args.debug or os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if not type(err).__module__.startswith(("mlflow", "requests", "urllib3")):
            raise
        from bench.tracking import one_line

        print(
            f"error: the tracking store failed ({one_line(err)}); run folders keep what runs recorded meanwhile, "
            "and `bench sync` sends it once the store answers",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except Stopped as err:
        print(f"stopped by {err.args[0]}: run folders keep their last checkpoint; run again to resume", file=sys.stderr)
        return 128 + signal.Signals[err.args[0]].value
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


if __name__ == "__main__":
    sys.exit(main())
