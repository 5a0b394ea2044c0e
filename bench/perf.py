"""``bench perf``: what each fine-tuning strategy costs, measured side by side on one backbone, batch and device.

Every row is measured in its own fresh process (``python -m bench.perf --worker SPEC``) so memory figures do not
leak into each other, and the rows are interleaved over the repeats (A B C ... A B C) so drift of a shared machine
hits all alike. A worker times the loop's own training step (:class:`bench.step.Step` at the default optimizer
settings: ``training_loss`` under autocast, backward, the adapter's hooks, clipping, the optimizer) on synthetic
batches of reals and fakes of :data:`K_FORGERIES` forgery methods, so routing and the constraints run as in training.
It then times evaluation under ``evaluating()`` (merged weights) and, in the same process and batch for batch in
turn, the plain backbone's.

A row is a registered method with optional option overrides, ``name[:key=value...]`` (values in YAML syntax), e.g.
``masm:routing=none:dense=true``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.config import COMPILE_MODES
from bench.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from bench.adapter import Adapter
    from bench.step import Batch

K_FORGERIES = 4
"""Forgery methods in the synthetic batches (FaceForensics++'s four); MASM gets one subspace each."""

PROFILE_STEPS = 3
CUDA_PEAK_TFLOPS = 989.0
"""Dense bf16 peak of an H100/H200 SXM: the MFU denominator on CUDA unless ``--peak-tflops`` is given."""
RESULT_PREFIX = "PERF-RESULT "

COLUMNS = (
    "method",
    "trainable_params",
    "params_vs_fullft",
    "step_s",
    "step_spread",
    "step_vs_fullft",
    "train_img_s",
    "eval_img_s",
    "plain_eval_img_s",
    "eval_vs_plain",
    "peak_mem_mb",
    "mem_vs_fullft",
    "base_mem_mb",
    "mem_over_base_vs_fullft",
    "setup_cold_s",
    "setup_cached_s",
    "first_step_s",
    "step_gflop",
    "achieved_tflops",
    "mfu",
    "loader_img_s",
    "loader_vs_train",
)
PROFILE_COLUMNS = (
    "prof_step_s",
    "prof_ops",
    "prof_autograd_nodes",
    "prof_accumulate_grad",
    "prof_items",
    "trainable_tensors",
    "prof_kernels",
    "prof_syncs",
    "prof_device_busy",
)
"""With ``--profile``: per profiled step, aten operators, autograd nodes run (AccumulateGrad among them), scalar
reads to the host, the trainable tensors, CUDA kernel launches, host syncs, the GPU's busy share."""
SKIPS = "cudagraph_skips"
"""With ``--compile step`` on CUDA: graphs of the step that torch did not replay as CUDA graphs."""
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
AUTOGRAD_PREFIX = "autograd::engine::evaluate_function: "
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
NOTES = (
    "step_s: median training step (forward, backward, the method's losses and hooks, clipping, AdamW) over all"
    " repeats; *_vs_fullft: ratio to the full-ft row of this run",
    "step_spread: (slowest - fastest) of the row's per-process median steps over step_s: step ratios that differ by"
    " less than the rows' spreads are not told apart by this run (more --repeats narrow it)",
    "eval_vs_plain: evaluation throughput (merged weights) over the plain timm backbone's, timed in the same process"
    " with batches alternating",
    "peak_mem_mb: peak RSS of the row's own process on CPU (CUDA max_memory_allocated on GPU) up to the end of"
    " training; base_mem_mb: RSS after imports (torch's libraries); mem_over_base_vs_fullft: (peak - base) over"
    " full-ft's",
    "setup_cold_s: first apply() in the process, SVD cache empty; setup_cached_s: apply() again, SVDs from the cache",
    "first_step_s: the process's first training step (with --compile: compiling the backbone's training graphs)",
    "cudagraph_skips: with --compile step on CUDA, graphs of the step that torch did not replay as CUDA graphs (the"
    " worker's log says why); 0: the step ran as CUDA graphs",
    "dense=true materialises W_eff and calls F.linear; it needs routing=none, so its comparison is the"
    " masm:routing=none row with the same targets (low-rank path), not the routed masm row",
    "step_gflop: FLOPs of one forward and backward as run (torch FlopCounterMode); mfu: achieved / --peak-tflops",
    "loader_img_s: the training card through FrameDataset + DataLoader at the input size; loader_vs_train: over the"
    " row's train_img_s",
    "with --profile: prof_* per step of torch.profiler's steps (after the timed ones): prof_ops aten operators,"
    " prof_autograd_nodes backward nodes run, prof_accumulate_grad of them AccumulateGrad (one per trainable tensor"
    " reached), prof_items scalar reads to the host (aten::_local_scalar_dense: .item(), a host branch on a tensor;"
    " the loop's one loss read per step is a copy, not counted), trainable_tensors, prof_kernels CUDA kernel"
    " launches, prof_syncs host-device syncs (the loss read among them), prof_device_busy GPU kernel time over wall"
    " time (low: the host's launches limit the step); tables in <out>/profiles/",
)


class PerfError(RuntimeError):
    """A worker process failed; the message holds the end of its output."""


@dataclass
class Settings:
    """One ``bench perf`` run (a worker gets it too, with the row it measures).

    Attributes:
        backbone: timm model name (random weights).
        batch_size: images per training and evaluation batch.
        methods: rows, ``name[:key=value...]``; empty: :func:`default_methods`.
        device: ``cpu`` or ``cuda``.
        steps: timed training steps and evaluation batches per worker.
        warmup: untimed steps (and evaluation batches) before them; the first step is timed alone
            (``first_step_s``).
        repeats: interleaved rounds over the rows.
        img_size: input size; ``None`` is the model's own.
        compile: ``off``, ``blocks``, ``model`` (:func:`bench.backbone.compile_backbone`) or ``step`` (the whole
            training step, :class:`bench.step.Step`).
        channels_last: ``auto`` (as the loop: for convolutional backbones), ``on`` or ``off``.
        peak_tflops: the device's peak rate for MFU; ``None`` is :data:`CUDA_PEAK_TFLOPS` on CUDA, no MFU on CPU.
        card: training card read by the loader measurement.
        data_root: where the card's data lives.
        loader_workers: DataLoader workers of the loader measurement.
        loader_batches: batches timed by the loader measurement.
        profile_dir: where each worker writes a torch.profiler table of :data:`PROFILE_STEPS` more training steps;
            None profiles nothing.
    """

    backbone: str = "vit_small_patch16_224"
    batch_size: int = 8
    methods: tuple[str, ...] = ()
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    repeats: int = 2
    img_size: int | None = None
    compile: str = "off"
    channels_last: str = "auto"
    peak_tflops: float | None = None
    card: str = "offline-ff"
    data_root: str = "data"
    loader_workers: int = 2
    loader_batches: int = 50
    profile_dir: str | None = None

    def __post_init__(self) -> None:
        self.methods = self.methods or default_methods()

    @property
    def worker_steps(self) -> int:
        """Training steps a worker runs: the first, the rest of the warm-up, the timed ones and the profiled ones."""
        return self.warmup + self.steps + PROFILE_STEPS


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value...]`` to the registered name and its option overrides."""
    name, *assignments = spec.split(":")
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--methods {spec!r}: expected name:key=value, e.g. masm:routing=none:dense=true")
        overrides[key] = yaml.safe_load(raw)
    return name, overrides


def _resolve(spec: str, total_steps: int) -> tuple[Any, Any]:
    """The registered method of a row and its options, bound to :data:`K_FORGERIES` forgery methods and a run of
    ``total_steps`` steps."""
    from bench.registry import get_method

    name, overrides = parse_method(spec)
    method = get_method(name)
    return method, method.resolve(overrides, [f"forgery{k}" for k in range(K_FORGERIES)], total_steps)


# ------------------------------------------------------------------------------------------------ worker processes


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def synthetic_batch(batch_size: int, size: int, device: torch.device) -> Batch:
    """Random images, reals and fakes alternating, the fakes cycling over :data:`K_FORGERIES` forgery methods."""
    import torch

    index = torch.arange(batch_size)
    labels = index % 2
    forgeries = torch.where(labels == 1, (index // 2) % K_FORGERIES, -1)
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"image": images.to(device), "label": labels.to(device), "forgery": forgeries.to(device)}


def _times(fns: Sequence[Callable[[], object]], warmup: int, steps: int, sync: Callable[[], None]) -> list[list[float]]:
    """Seconds per call of each of ``fns`` (``sync`` waits for the device), after ``warmup`` untimed rounds.

    The functions alternate within every round, so drift of a shared machine hits them alike.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for fn, times in zip(fns, out, strict=True):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return out


