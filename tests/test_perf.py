"""``bench perf``: every column from real worker processes, the interleaved order, and dense vs low-rank rows."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import perf
from bench.errors import ConfigError
from bench.step import backward, read_losses


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    perf.add_perf_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["perf", *argv])
    return args.handler(args)


@pytest.mark.slow
def test_perf_runs_workers_and_writes_every_column(tmp_path: Path, tiny_cards, capsys) -> None:
    """Every default row, 2 steps each, in real worker processes."""
    argv = ["--backbone", "test_vit", "--img-size", "32", "--device", "cpu", "--steps", "2"]
    argv += ["--warmup", "1", "--repeats", "1", "--card", tiny_cards[0], "--loader-batches", "2"]
    argv += ["--peak-tflops", "1", "--out", str(tmp_path), "--json"]
    assert _run(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == list(perf.default_methods())
    for row in rows:
        assert set(perf.COLUMNS) <= row.keys()
        numbers = [row[c] for c in perf.COLUMNS if c not in ("method", "mem_over_base_vs_fullft", "step_spread")]
        assert all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in numbers), row
        assert row["step_spread"] == 0  # one process per row
        assert row["mem_over_base_vs_fullft"] is None or row["mem_over_base_vs_fullft"] >= 0  # RSS is page-coarse
    assert rows[0]["step_vs_fullft"] == 1.0 and rows[1]["trainable_params"] < rows[0]["trainable_params"]
    with (tmp_path / "test_vit-cpu.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == list(perf.default_methods()) and set(perf.COLUMNS) <= table[0].keys()
    assert (tmp_path / "test_vit-cpu.png").stat().st_size > 0


@pytest.mark.slow
def test_profile_writes_a_table_per_row_and_its_counts(tmp_path: Path, tiny_cards, capsys) -> None:
    argv = ["--backbone", "test_vit", "--img-size", "32", "--device", "cpu", "--steps", "1", "--warmup", "1"]
    argv += ["--repeats", "1", "--card", tiny_cards[0], "--loader-batches", "1", "--methods", "masm:routing=none"]
    argv += ["--out", str(tmp_path), "--profile"]
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in perf.PROFILE_COLUMNS)
    with (tmp_path / "test_vit-cpu.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["full-ft", "masm:routing=none"]
    for row in rows:
        assert float(row["prof_step_s"]) > 0 and float(row["prof_ops"]) > 100
        assert row["prof_kernels"] == row["prof_syncs"] == row["prof_device_busy"] == ""  # CUDA only
    for name in ("full-ft", "masm_routing-none"):
        text = (tmp_path / "profiles" / f"{name}.txt").read_text()
        assert text.startswith(f"{name.replace('_', ':').replace('-none', '=none')}: 3 training steps, per step:")
        assert "aten::" in text


def _fake_result(row: str | None, slower: float = 1.0) -> dict[str, Any]:
    if row is None:
        return {"loader_img_s": 100.0}
    scale = (1.0 if row == "full-ft" else 0.5) * slower
    return {
        "method": row,
        "trainable_params": int(1000 * scale),
        "total_params": 1000,
        "step_times": [0.2 * scale, 0.1 * scale, 0.3 * scale],
        "eval_img_s": 90.0,
        "plain_eval_img_s": 100.0,
        "peak_mem_mb": 300.0 * scale + 100,
        "base_mem_mb": 100.0,
        "setup_cold_s": 1.0,
        "setup_cached_s": 0.1,
        "first_step_s": 0.5,
        "step_flop": 4e11,
    }


def test_rows_are_interleaved_with_full_ft_as_reference(monkeypatch) -> None:
    order: list[str | None] = []

    def spawn(s: perf.Settings, row: str | None) -> dict[str, Any]:
        order.append(row)
        return _fake_result(row, slower=1.1 if row == "lora" and order.count(row) == 2 else 1.0)

    monkeypatch.setattr(perf, "_spawn", spawn)
    lines: list[str] = []
    rows, failures = perf.measure(
        perf.Settings(methods=("lora", "masm:routing=none:dense=true"), repeats=2), progress=lines.append
    )
    assert not failures
    assert lines[:2] == ["[1/8] full-ft", "    step 0.2 s, peak 400 MiB, eval 90 images/s"]
    assert lines[7] == "    100 images/s"  # the loader's
    assert order == ["full-ft", "lora", "masm:routing=none:dense=true", None] * 2
    lora, dense = rows[1], rows[2]
    assert dense["step_s"] == pytest.approx(0.1) and dense["step_vs_fullft"] == pytest.approx(0.5)
    assert dense["step_spread"] == 0 and dense["step_range_s"] == (pytest.approx(0.1), pytest.approx(0.1))
    assert lora["step_s"] == pytest.approx(0.105) and lora["step_vs_fullft"] == pytest.approx(0.525)
    assert lora["step_range_s"] == (pytest.approx(0.1), pytest.approx(0.11))
    assert lora["step_spread"] == pytest.approx(0.01 / 0.105)
    assert dense["mem_vs_fullft"] == pytest.approx(250 / 400) and dense["mem_over_base_vs_fullft"] == pytest.approx(0.5)
    assert dense["eval_vs_plain"] == pytest.approx(0.9) and dense["mfu"] is None
    assert dense["loader_vs_train"] == pytest.approx(100 / (8 / 0.1))
    assert "dense" in perf.format_table(rows, "title")


@pytest.mark.parametrize("failing", ["lora", "full-ft", None])
def test_a_failed_worker_costs_its_row_only(failing: str | None, monkeypatch) -> None:
    order: list[str | None] = []

    def spawn(s: perf.Settings, row: str | None) -> dict[str, Any]:
        order.append(row)
        if row == failing:
            raise perf.PerfError(f"worker for {row} failed")
        return _fake_result(row)

    monkeypatch.setattr(perf, "_spawn", spawn)
    rows, failures = perf.measure(perf.Settings(methods=("lora", "masm"), repeats=3))
    name = failing or "loader"
    assert list(failures) == [name] and order.count(failing) == 1  # not retried in later rounds
    assert [r["method"] for r in rows] == [m for m in ("full-ft", "lora", "masm") if m != failing]
    masm = rows[-1]
    assert masm["repeats"] == 3
    assert (masm["step_vs_fullft"] is None) == (failing == "full-ft")  # no reference, no ratios
    assert (masm["loader_img_s"] is None) == (failing is None)
    assert "masm" in perf.format_table(rows, "title")


def test_perf_command_keeps_the_rows_that_ran(tmp_path: Path, monkeypatch, capsys) -> None:
    def spawn(s: perf.Settings, row: str | None) -> dict[str, Any]:
        if row == "full-ft":
            raise perf.PerfError("perf worker for full-ft failed (exit 1):\nCUDA out of memory")
        return _fake_result(row)

    monkeypatch.setattr(perf, "_spawn", spawn)
    assert _run(["--device", "cpu", "--methods", "masm", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "error: full-ft not measured: perf worker for full-ft failed" in out.err and "CUDA out of memory" in out.err
    with (tmp_path / "vit_small_patch16_224-cpu.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["method"], r["step_vs_fullft"]) for r in table] == [("masm", "")]
    assert (tmp_path / "vit_small_patch16_224-cpu.png").stat().st_size > 0


def test_compiled_runs_are_written_apart(tmp_path: Path, monkeypatch) -> None:
    modes: list[str] = []
    monkeypatch.setattr(perf, "_spawn", lambda s, row: modes.append(s.compile) or _fake_result(row))
    assert _run(["--device", "cpu", "--methods", "masm", "--compile", "blocks", "--out", str(tmp_path)]) == 0
    assert set(modes) == {"blocks"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vit_small_patch16_224-cpu-compile-blocks.csv",
        "vit_small_patch16_224-cpu-compile-blocks.png",
    ]


def test_loader_batch_too_small_fails_before_any_process(monkeypatch) -> None:
    monkeypatch.setattr(perf, "_spawn", lambda s, row: pytest.fail("no worker may start"))
    with pytest.raises(ConfigError, match="--batch-size 2: .*4 forgery methods of card 'offline-ff'"):
        perf.measure(perf.Settings(batch_size=2))


def test_cpu_defaults_and_flag_checks() -> None:
    parser = argparse.ArgumentParser()
    perf.add_perf_command(parser.add_subparsers(dest="command", required=True))
    settings = perf.settings_from_args(parser.parse_args(["perf", "--device", "cpu"]))
    assert (settings.repeats, settings.batch_size, settings.methods) == (2, 8, perf.default_methods())
    assert settings.compile == "off"
    for argv, mode in ((["--compile"], "model"), (["--compile", "blocks"], "blocks")):
        assert perf.settings_from_args(parser.parse_args(["perf", "--device", "cpu", *argv])).compile == mode
    for flag in ("--repeats", "--steps", "--warmup", "--loader-batches"):
        with pytest.raises(ConfigError, match=f"{flag} must be at least 1"):
            perf.settings_from_args(parser.parse_args(["perf", "--device", "cpu", flag, "0"]))


@pytest.mark.parametrize("spec", ["masm:dense=true", "nope", "masm:K", "masm:colour=red"])
def test_bad_rows_fail_before_any_process(spec: str, monkeypatch) -> None:
    monkeypatch.setattr(perf, "_spawn", lambda s, row: pytest.fail("no worker may start"))
    with pytest.raises(ConfigError):
        perf.measure(perf.Settings(methods=(spec,)))


def test_dense_and_low_rank_rows_give_the_same_loss_and_factor_gradients() -> None:
    from bench.backbone import create_backbone
    from bench.config import ModelConfig

    cfg = ModelConfig(name="test_vit", pretrained=False, img_size=32)
    batch = perf.synthetic_batch(8, 32, torch.device("cpu"))
    results = []
    for spec in ("masm:routing=none", "masm:routing=none:dense=true"):
        method, options = perf._resolve(spec, 1)
        model = method.build(create_backbone(cfg, seed=0).double(), options).double().train()
        parts = read_losses(backward(model.training_loss, {**batch, "image": batch["image"].double()}))
        results.append((parts, {n: p.grad for n, p in model.trainable_parameters()}))
    (low_parts, low_grads), (dense_parts, dense_grads) = results
    assert dense_parts == pytest.approx(low_parts, rel=1e-10)
    assert low_grads.keys() == dense_grads.keys()
    for name, grad in low_grads.items():
        torch.testing.assert_close(dense_grads[name], grad, rtol=1e-8, atol=1e-10)


def test_cuda_graph_skips_are_a_column_where_measured_and_the_worst_process_counts() -> None:
    runs = {"full-ft": [_fake_result("full-ft"), _fake_result("full-ft")], "masm": [_fake_result("masm")]}
    assert perf.SKIPS not in perf._columns(perf.summarise(runs, [], perf.Settings()))  # not a compiled step on CUDA
    runs["full-ft"][0][perf.SKIPS], runs["full-ft"][1][perf.SKIPS], runs["masm"][0][perf.SKIPS] = 0, 2, 0
    rows = perf.summarise(runs, [], perf.Settings())
    assert [r[perf.SKIPS] for r in rows] == [2, 0] and perf._columns(rows)[-1] == perf.SKIPS
