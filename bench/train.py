"""The one training and evaluation loop.

``train(cfg, run_dir)`` builds the backbone and the method's adapter, trains with ``optim.name`` on the training card,
validates on its validation split after every epoch (keeping the best-on-validation weights), and finally tests every
test card with the last and with the validation-selected weights. It never asks which method it runs: whatever
differs lives in the :class:`~bench.adapter.Adapter`. Test sets are never used for any choice.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench import checkpoint, distributed
from bench import metric_keys as keys
from bench.adapter import Adapter
from bench.backbone import compile_backbone, create_backbone, data_config, memory_format
from bench.config import RunConfig
from bench.data.augment import Augment
from bench.data.cards import Card, open_card
from bench.data.catalog import redrawn, split_frames
from bench.data.frames import Frame
from bench.data.loader import FrameDataset, FrameLoader, StepSampler, eval_loader, group_indices, train_loader
from bench.data.synthesis import synthetic_split, training_forgeries
from bench.diagnostics import LAYER_TABLE, write_layer_table
from bench.metrics import binary_metrics
from bench.registry import get_method
from bench.step import BATCH_KEYS, Step, TrainingError, autocast

LogFn = Callable[[dict[str, float], int], None]
LAST, BEST = "last.pt", "best.pt"
LAYOUT = 2
"""Version of the training state's layout (2: a method's stacked factors, slot-wise optimizer state)."""

logger = logging.getLogger(__name__)
ROBUST_METRICS = ("auc", "eer", "video_auc")
PREPARATION_SEED = 1_000_003
"""Offsets the sampler seed of :meth:`Adapter.prepare`'s batches from the training stream's."""


@dataclass
class Splits:
    """The frames a run uses: the training forgery methods, training, validation and one test split per test card."""

    forgeries: list[str]
    train: list[Frame]
    val: list[Frame]
    tests: dict[str, list[Frame]]


def pick_device(name: str) -> torch.device:
    """The device of this process (with several processes on GPUs, the GPU of its local rank)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def load_splits(cfg: RunConfig) -> Splits:
    """Resolve the cards of ``cfg.data`` into frame lists (generating offline cards when needed)."""
    data = cfg.data

    def card(name: str) -> Card:
        return redrawn(open_card(name, data.deepfakebench), data.offline_seed)

    train_card = card(data.train)
    if train_card.validation is None:
        raise TrainingError(f"card {train_card.name} names no validation split, so it cannot be trained on")

    def frames(of: Card, split: str) -> list[Frame]:
        return split_frames(of, split, data.root, data.frames_per_video, data.max_bad_fraction)

    tests = {c.name: frames(c, "test") for c in map(card, data.test)}
    train = frames(train_card, "train")
    if data.synthesis != "none":
        train = synthetic_split(train, data.synthesis)
    forgeries = training_forgeries(train_card.forgeries, data.synthesis)
    return Splits(forgeries, train, frames(train_card, train_card.validation), tests)


def build_model(cfg: RunConfig, forgeries: list[str]) -> tuple[Adapter, dict]:
    """The backbone adapted by the configured method, and the backbone's data config."""
    method = get_method(cfg.method.name)
    options = method.resolve(cfg.method.options, forgeries)
    backbone = create_backbone(cfg.model, cfg.train.seed)
    data = data_config(backbone, cfg.model)
    return method.build(backbone, options), data


def predict(model: Adapter, loader: Iterable[dict], device: torch.device, amp: bool, n: int) -> np.ndarray:
    """Probability of "fake" for each of the ``n`` items of ``loader``'s dataset (NaN where a frame was unreadable)."""
    scores = np.full(n, np.nan)
    with model.evaluating():
        for batch in loader:
            with autocast(device, amp):
                logits = model(batch["image"].to(device, non_blocking=True))
            scores[batch["index"].numpy()] = F.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
    return scores


def write_scores(path: Path, frames: list[Frame], scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "label", "forgery", "score", "path"])
        for frame, score in zip(frames, scores, strict=True):
            writer.writerow([frame.video, frame.label, frame.forgery, f"{score:.8f}", frame.path])


