"""Datasets, the step-indexed training sampler and DataLoaders.

The training sampler is a pure function of ``(seed, step)``: resuming at step ``s`` yields exactly the batches an
uninterrupted run would have seen from ``s`` on, and augmentation draws come from a per-sample seed it hands out.

Frames are decoded in the DataLoader's worker processes. An unreadable frame does not stop a run: the dataset hands a
marker instead of a sample, :func:`collate_frames` drops it from the batch, and :class:`FrameLoader` counts the
distinct bad frames and fails with :class:`BadDataError` once they exceed ``max_bad_fraction`` of the split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from bench.data.augment import Augment
from bench.data.frames import REAL, Frame
from bench.data.perturb import perturb
from bench.data.synthesis import synthesize
from bench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (frame index, augmentation seed; -1 = no augmentation)


UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Greyscale modes wider than 8 bits (16-bit PNGs): PIL's ``convert("RGB")`` clips them to white."""


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of a frame; 16-bit greyscale is scaled to 8 bits, not clipped."""
    if img.mode in WIDE_GREY:
        wide = np.asarray(img).astype(np.uint32)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


class BadDataError(RuntimeError):
    """Too many frames of a split are unreadable for its results to mean anything."""


class FrameDataset(Dataset):
    """Decodes frames to normalised tensors; training keys carry the seed of their augmentation draw.

    Args:
        frames: the split's frames.
        input_size: square side the frames are resized to.
        mean: normalisation mean per channel.
        std: normalisation std per channel.
        forgeries: forgery methods in routing order (their index is each item's ``forgery``).
        perturbation: ``(kind, level)`` of :func:`bench.data.perturb.perturb`, applied to the frame as stored, before
            resizing and normalisation.
        augment: the training augmentation, applied after resizing to the items whose key carries a seed.
        synthesis: frames of this forgery method are sources: each item is a fake made from it
            (:mod:`bench.data.synthesis`, drawn from the key's seed, or from the frame's index without one).
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        forgeries: Sequence[str] = (),
        perturbation: tuple[str, int] | None = None,
        augment: Augment | None = None,
        synthesis: str = "none",
    ) -> None:
        self.frames = list(frames)
        self.size = input_size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.forgery_index = {m: i for i, m in enumerate(forgeries)}
        self.perturbation = perturbation
        self.augment = augment
        self.synthesis = synthesis

    def __len__(self) -> int:
        return len(self.frames)

    def pixels(self, frame: Frame) -> np.ndarray:
        """The frame as 8-bit RGB at the input size (perturbed, when the dataset perturbs)."""
        with Image.open(frame.path) as file:
            img = to_rgb(file)
            if self.perturbation is not None:
                img = perturb(img, *self.perturbation)
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
            return np.asarray(img)

    def load(self, index: int, aug_seed: int = -1) -> torch.Tensor:
        """Frame ``index`` as a normalised C x H x W tensor (synthesized first, when its forgery is the synthesis),
        augmented with the draws of ``aug_seed`` when it is >= 0."""
        frame = self.frames[index]
        pixels = self.pixels(frame)
        if self.synthesis != "none" and frame.forgery == self.synthesis:
            pixels = synthesize(pixels, aug_seed if aug_seed >= 0 else index)
        if self.augment and aug_seed >= 0:
            pixels = self.augment(pixels, aug_seed)
        # numpy, not torch: per-image torch ops in the main process (workers=0) stall on OpenMP threads under load
        normalised = (pixels.astype(np.float32) / np.float32(255) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    def __getitem__(self, key: int | Key) -> dict[str, Any]:
        index, aug_seed = (key, -1) if isinstance(key, int) else key
        frame = self.frames[index]
        try:
            image = self.load(index, aug_seed)
        except UNREADABLE as err:
            return {"bad": index, "error": f"{type(err).__name__}: {err}"}
        forgery = -1 if frame.forgery == REAL else self.forgery_index.get(frame.forgery, -1)
        return {"image": image, "label": frame.label, "forgery": forgery, "index": index}


def group_indices(frames: Sequence[Frame], forgeries: Sequence[str], balanced: bool) -> list[np.ndarray]:
    """Index groups a batch draws from: reals then each forgery method's fakes (balanced), or everything (not)."""
    if not balanced:
        return [np.arange(len(frames))]
    groups = [np.array([i for i, f in enumerate(frames) if f.forgery == REAL])]
    groups += [np.array([i for i, f in enumerate(frames) if f.forgery == m]) for m in forgeries]
    empty = [name for name, g in zip([REAL, *forgeries], groups, strict=True) if len(g) == 0]
    if empty:
        raise DataError(f"balanced sampling needs frames of every group; none of: {', '.join(empty)}")
    return groups


def group_shares(batch_size: int, n_groups: int) -> list[int]:
    """Half the batch real, the other half split evenly over the forgery methods (a remainder goes to the reals)."""
    if n_groups == 1:
        return [batch_size]
    fakes = batch_size - batch_size // 2
    per_forgery = fakes // (n_groups - 1)
    if per_forgery == 0:
        raise ConfigError(f"batch size {batch_size} is too small for reals plus {n_groups - 1} forgery methods")
    return [batch_size - per_forgery * (n_groups - 1)] + [per_forgery] * (n_groups - 1)


class StepSampler(Sampler[list[Key]]):
    """Yields batches ``start .. stop-1``; batch ``s`` depends only on ``(seed, s)``.

    Each group is an endless stream of fresh permutations (one per pass over the group); batch ``s`` takes the
    group's share from positions ``s * share .. (s + 1) * share`` of its stream.
    """

    def __init__(self, groups: list[np.ndarray], batch_size: int, seed: int, start: int, stop: int) -> None:
        self.groups = groups
        self.shares = group_shares(batch_size, len(groups))
        self.seed, self.start, self.stop = seed, start, stop
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, group: int, epoch: int) -> np.ndarray:
        key = (group, epoch)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, group, epoch])
            self._perms = {k: v for k, v in self._perms.items() if k[0] != group}
            self._perms[key] = self.groups[group][rng.permutation(len(self.groups[group]))]
        return self._perms[key]

    def batch(self, step: int) -> list[Key]:
        out: list[Key] = []
        for g, share in enumerate(self.shares):
            n = len(self.groups[g])
            for pos in range(step * share, (step + 1) * share):
                out.append((int(self._perm(g, pos // n)[pos % n]), 0))
        batch_size = sum(self.shares)
        return [
            (index, (self.seed * 1_000_003 + step * batch_size + slot) % 2**63) for slot, (index, _) in enumerate(out)
        ]

    def __iter__(self) -> Iterator[list[Key]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate_frames(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items; the unreadable ones go to ``bad`` (frame indices) and ``errors``."""
    good = [item for item in items if "bad" not in item]
    batch = default_collate(good) if good else {}
    batch["bad"] = [item["bad"] for item in items if "bad" in item]
    batch["errors"] = [item["error"] for item in items if "bad" in item]
    return batch


class FrameLoader:
    """A DataLoader whose batches leave out unreadable frames; it counts them and stops the run past a fraction.

    Batches are those of the DataLoader without the frames that failed to decode: ``batch["index"]`` says which frames
    a batch holds (scores align with it, not with the frame list). A batch with no readable frame is skipped when
    evaluating and is an error when training.

    Attributes:
        bad: frame index -> error, for every distinct unreadable frame met so far.
    """

    def __init__(self, loader: DataLoader, max_bad_fraction: float, training: bool) -> None:
        self.loader, self.max_bad_fraction, self.training = loader, max_bad_fraction, training
        self.bad: dict[int, str] = {}

    @property
    def dataset(self) -> FrameDataset:
        dataset = self.loader.dataset
        assert isinstance(dataset, FrameDataset)
        return dataset

    def __len__(self) -> int:
        return len(self.loader)

    def _record(self, indices: list[int], errors: list[str]) -> None:
        frames = self.dataset.frames
        for index, error in zip(indices, errors, strict=True):
            if index not in self.bad:
                self.bad[index] = error
                log.warning("skipped unreadable frame %s (%s)", frames[index].path, error)
        if len(self.bad) > self.max_bad_fraction * len(frames):
            shown = [f"{frames[i].path} ({e})" for i, e in list(self.bad.items())[:3]]
            raise BadDataError(
                f"{len(self.bad)} of {len(frames)} frames are unreadable, more than data.max_bad_fraction="
                f"{self.max_bad_fraction}; e.g. {'; '.join(shown)} (run `bench data check` on the card)"
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            indices, errors = batch.pop("bad"), batch.pop("errors")
            if indices:
                self._record(indices, errors)
            if "image" in batch:
                yield batch
            elif self.training:
                raise BadDataError(f"every frame of a training batch is unreadable: {errors[0]}")


def _loader(dataset: FrameDataset, workers: int, seed: int, pin: bool, **kwargs: Any) -> DataLoader:
    return DataLoader(
        dataset,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
        collate_fn=collate_frames,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched (exact resume)
        **kwargs,
    )


def train_loader(
    dataset: FrameDataset,
    sampler: Sampler[list[Key]],
    workers: int,
    seed: int,
    pin: bool = False,
    max_bad_fraction: float = 0.01,
) -> FrameLoader:
    return FrameLoader(_loader(dataset, workers, seed, pin, batch_sampler=sampler), max_bad_fraction, training=True)


def eval_loader(
    dataset: FrameDataset, batch_size: int, workers: int, pin: bool = False, max_bad_fraction: float = 0.01
) -> FrameLoader:
    loader = _loader(dataset, workers, 0, pin, batch_size=batch_size, shuffle=False)
    return FrameLoader(loader, max_bad_fraction, training=False)
