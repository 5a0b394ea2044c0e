"""Typed run configuration: one dataclass per section, loaded from YAML and ``--set`` overrides.

Precedence: dataclass defaults < grid base < grid cell / experiment file < ``--set section.key=value``.
Every unknown key or wrong type is a :class:`ConfigError` naming the key, where it came from and the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.schema import build_dataclass, check_choice, check_name, read_yaml

RUN_ID = "run_id"
"""Field metadata key: ``False`` marks a field that changes how a run goes (speed, logging, where things are), not
what it computes, so it is left out of the run id (:meth:`RunConfig.run_id`)."""


def speed_only(default: Any) -> Any:
    """A field with ``default`` that the run id leaves out (see :data:`RUN_ID`)."""
    return field(default=default, metadata={RUN_ID: False})


def _identity(config: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` of ``config`` without the fields marked out of the run id, at any depth."""
    return {
        f.name: _identity(value) if dataclasses.is_dataclass(value) else value
        for f in dataclasses.fields(config)
        if f.metadata.get(RUN_ID, True)
        for value in [getattr(config, f.name)]
    }


@dataclass
class ModelConfig:
    """The pretrained backbone.

    Attributes:
        name: ``lite0`` (offline ImageNet EfficientNet-Lite0) or any timm model name.
        weights: a local ``.pth``/``.safetensors`` file with the backbone's pretrained weights.
        pretrained: load pretrained weights at all (``False`` gives a randomly initialised backbone).
        img_size: input size override; ``None`` takes the model's own data config.
        drop_rate: classifier dropout override; ``None`` keeps timm's default.
    """

    name: str = "lite0"
    weights: str | None = None
    pretrained: bool = True
    img_size: int | None = 112
    drop_rate: float | None = None

    def __post_init__(self) -> None:
        if self.img_size is not None:
            _positive("model.img_size", self.img_size)