def eval_batch(model: Adapter, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scores of one batch as the loop's ``predict()`` computes them (call inside ``model.evaluating()``)."""
    import torch.nn.functional as F

    from bench.step import autocast

    with autocast(device, True):
        logits = model(images)
    return F.softmax(logits.float(), dim=-1)[:, 1].cpu()


def measure_method(s: Settings, row: str) -> dict[str, Any]:
    """Set-up times, training step times, peak memory, FLOPs and evaluation throughput of one row."""
    import torch
    from torch._dynamo.utils import counters
    from torch.utils.flop_counter import FlopCounterMode

    from bench.adapter import Adapter
    from bench.backbone import create_backbone, data_config
    from bench.config import ModelConfig, OptimConfig
    from bench.step import Step, backward

    method, options = _resolve(row, s.worker_steps)  # imports the methods
    base_mem = _rss_mb()
    device = torch.device(s.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = ModelConfig(name=s.backbone, pretrained=False, img_size=s.img_size)

    def backbone() -> torch.nn.Module:
        with device:  # initialised on the device itself (fast for a large model on a GPU)
            return create_backbone(cfg, seed=0)

    def build() -> tuple[Adapter, float]:
        net = backbone()
        sync()
        start = time.perf_counter()
        model = method.build(net, options).to(device)
        sync()
        return model, time.perf_counter() - start

    def evaluation(model: Adapter, plain: Adapter) -> list[list[float]]:
        """Batch times of the method (merged weights) and of the plain backbone, alternating."""
        with model.evaluating(), plain.evaluating():
            fns = [lambda: eval_batch(model, images, device), lambda: eval_batch(plain, images, device)]
            return _times(fns, s.warmup, s.steps, sync)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["BENCH_SVD_CACHE"] = cache
        model, setup_cold = build()
        size = data_config(model.backbone, cfg)["input_size"][-1]
        batch = synthetic_batch(s.batch_size, size, device)
        compiled = s.compile == "step"
        train = Step.build(model, OptimConfig(), device, s.worker_steps, compiled=compiled)  # the loop's, at defaults
        model.train()
        with FlopCounterMode(display=False) as counter:  # one eager forward and backward
            backward(model.training_loss, batch)
        train.optimizer.zero_grad(set_to_none=True)
        memory_format = _memory_format(s, model)
        model = _prepare(model, memory_format, s.compile)
        batch = {**batch, "image": batch["image"].contiguous(memory_format=memory_format)}
        steps = iter(range(s.worker_steps))
        skipped = counters["inductor"]["cudagraph_skips"]

        def step() -> object:
            return train([batch], next(steps))  # raises TrainingError on a non-finite loss

        start = time.perf_counter()
        step()
        sync()
        first_step = time.perf_counter() - start
        [step_times] = _times([step], s.warmup - 1, s.steps, sync)
        skips = {SKIPS: counters["inductor"]["cudagraph_skips"] - skipped} if cuda and compiled else {}
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _rss_mb()
        profiled: dict[str, float | None] = {}
        if s.profile_dir is not None:
            profiled = profile_steps(step, sync, cuda, Path(s.profile_dir) / f"{_slug(row)}.txt", row)
            profiled["trainable_tensors"] = len(train.trainable)
        plain = _prepare(Adapter(backbone()), memory_format, s.compile)  # the timm model as is
        images = batch["image"]
        eval_times, plain_times = evaluation(model, plain)
        trainable_params, total_params = model.num_trainable(), sum(p.numel() for p in model.parameters())
        _, setup_cached = build()
    return {
        "method": row,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "step_times": step_times,
        "eval_img_s": s.batch_size / statistics.median(eval_times),
        "plain_eval_img_s": s.batch_size / statistics.median(plain_times),
        "peak_mem_mb": peak_mem,
        "base_mem_mb": base_mem,
        "setup_cold_s": setup_cold,
        "setup_cached_s": setup_cached,
        "first_step_s": first_step,
        **skips,
        "step_flop": counter.get_total_flops(),
        **profiled,
    }


def _slug(row: str) -> str:
    """A file name for a row: ``masm:routing=none`` -> ``masm_routing-none``."""
    return row.replace(":", "_").replace("=", "-").replace("/", "-")


def profile_steps(
    step: Callable[[], object], sync: Callable[[], None], cuda: bool, path: Path, title: str
) -> dict[str, float | None]:
    """Run :data:`PROFILE_STEPS` steps under ``torch.profiler``; write its operator table to ``path``, return counts.

    The table is sorted by GPU time on CUDA (which kernels take the step) and by CPU time otherwise.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(PROFILE_STEPS):
            step()
        sync()
        wall = (time.perf_counter() - start) / PROFILE_STEPS
    events = prof.key_averages()

    def per_step(keys: tuple[str, ...] | None = None, prefix: str = "") -> float:
        return sum(e.count for e in events if (e.key in keys if keys else e.key.startswith(prefix))) / PROFILE_STEPS

    # kernels and copies are device-side events; an operator's row repeats its kernels' time, so it is left out
    device_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / PROFILE_STEPS / 1e6
    out = {
        "prof_step_s": wall,
        "prof_ops": per_step(prefix="aten::"),
        "prof_autograd_nodes": per_step(prefix=AUTOGRAD_PREFIX),
        "prof_accumulate_grad": per_step(prefix=f"{AUTOGRAD_PREFIX}torch::autograd::AccumulateGrad"),
        "prof_items": per_step(("aten::_local_scalar_dense",)),
        "prof_kernels": per_step(LAUNCH_EVENTS) if cuda else None,
        "prof_syncs": per_step(SYNC_EVENTS) if cuda else None,
        "prof_device_busy": device_s / wall if cuda else None,
    }
    summary = ", ".join(f"{k} {v:.4g}" for k, v in out.items() if v is not None)
    table = events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}: {PROFILE_STEPS} training steps, per step: {summary}\n{table}\n")
    return out


def _memory_format(s: Settings, model: Adapter) -> torch.memory_format:
    """``channels_last`` when asked, or by default as the loop chooses (:func:`bench.backbone.memory_format`)."""
    import torch

    from bench.backbone import memory_format

    if s.channels_last == "auto":
        return memory_format(model)
    return torch.channels_last if s.channels_last == "on" else torch.contiguous_format


def _prepare(model: Adapter, memory_format: torch.memory_format, compile: str) -> Adapter:
    from bench.backbone import compile_backbone

    model = model.to(memory_format=memory_format)
    compile_backbone(model.backbone, compile)
    return model


def measure_loader(s: Settings) -> dict[str, Any]:
    """Images per second of the training card's train split through the loop's dataset, sampler and DataLoader."""
    import torch

    from bench.backbone import create_backbone, data_config
    from bench.config import DataConfig, ModelConfig
    from bench.data.cards import load_card
    from bench.data.catalog import split_frames
    from bench.data.loader import FrameDataset, StepSampler, group_indices, train_loader

    cfg = ModelConfig(name=s.backbone, pretrained=False, img_size=s.img_size)
    with torch.device("meta"):  # the data config only
        data = data_config(create_backbone(cfg), cfg)
    defaults = DataConfig()
    card = load_card(s.card)
    frames = split_frames(card, "train", s.data_root, defaults.frames_per_video)
    dataset = FrameDataset(frames, data["input_size"][-1], data["mean"], data["std"], card.forgeries)
    groups = group_indices(frames, card.forgeries, defaults.balanced)
    warmup = max(1, s.loader_workers)  # the workers' start-up
    sampler = StepSampler(groups, s.batch_size, 0, 0, warmup + s.loader_batches)
    batches = iter(train_loader(dataset, sampler, s.loader_workers, 0, pin=s.device == "cuda"))
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    images = sum(len(batch["image"]) for batch in batches)
    return {"loader_img_s": images / (time.perf_counter() - start)}


def _worker_main(argv: list[str]) -> int:
    """``python -m bench.perf --worker JSON``: measure one row (or the loader) and print one result line."""
    payload = json.loads(argv[argv.index("--worker") + 1])
    row = payload.pop("row")
    s = Settings(**{**payload, "methods": tuple(payload["methods"])})
    result = measure_loader(s) if row is None else measure_method(s, row)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ parent process


def _spawn(s: Settings, row: str | None) -> dict[str, Any]:
    """Run one measurement in a fresh process and return its result."""
    payload = json.dumps({**asdict(s), "row": row})
    proc = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--worker", payload], capture_output=True, text=True, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PerfError(f"perf worker for {row or 'the loader'} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def default_methods() -> tuple[str, ...]:
    """The rows measured unless others are asked for: every registered method's (its registration's ``perf_rows``),
    :data:`~bench.registry.BASELINE` first."""
    from bench.registry import perf_rows

    return tuple(perf_rows())


def rows_in_order(methods: tuple[str, ...] | list[str]) -> list[str]:
    """The rows to measure: :data:`~bench.registry.BASELINE` first, then the others in the order given, once each."""
    from bench.registry import BASELINE

    return list(dict.fromkeys([BASELINE, *methods]))


def check_loader_batch(s: Settings) -> None:
    """The loader measurement's batch must hold reals and every forgery method of the card (checked up front)."""
    from bench.data.cards import load_card
    from bench.data.loader import group_shares

    card = load_card(s.card)
    try:
        group_shares(s.batch_size, len(card.forgeries) + 1)
    except ValueError as err:
        raise ConfigError(f"--batch-size {s.batch_size}: {err} of card {card.name!r}; raise --batch-size") from None


def measure(
    s: Settings, progress: Callable[[str], None] = lambda line: None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Measure every row ``s.repeats`` times, interleaved, and summarise them (see :func:`summarise`).

    A row whose worker fails is reported, not fatal: its later rounds are skipped and the other rows go on.
    Returns the summary rows and the failures (row, or ``loader``, to the end of the worker's output).
    """
    rows = rows_in_order(s.methods)
    for row in rows:
        _resolve(row, s.worker_steps)  # unknown methods and invalid options fail before any process starts
    check_loader_batch(s)
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    loader: list[float] = []
    failures: dict[str, str] = {}
    order: list[str | None] = [*rows, None] * s.repeats  # None: the loader
    for i, spec in enumerate(order, 1):
        name = spec or "loader"
        if name in failures:
            continue
        progress(f"[{i}/{len(order)}] {name}")
        try:
            result = _spawn(s, spec)
        except PerfError as err:
            failures[name] = str(err)
            progress(f"{name} failed; its error follows the table")
            continue
        if spec is None:
            loader.append(result["loader_img_s"])
            progress(f"    {result['loader_img_s']:.4g} images/s")
        else:
            runs[spec].append(result)
            progress(
                f"    step {statistics.median(result['step_times']):.4g} s, peak {result['peak_mem_mb']:.0f} MiB,"
                f" eval {result['eval_img_s']:.4g} images/s"
            )
    return summarise({row: results for row, results in runs.items() if results}, loader, s), failures


def summarise(runs: dict[str, list[dict[str, Any]]], loader: list[float], s: Settings) -> list[dict[str, Any]]:
    """One row per method with every column of :data:`COLUMNS`: medians over repeats and ratios to the baseline
    (:data:`~bench.registry.BASELINE`).

    Step times are pooled over repeats before the median; ``eval_vs_plain`` is the median of each process's own
    ratio (method and plain backbone timed side by side).
    """
    from bench.registry import BASELINE

    peak = s.peak_tflops if s.peak_tflops is not None else (CUDA_PEAK_TFLOPS if s.device == "cuda" else None)
    loader_img_s = statistics.median(loader) if loader else None
    out = []
    for row, results in runs.items():
        step_s = statistics.median(t for r in results for t in r["step_times"])
        per_process = [statistics.median(r["step_times"]) for r in results]
        tflops = results[0]["step_flop"] / step_s / 1e12

        def median(key: str, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(r[key] for r in results)

        out.append(
            {
                "method": row,
                "trainable_params": results[0]["trainable_params"],
                "total_params": results[0]["total_params"],
                "step_s": step_s,
                "step_spread": (max(per_process) - min(per_process)) / step_s,
                "step_range_s": (min(per_process), max(per_process)),
                "train_img_s": s.batch_size / step_s,
                "eval_img_s": median("eval_img_s"),
                "plain_eval_img_s": median("plain_eval_img_s"),
                "eval_vs_plain": statistics.median(r["eval_img_s"] / r["plain_eval_img_s"] for r in results),
                "peak_mem_mb": median("peak_mem_mb"),
                "base_mem_mb": median("base_mem_mb"),
                "setup_cold_s": median("setup_cold_s"),
                "setup_cached_s": median("setup_cached_s"),
                "first_step_s": median("first_step_s"),
                "step_gflop": results[0]["step_flop"] / 1e9,
                "achieved_tflops": tflops,
                "mfu": tflops / peak if peak else None,
                "loader_img_s": loader_img_s,
                "loader_vs_train": loader_img_s * step_s / s.batch_size if loader_img_s else None,
                "repeats": len(results),
                **{c: _median_or_none([r.get(c) for r in results]) for c in PROFILE_COLUMNS if c in results[0]},
                **({SKIPS: max(r[SKIPS] for r in results)} if SKIPS in results[0] else {}),
            }
        )
    ref = next((r for r in out if r["method"] == BASELINE), None)  # None: its worker failed, no ratios
    for r in out:
        r["params_vs_fullft"] = r["trainable_params"] / ref["trainable_params"] if ref else None
        r["step_vs_fullft"] = r["step_s"] / ref["step_s"] if ref else None
        r["mem_vs_fullft"] = r["peak_mem_mb"] / ref["peak_mem_mb"] if ref else None
        ref_growth = ref["peak_mem_mb"] - ref["base_mem_mb"] if ref else 0  # 0 also when a tiny model never beats
        growth = r["peak_mem_mb"] - r["base_mem_mb"]  # the import peak
        r["mem_over_base_vs_fullft"] = growth / ref_growth if ref_growth > 0 else None
    return out


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`COLUMNS`, :data:`PROFILE_COLUMNS` when the rows were profiled and :data:`SKIPS` when they ran CUDA
    graphs."""
    return COLUMNS + tuple(c for c in (*PROFILE_COLUMNS, SKIPS) if any(c in r for r in rows))


def _format(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key == "trainable_params":
        return f"{value:,}"
    if key.endswith(("_vs_fullft", "_vs_plain", "_vs_train", "_busy")) or key == "mfu":
        return f"{value:.3f}" if value < 10 else f"{value:.0f}"
    return f"{value:.4g}"


def format_table(rows: list[dict[str, Any]], title: str) -> str:
    """A plain-text table of :data:`COLUMNS` with the notes below it."""
    columns = _columns(rows)
    cells = [list(columns)] + [[_format(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title]
    for line in cells:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        )
    lines += [f"- {note}" for note in NOTES]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*_columns(rows), "total_params", "repeats"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bar charts of step time, evaluation throughput, peak memory and trainable parameters per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("step_s", "training step (s)", "step_vs_fullft", "x full-ft"),
        ("eval_img_s", "evaluation (images/s)", "eval_vs_plain", "x plain"),
        ("peak_mem_mb", "peak memory (MiB)", "mem_vs_fullft", "x full-ft"),
        ("trainable_params", "trainable parameters", "params_vs_fullft", "x full-ft"),
    )
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.45 * len(rows) + 1.5), sharey=True)
    spans = [[r["step_s"] - r["step_range_s"][0] for r in rows], [r["step_range_s"][1] - r["step_s"] for r in rows]]
    for ax, (key, label, ratio, unit) in zip(axes, panels, strict=True):
        values = [r[key] for r in rows]
        bars = ax.barh(
            names,
            values,
            xerr=spans if key == "step_s" else None,  # the per-process medians' range
            color="tab:blue" if key != "peak_mem_mb" else "tab:orange",
        )
        ax.bar_label(bars, ["" if r[ratio] is None else f"{r[ratio]:.3g}{unit}" for r in rows], fontsize=7, padding=2)
        ax.set_xlabel(label)
        ax.set_xscale("log" if key == "trainable_params" else "linear")
        ax.margins(x=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ command


def add_perf_command(sub: argparse._SubParsersAction) -> None:
    """Add ``bench perf`` to the CLI's subparsers (its handler is ``args.handler``)."""
    defaults = Settings  # the fields' defaults; an instance would import every method for its rows
    perf = sub.add_parser("perf", help="training-step time, evaluation throughput and memory of each method")
    perf.add_argument("--backbone", default=defaults.backbone, help="timm model name (random weights)")
    perf.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    perf.add_argument(
        "--methods",
        default="",
        help="rows, comma separated: name[:key=value] (default: every method's, `bench methods`)",
    )
    perf.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    perf.add_argument("--steps", type=int, default=defaults.steps, help="timed steps (and eval batches) per process")
    perf.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="steps before them (the first is timed as first_step_s)"
    )
    perf.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"interleaved rounds (default: {defaults.repeats} on CPU, where a shared machine drifts; 1 on CUDA)",
    )
    perf.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    perf.add_argument(
        "--compile",
        nargs="?",
        const="model",
        default="off",
        choices=COMPILE_MODES,
        help="torch.compile the whole backbone (model, the flag alone), each block of its trunk (blocks: compiles"
        " faster, runs slower) or the whole training step (step: forward, backward and optimizer in one graph);"
        " results go to <backbone>-<device>-compile-<mode>.csv",
    )
    perf.add_argument("--channels-last", choices=("auto", "on", "off"), default=defaults.channels_last)
    perf.add_argument("--peak-tflops", type=float, default=None, help=f"for MFU (default {CUDA_PEAK_TFLOPS} on CUDA)")
    perf.add_argument("--card", default=defaults.card, help="training card for the loader measurement")
    perf.add_argument("--data-root", default=defaults.data_root)
    perf.add_argument("--loader-workers", type=int, default=defaults.loader_workers)
    perf.add_argument("--loader-batches", type=int, default=defaults.loader_batches)
    perf.add_argument("--out", default="results/perf", help="folder of <backbone>-<device>[-compile-<mode>].csv, .png")
    perf.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    perf.add_argument(
        "--profile",
        action="store_true",
        help=f"profile {PROFILE_STEPS} more training steps per row (torch.profiler): prof_* columns, <out>/profiles/",
    )
    perf.set_defaults(handler=cmd_perf)


def settings_from_args(args: argparse.Namespace) -> Settings:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible")
    repeats = args.repeats if args.repeats is not None else (1 if device == "cuda" else Settings.repeats)
    counts = (
        ("steps", args.steps),
        ("warmup", args.warmup),
        ("repeats", repeats),
        ("loader_batches", args.loader_batches),
    )
    for flag, value in counts:
        if value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    return Settings(
        backbone=args.backbone,
        batch_size=args.batch_size or (32 if device == "cuda" else 8),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        device=device,
        steps=args.steps,
        warmup=args.warmup,
        repeats=repeats,
        img_size=args.img_size,
        compile=args.compile,
        channels_last=args.channels_last,
        peak_tflops=args.peak_tflops,
        card=args.card,
        data_root=args.data_root,
        loader_workers=args.loader_workers,
        loader_batches=args.loader_batches,
        profile_dir=str(Path(args.out) / "profiles") if args.profile else None,
    )


def cmd_perf(args: argparse.Namespace) -> int:
    """Measure, print the table (or ``--json``) and write ``<out>/<backbone>-<device>[-compile-<mode>].csv`` and
    ``.png``."""
    s = settings_from_args(args)
    rows, failures = measure(s, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if not rows:
        print(f"error: every perf worker failed; the first:\n{next(iter(failures.values()))}", file=sys.stderr)
        return 1
    compiled = "" if s.compile == "off" else f"-compile-{s.compile}"
    stem = f"{Path(args.out) / s.backbone.replace('/', '_')}-{s.device}{compiled}"
    title = (
        f"bench perf: {s.backbone}, batch {s.batch_size}, {s.device}{compiled.replace('-', ' ')}, {s.steps} steps"
        f" after {s.warmup} warm-up, {s.repeats} interleaved repeats"
    )
    write_csv(rows, Path(f"{stem}.csv"))
    plot(rows, Path(f"{stem}.png"), title)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows, title))
    if not args.json:
        print(f"written: {stem}.csv, {stem}.png")
    for name, err in failures.items():
        print(f"error: {name} not measured: {err}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv))