class Evaluator:
    """Scores frame lists with one model; loaders of the plain splits are made once and kept (persistent workers)."""

    def __init__(self, model: Adapter, cfg: RunConfig, data: dict, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.size, self.mean, self.std = data["input_size"][-1], data["mean"], data["std"]
        self._loaders: dict[str, FrameLoader] = {}
        self.seconds = 0.0  # spent scoring, so that the step time can leave it out

    def _loader(self, frames: list[Frame], perturbation: tuple[str, int] | None) -> FrameLoader:
        dataset = FrameDataset(distributed.shard(frames), self.size, self.mean, self.std, perturbation=perturbation)
        workers = self.cfg.data.loader_workers()
        workers = min(workers, 1) if len(frames) < 512 else workers
        cuda = self.device.type == "cuda"
        return eval_loader(dataset, self.cfg.eval.batch_size, workers, cuda, self.cfg.data.max_bad_fraction)

    def scores(self, name: str, frames: list[Frame], perturbation: tuple[str, int] | None = None) -> np.ndarray:
        """Scores of ``frames`` in order (NaN for unreadable frames); with several processes each scores its shard
        and all gather. Perturbed sets get a loader of their own that is not kept."""
        if perturbation is not None:
            loader = self._loader(frames, perturbation)
        elif name not in self._loaders:
            loader = self._loaders[name] = self._loader(frames, None)
        else:
            loader = self._loaders[name]
        local = predict(self.model, loader, self.device, self.cfg.train.amp, len(loader.dataset))
        return distributed.gather_concat(torch.from_numpy(local)).numpy()

    def metrics(
        self, name: str, frames: list[Frame], bootstrap: int = 0, perturbation: tuple[str, int] | None = None
    ) -> tuple[dict[str, float], list[Frame], np.ndarray]:
        """Metrics of the readable frames, with those frames and their scores."""
        began = time.perf_counter()
        scores = self.scores(name, frames, perturbation)
        self.seconds += time.perf_counter() - began
        kept = ~np.isnan(scores)
        frames, scores = [f for f, k in zip(frames, kept, strict=True) if k], scores[kept]
        labels = np.array([f.label for f in frames])
        result = binary_metrics(
            labels, scores, [f.video for f in frames], bootstrap=bootstrap, seed=self.cfg.train.seed
        )
        return result, frames, scores


def _save_state(path: Path, model: Adapter, optimizer, step: int, best: dict, history: list) -> None:
    checkpoint.save_atomic(
        {
            "model": model.checkpoint_state(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "step": step,
            "best": best,
            "history": history,
            "layout": LAYOUT,
        },
        path,
        keep_previous=True,
    )


def _restore_state(state: dict, model: Adapter, optimizer) -> tuple[int, dict, list]:
    """The step, best validation and history of ``state``, its model and optimizer restored (the rate is a function
    of the step: nothing to restore)."""
    model.load_checkpoint_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["best"], state["history"]


def _log_group(log: LogFn, group: str, values: dict[str, float], step: int) -> None:
    log({keys.grouped(group, k): float(v) for k, v in values.items() if isinstance(v, int | float)}, step)


def train(cfg: RunConfig, run_dir: Path, log: LogFn | None = None, stop_after: int | None = None) -> dict[str, float]:
    """Train and test one configuration; resumes from ``run_dir/last.pt`` when it exists.

    Args:
        cfg: the resolved run configuration.
        run_dir: the run folder (checkpoints, scores, metrics).
        log: receives ``(metrics, step)`` for training curves and validation.
        stop_after: stop (as a pre-emption would) once this many optimizer steps are done; for tests.

    Returns:
        Test metrics keyed ``<metric>/<card>`` (validation-selected weights) and ``last/<metric>/<card>``, plus
        ``val/<metric>`` of the selected checkpoint, parameter counts and the method's diagnostics.
    """
    rank, world = distributed.world()
    log = log if log is not None and rank == 0 else (lambda metrics, step: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    splits = load_splits(cfg)
    model, data = build_model(cfg, splits.forgeries)
    model.to(device=device, memory_format=memory_format(model))  # type: ignore[call-overload]  # speed only

    size, mean, std = data["input_size"][-1], data["mean"], data["std"]
    augment = Augment(cfg.data.augment)
    train_set = FrameDataset(
        splits.train, size, mean, std, splits.forgeries, augment=augment, synthesis=cfg.data.synthesis
    )
    groups = group_indices(splits.train, splits.forgeries, cfg.data.balanced)
    micro, accumulate = cfg.train.batch_size, cfg.optim.accumulate
    steps_per_epoch = cfg.train.steps_per_epoch or math.ceil(len(splits.train) / (micro * accumulate))
    total = cfg.train.epochs * steps_per_epoch

    if rank == 0:
        for stale in checkpoint.remove_stale_temporaries(run_dir, (LAST, BEST)):
            logger.warning("removed %s, left by a writer that died mid-write", stale)
    state = checkpoint.load_latest(run_dir / LAST, warn=logger.warning)
    if state is not None and state.get("layout", 1) != LAYOUT:
        raise TrainingError(
            f"{run_dir / LAST} has checkpoint layout {state.get('layout', 1)}, this version reads {LAYOUT}: "
            f"remove {run_dir} to train the run again"
        )

    def preparation(n: int) -> Iterator[dict[str, torch.Tensor]]:
        """``n`` training batches from a stream of their own (the training stream stays as it is)."""
        sampler = StepSampler(groups, micro, cfg.train.seed + PREPARATION_SEED, 0, n)
        for batch in train_loader(train_set, sampler, 0, cfg.train.seed, False, cfg.data.max_bad_fraction):
            yield {k: batch[k].to(device) for k in BATCH_KEYS}

    model.prepare(preparation, None if state is None else state["model"])
    model.to(device=device, memory_format=memory_format(model))  # type: ignore[call-overload]  # what prepare added
    compile_backbone(model.backbone, cfg.train.compile)
    if cfg.train.compile == "step" and world > 1:
        raise TrainingError("train.compile=step captures one process's step: use train.compile=blocks with several")
    loss = distributed.loss_module(model, device)
    step_fn = Step.build(model, cfg.optim, device, total, cfg.train.amp, loss, compiled=cfg.train.compile == "step")
    optimizer = step_fn.optimizer
    step = 0
    best: dict[str, Any] = {"value": -math.inf, "step": 0}  # "metrics" too, once a validation is the best
    history: list[dict[str, float]] = []
    if state is not None:
        step, best, history = _restore_state(state, model, optimizer)
        log({keys.RESUME_STEP: float(step)}, step)

    evaluator = Evaluator(model, cfg, data, device)
    sampler = StepSampler(groups, micro, cfg.train.seed, step * accumulate, total * accumulate)
    rank_batches = distributed.RankSlice(sampler, rank, world)  # train.batch_size is the global batch
    loader = train_loader(
        train_set,
        rank_batches,
        cfg.data.loader_workers(),
        cfg.train.seed,
        device.type == "cuda",
        cfg.data.max_bad_fraction,
    )
    batches = iter(loader)
    model.train()
    desc = f"{cfg.method.name} seed {cfg.train.seed}"
    bar = tqdm(total=total, initial=step, desc=desc, disable=None if rank == 0 else True, leave=False)
    began, first = time.perf_counter(), step
    while step < total:
        if stop_after is not None and step >= stop_after:
            bar.close()
            return {}
        values = step_fn([next(batches) for _ in range(accumulate)], step)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.3f}")
        if step % cfg.train.log_every == 0 or step == total:
            _log_group(log, keys.TRAIN, values, step)
        if step % steps_per_epoch == 0:
            val, _, _ = evaluator.metrics("val", splits.val)
            model.train()
            value = val[cfg.eval.select_metric]
            history.append({"step": step, **val})
            _log_group(log, keys.VAL, val, step)
            if value > best["value"]:
                best = {"value": value, "step": step, "metrics": val}
                if rank == 0:
                    checkpoint.save_atomic(model.checkpoint_state(), run_dir / BEST)
            if rank == 0:
                _save_state(run_dir / LAST, model, optimizer, step, best, history)
        elif step % cfg.train.checkpoint_every == 0 and rank == 0:
            _save_state(run_dir / LAST, model, optimizer, step, best, history)
    bar.close()
    if step > first:  # logged, not returned: the results of a resumed run equal those of one that was not
        log({keys.STEP_TIME: (time.perf_counter() - began - evaluator.seconds) / (step - first)}, step)
    return _final_tests(cfg, run_dir, model, evaluator, splits, best, step)


def _final_tests(
    cfg: RunConfig, run_dir: Path, model: Adapter, evaluator: Evaluator, splits: Splits, best: dict, step: int
) -> dict[str, float]:
    """Test every test card with the last weights, then with the validation-selected ones (the same weights, not
    tested twice, when the last validation was the best)."""
    main = distributed.is_main()
    results: dict[str, float] = {keys.TRAINABLE: model.num_trainable(), keys.TOTAL: _count(model)}
    tested: dict[str, tuple[dict[str, float], list[Frame], np.ndarray]] = {}
    for tag in (keys.LAST, keys.SELECTED):
        if tag == keys.SELECTED and best["step"] != step:
            model.load_checkpoint_state(checkpoint.load(run_dir / BEST))
            tested.clear()
        for name, frames in tqdm(
            splits.tests.items(), desc=f"test ({tag})", disable=None if main else True, leave=False
        ):
            if name not in tested:
                tested[name] = evaluator.metrics(name, frames, bootstrap=cfg.eval.bootstrap)
            metrics, kept, scores = tested[name]
            if main:
                write_scores(run_dir / "scores" / tag / f"{name}.csv", kept, scores)
            results.update({keys.ResultKey(k, name, tag).key: v for k, v in metrics.items()})
    for kind, level in cfg.eval.perturbation_levels():  # robustness of the selected weights
        for name, frames in splits.tests.items():
            metrics, _, _ = evaluator.metrics(name, frames, perturbation=(kind, level))
            robust = {keys.RobustKey(kind, level, k, name).key: metrics[k] for k in ROBUST_METRICS if k in metrics}
            results.update(robust)
    results.update({keys.grouped(keys.VAL, k): v for k, v in best["metrics"].items()})
    results[keys.SELECTED_STEP] = best["step"]
    results[keys.STEPS] = step
    if main:
        folder = run_dir / "diagnostics"
        summaries = write_layer_table(model.diagnostics(folder), folder / LAYER_TABLE)
        results.update({keys.grouped(keys.DIAG, k): v for k, v in summaries.items()})
        (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def _count(model: Adapter) -> int:
    return sum(p.numel() for p in model.parameters())
