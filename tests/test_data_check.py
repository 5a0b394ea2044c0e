"""`bench data check`: counts, planted missing / zero-byte / corrupt frames, leakage, and the exit code."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from bench.data.cards import load_card
from bench.data.check import check_card
from bench.data.commands import add_data_commands
from bench.data.prepare import write_index
from tests.conftest import write_folder_card

LABELS = {"real": 0, "alpha": 1, "beta": 1}


def run_data(argv: list[str]) -> int:
    """Parse ``bench data ...`` arguments with :func:`add_data_commands` and run the handler."""
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def index_card(tmp_path: Path, splits: dict[str, str] | None = None) -> str:
    """A folder data set (2 / 1 / 1 videos per group) described by an index in DeepfakeBench's format."""
    data = tmp_path / "data"
    write_folder_card(data, {"train": 2, "val": 1, "test": 1}, frames=3)
    card = {
        "name": "indexed",
        "format": "deepfakebench",
        "root": str(data),
        "index": str(write_index(data)),
        "labels": LABELS,
        "splits": splits or {"train": "train", "val": "val", "test": "test"},
    }
    path = tmp_path / "indexed.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return str(path)


def test_clean_card_passes_with_counts(tmp_path: Path, capsys) -> None:
    path = index_card(tmp_path)
    result = check_card(load_card(path), tmp_path, frames_per_video=8)
    train = result.splits[0]
    assert result.problems == [] and train.frames == 18 and len(train.videos) == 6
    assert dict(train.counts) == {(0, "real"): 6, (1, "alpha"): 6, (1, "beta"): 6}
    assert train.fake_share() == pytest.approx(2 / 3)
    assert run_data(["check", path, "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 18 frames, 6 videos, 67% fake" in out and "no problems found" in out


def test_planted_zero_byte_missing_and_corrupt_frames(tmp_path: Path, capsys) -> None:
    path = index_card(tmp_path)
    split = tmp_path / "data" / "test"
    zero, corrupt = split / "real/test-real-0/01.png", split / "fake/alpha/test-alpha-0/02.png"
    missing = split / "fake/beta/test-beta-0/00.png"
    zero.write_bytes(b"")
    corrupt.write_bytes(b"not a png at all")
    missing.unlink()
    result = check_card(load_card(path), tmp_path, frames_per_video=8)
    bad = result.splits[2].bad
    assert bad["zero-byte"] == [str(zero)] and bad["missing"] == [str(missing)]
    assert len(bad["unreadable"]) == 1 and bad["unreadable"][0].startswith(f"{corrupt} (UnidentifiedImageError")
    assert sorted(result.problems) == [
        "split test: 1 missing frames",
        "split test: 1 unreadable frames",
        "split test: 1 zero-byte frames",
    ]
    assert run_data(["check", path, "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"missing frames: 1, e.g. {missing}" in out and f"zero-byte frames: 1, e.g. {zero}" in out


def test_leakage_one_class_and_missing_forgeries_are_problems(tmp_path: Path) -> None:
    path = index_card(tmp_path, {"train": "train", "val": "val", "test": "val"})
    card = load_card(path)
    card.labels = {"real": 0, "alpha": 1}
    card.forgeries = ["alpha", "gamma"]
    problems = check_card(card, tmp_path, frames_per_video=8).problems
    assert "splits val and test share 2 videos, e.g. alpha/val-alpha-0, real/val-real-0" in problems
    assert "split train: no frames of forgeries gamma (balanced sampling needs them)" in problems
    card.labels = {"real": 0}
    problems = check_card(card, tmp_path, frames_per_video=8).problems
    assert "split test: only one class, so AUC is undefined" in problems


def test_unknown_forgery_in_a_folder_card(tmp_path: Path) -> None:
    card = load_card(str(write_folder_card(tmp_path / "f", {"train": 1, "val": 1}, frames=2)))
    card.forgeries = ["alpha"]
    problems = check_card(card, tmp_path, frames_per_video=8).problems
    assert problems == ["split train: forgeries beta are not among the card's forgeries"]