@dataclass
class MethodConfig:
    """The fine-tuning strategy: a registered name plus options checked against that method's own dataclass; full
    fine-tuning unless named (:data:`bench.registry.BASELINE`)."""

    name: str = "full-ft"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Data cards (names of ``datasets/*.yaml`` or paths) and loading.

    Attributes:
        train: card whose train split trains and whose validation split selects the checkpoint.
        test: cards evaluated at the end (a card with a test split; the training card's own is in-domain).
        root: where data lives and where generated data is written.
        frames_per_video: evenly spaced frames taken per video (train and test).
        workers: DataLoader worker processes (frames are decoded there); ``None`` takes the CPUs this process may
            use (its affinity, within Slurm's ``SLURM_CPUS_PER_TASK``), at most 16.
        balanced: each training batch holds reals and fakes of every forgery method in equal shares.
        max_bad_fraction: unreadable frames of a split are skipped and counted; past this fraction the run fails.
        offline_seed: generation seed of every offline card instead of the card's own: another draw of the offline
            benchmark (written beside the cards' own, ``<root>-seed<k>``); ``None`` keeps the cards' seeds.
        augment: training augmentation, a preset (``none``, ``flip``, ``deepfakebench``, ``effort-released``) or a
            list of albumentations transforms (:mod:`bench.data.augment`).
        deepfakebench: a DeepfakeBench checkout (default ``$DEEPFAKEBENCH``): ``deepfakebench`` cards then read their
            index from its ``preprocessing/dataset_json/`` and their frames from its ``datasets/rgb/``.
        synthesis: ``none``, or ``sbi``: train on the training card's real frames and fakes self-blended from them
            on the fly (:mod:`bench.data.synthesis`); validation and tests keep the cards' own frames.
    """

    train: str = "offline-ff"
    test: list[str] = field(
        default_factory=lambda: [
            "offline-ff",
            "offline-content",
            "offline-quality",
            "offline-degradation",
            "offline-unseen",
        ]
    )
    root: str = "data"
    frames_per_video: int = 8
    workers: int | None = speed_only(None)
    balanced: bool = True
    max_bad_fraction: float = speed_only(0.01)  # which frames are read, not what they are
    offline_seed: int | None = None
    augment: str | list[dict[str, Any]] = "flip"
    synthesis: str = "none"
    deepfakebench: str | None = speed_only(None)  # where the data is, not what it is

    def loader_workers(self) -> int:
        """``workers``, or the CPUs this process may use (see the attribute)."""
        return self.workers if self.workers is not None else available_cpus(16)

    def __post_init__(self) -> None:
        from bench.data.augment import PRESETS, Augment
        from bench.data.synthesis import SYNTHESES

        check_choice("data.synthesis", self.synthesis, SYNTHESES)

        if not isinstance(self.augment, str) or self.augment not in PRESETS:  # presets are known to build
            Augment(self.augment)  # an AugmentError (a ConfigError) names the entry
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
        _positive("data.frames_per_video", self.frames_per_video)
        if self.workers is not None:
            _at_least("data.workers", self.workers, 0)


@dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule, stepped once per optimizer step.

    Attributes:
        name: ``adamw`` (decoupled weight decay, on the tensors the method chooses), ``adam`` or ``sgd`` (with
            ``momentum``; both add ``weight_decay * w`` to the gradient of every trainable tensor, coupled L2 as
            torch implements it and as Effort and DeepfakeBench train).
        lr: the peak learning rate.
        weight_decay: decoupled (adamw) or coupled L2 (adam, sgd) weight decay.
        betas, eps: Adam's moment coefficients and denominator term (adamw, adam).
        momentum: SGD's momentum.
        schedule: ``none`` (the same rate from the first step, no warm-up), ``constant`` (after the warm-up) or
            ``cosine`` (decay to zero after the warm-up).
        warmup_steps: linear warm-up steps.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        accumulate: micro-batches per optimizer step.
    """

    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    accumulate: int = 1

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, ("adamw", "adam", "sgd"))
        check_choice("optim.schedule", self.schedule, ("none", "constant", "cosine"))
        _positive("optim.lr", self.lr)
        _positive("optim.eps", self.eps)
        _positive("optim.accumulate", self.accumulate)
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _at_least("optim.momentum", self.momentum, 0)
        if self.schedule == "none" and self.warmup_steps:
            raise ConfigError("optim.schedule=none keeps one rate from the first step: set optim.warmup_steps=0")
        if self.grad_clip is not None:
            _positive("optim.grad_clip", self.grad_clip)  # torch flips gradients for a negative max norm
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must hold two numbers in [0, 1), got {self.betas}")


COMPILE_MODES = ("off", "blocks", "model", "step")
"""``train.compile`` and ``bench perf --compile``: no compilation, each block of the trunk, the whole backbone, or the
whole training step."""


@dataclass
class TrainConfig:
    """Length and bookkeeping of the training loop.

    Attributes:
        seed: seeds the head, the sampler, augmentation and dropout.
        epochs: number of epochs; validation runs after each.
        steps_per_epoch: optimizer steps per epoch; ``None`` is one pass over the training split.
        batch_size: images per micro-batch.
        checkpoint_every: optimizer steps between checkpoints (one is also written at every epoch end).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA.
        compile: ``off``, ``blocks`` (``torch.compile`` each block of the backbone's trunk: compiles in seconds),
            ``model`` (the whole backbone: slower to compile, more fusion) or ``step`` (the whole training step,
            forward, backward and optimizer, as one graph; CUDA graphs on CUDA; AdamW or Adam, one process; the
            evaluation stays eager). Speed only, so not part of the run id; the first training steps and the first
            evaluation compile.
        log_every: optimizer steps between logged training losses.
    """

    seed: int = 0
    epochs: int = 2
    steps_per_epoch: int | None = None
    batch_size: int = 32
    checkpoint_every: int = speed_only(100)
    device: str = "auto"
    amp: bool = True
    compile: str = speed_only("off")
    log_every: int = speed_only(10)

    def __post_init__(self) -> None:
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("train.compile", self.compile, COMPILE_MODES)
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.checkpoint_every", self.checkpoint_every)
        _positive("train.log_every", self.log_every)
        if self.steps_per_epoch is not None:
            _positive("train.steps_per_epoch", self.steps_per_epoch)

    @property
    def total_steps(self) -> int | None:
        """The run's optimizer steps where ``steps_per_epoch`` fixes them; ``None`` leaves them to the size of the
        training split (one pass per epoch)."""
        return None if self.steps_per_epoch is None else self.epochs * self.steps_per_epoch


@dataclass
class EvalConfig:
    """Validation and testing.

    Attributes:
        batch_size: images per evaluation batch.
        select_metric: validation metric that picks the kept checkpoint (higher is better).
        bootstrap: resamples for the 95% confidence intervals (0 switches them off).
        perturbations: test-time perturbations for the robustness table, e.g. ``["jpeg:1..5", "blur:3", "noise"]``
            (a bare kind is all its levels; kinds and levels in :mod:`bench.data.perturb`).
    """

    batch_size: int = 64
    select_metric: str = "auc"
    bootstrap: int = 200
    perturbations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("eval.select_metric", self.select_metric, ("auc", "ap", "acc", "video_auc"))
        _positive("eval.batch_size", self.batch_size)
        _at_least("eval.bootstrap", self.bootstrap, 0)
        self.perturbation_levels()

    def perturbation_levels(self) -> list[tuple[str, int]]:
        """The configured ``(kind, level)`` pairs, in order."""
        from bench.data.perturb import parse_perturbations

        try:
            return parse_perturbations(self.perturbations)
        except ValueError as err:
            raise ConfigError(f"eval.perturbations: {err}") from None


@dataclass
class TrackingConfig:
    """Where results go.

    Attributes:
        uri: MLflow tracking URI; ``None`` takes ``MLFLOW_TRACKING_URI`` or the embedded ``sqlite:///results/mlflow.db``.
        experiment: MLflow experiment; ``None`` takes the grid's name.
        runs_dir: folder of the run folders ``<runs_dir>/<run_id>/``.
    """

    uri: str | None = None
    experiment: str | None = None
    runs_dir: str = "runs"

    def __post_init__(self) -> None:
        if self.experiment is not None:
            check_name("tracking.experiment", self.experiment)


@dataclass
class LaunchConfig:
    """How a grid's cells run: in this process, or through Submitit (Submitit's generic names plus ``slurm_*``)."""

    launcher: str = "local"
    timeout_min: int = 60
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 16
    nodes: int = 1
    tasks_per_node: int = 1
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_constraint: str | None = None
    slurm_array_parallelism: int = 64

    def __post_init__(self) -> None:
        check_choice("launch.launcher", self.launcher, ("local", "debug", "slurm"))


@dataclass
class RunConfig:
    """Everything one run needs; the hash of its result-relevant sections is the run id."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={RUN_ID: False})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={RUN_ID: False})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """A short hash of what determines the result (not where it is tracked, how it is launched or loaded)."""
        d = _identity(self)
        if d["data"]["offline_seed"] is None:  # the cards' own draw: the ids of configs that predate the key
            d["data"].pop("offline_seed")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SECTION_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "method": MethodConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "tracking": TrackingConfig,
    "launch": LaunchConfig,
}


def available_cpus(at_most: int) -> int:
    """The CPUs this process may run on (its affinity; a Slurm job's ``SLURM_CPUS_PER_TASK`` when smaller), at
    least 1 and at most ``at_most``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit():
        cpus = min(cpus, int(slurm))
    return max(1, min(cpus, at_most))


def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a positive number, got {value}")


def _at_least(key: str, value: float, low: float) -> None:
    if not (math.isfinite(value) and value >= low):
        raise ConfigError(f"{key} must be a number >= {low}, got {value}")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two plain dictionaries; ``override`` wins, mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(assignment: str) -> dict[str, Any]:
    """Turn ``section.key=value`` (value in YAML syntax, dots nest further) into a nested dictionary."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value, e.g. --set optim.lr=3e-4")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value, e.g. --set optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return nested(keys, value)


def nested(keys: list[str], value: Any) -> dict[str, Any]:
    """``(["optim", "lr"], 0.001)`` -> ``{"optim": {"lr": 0.001}}``."""
    out: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        out = {key: out}
    return out


def build_config(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a nested dictionary of sections."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {data!r}")
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTION_CLASSES:
            raise ConfigError(f"{where}: unknown section '{name}'; valid sections: {', '.join(_SECTION_CLASSES)}")
        sections[name] = build_dataclass(_SECTION_CLASSES[name], value or {}, name, where)
    return RunConfig(**sections)


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults < the YAML file at ``path`` < ``--set`` assignments."""
    data = read_yaml(path) if path is not None else {}
    for assignment in sets:
        data = merge(data, parse_set(assignment))
    return build_config(data, str(path) if path is not None else "--set")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
