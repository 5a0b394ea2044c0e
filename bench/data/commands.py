"""The ``bench data`` subcommands ``check``, ``prepare`` and ``bench``; each handler returns an exit code."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.config import DataConfig

EXIT_OK, EXIT_FAILED = 0, 1


def cmd_check(args: argparse.Namespace) -> int:
    from bench.data.cards import open_card
    from bench.data.check import check_card

    result = check_card(open_card(args.card, args.deepfakebench), args.root, args.frames_per_video, args.workers)
    print(result.render())
    return EXIT_FAILED if result.problems else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from bench.data.catalog import examples
    from bench.data.prepare import prepare

    start = time.perf_counter()
    report = prepare(
        Path(args.source),
        Path(args.out),
        frames=args.frames,
        size=args.size,
        scale=args.scale,
        detector=args.detector,
        workers=args.workers,
        split=args.split,
    )
    seconds = time.perf_counter() - start
    per_video = f" ({seconds / len(report.done):.2f} s per video)" if report.done else ""
    print(f"prepared {len(report.done)} videos in {seconds:.1f} s{per_video}; {len(report.skipped)} done before")
    if report.no_face:
        print(f"no face found in {len(report.no_face)} videos (listed in no-face.txt): {examples(report.no_face, 10)}")
    for line in report.failed:
        print(f"failed: {line}")
    if report.index:
        print(f"index: {report.index}\ncard: {report.card}")
    return EXIT_FAILED if report.failed else EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.data.cards import open_card
    from bench.data.catalog import split_frames
    from bench.data.speed import loader_speed

    card = open_card(args.card, args.deepfakebench)
    split = args.split or ("train" if "train" in card.splits else next(iter(card.splits)))
    frames = split_frames(card, split, args.root, args.frames_per_video)
    print(f"{card.name} {split}: {len(frames)} frames at {args.size} px, batch {args.batch_size}")
    for workers in args.workers:
        speed = loader_speed(frames, args.size, args.batch_size, workers, args.pin, args.batches)
        print(
            f"workers {workers}: {speed.images_per_s:.0f} images/s ({speed.images} images in {speed.seconds:.2f} s, "
            f"worker start-up included; first batch after {speed.first_batch_s:.2f} s)"
        )
    return EXIT_OK


def add_checkout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deepfakebench",
        metavar="DIR",
        help="a DeepfakeBench checkout to read its cards from (default: $DEEPFAKEBENCH)",
    )


def add_data_commands(data_sub: argparse._SubParsersAction) -> None:
    """Add ``check``, ``prepare`` and ``bench`` to the ``bench data`` subparsers (each sets its ``handler``)."""
    defaults = DataConfig()
    check = data_sub.add_parser("check", help="counts per split, label and forgery; missing or unreadable frames")
    check.add_argument("card")
    check.add_argument("--root", default=defaults.root, help="data root")
    check.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video, help="frames a run takes")
    check.add_argument("--workers", type=int, default=4, help="threads decoding frames")
    add_checkout_option(check)
    check.set_defaults(handler=cmd_check)

    prep = data_sub.add_parser("prepare", help="raw videos to face crops in the folder layout plus an index")
    prep.add_argument("source", help="folder with real/ and fake/<forgery>/ (or split folders holding them)")
    prep.add_argument("out", help="output folder (rerunning skips finished videos)")
    prep.add_argument("--frames", type=int, default=32, help="evenly spaced frames per video")
    prep.add_argument("--size", type=int, default=256, help="crop side in pixels")
    prep.add_argument("--scale", type=float, default=1.3, help="crop side over the face box's longer side")
    prep.add_argument("--detector", choices=("auto", "mtcnn", "lbp"), default="auto", help="auto: mtcnn if installed")
    prep.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes")
    prep.add_argument("--split", default="test", help="split name when the source has no split folders")
    prep.set_defaults(handler=cmd_prepare)

    bench = data_sub.add_parser("bench", help="images per second of the data loader alone")
    bench.add_argument("card")
    bench.add_argument("--split", default=None, help="default: train if the card has it")
    bench.add_argument("--root", default=defaults.root, help="data root")
    bench.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video)
    bench.add_argument("--size", type=int, default=224, help="input size")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument(
        "--workers", type=int, nargs="+", default=[0, defaults.loader_workers()], help="one run per value"
    )
    add_checkout_option(bench)
    bench.add_argument("--batches", type=int, default=None, help="stop after this many batches")
    bench.add_argument("--pin", action="store_true", help="pinned memory (as on CUDA)")
    bench.set_defaults(handler=cmd_bench)
