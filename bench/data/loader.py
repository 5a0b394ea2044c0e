"""Datasets, the step-indexed training sampler and DataLoaders.

The training sampler is a pure function of ``(seed, step)``: resuming at step ``s`` yields exactly the batches an
uninterrupted run would have seen from ``s`` on, and augmentation draws come from a per-sample seed it hands out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data.frames import REAL, Frame

Key = tuple[int, int]  # (frame index, augmentation seed; -1 = no augmentation)


class FrameDataset(Dataset):
    """Decodes frames to normalised tensors; training keys carry a seed for a horizontal flip."""

    def __init__(
        self,
        frames: Sequence[Frame],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        methods: Sequence[str] = (),
    ) -> None:
        self.frames = list(frames)
        self.size = input_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.method_index = {m: i for i, m in enumerate(methods)}

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, frame: Frame) -> torch.Tensor:
        with Image.open(frame.path) as img:
            img = img.convert("RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.uint8)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
        return (tensor - self.mean) / self.std

    def __getitem__(self, key: int | Key) -> dict[str, Any]:
        index, aug_seed = (key, -1) if isinstance(key, int) else key
        frame = self.frames[index]
        image = self.load(frame)
        if aug_seed >= 0 and np.random.default_rng(aug_seed).random() < 0.5:
            image = image.flip(-1)
        method = -1 if frame.method == REAL else self.method_index.get(frame.method, -1)
        return {"image": image, "label": frame.label, "method": method, "index": index}


def group_indices(frames: Sequence[Frame], methods: Sequence[str], balanced: bool) -> list[np.ndarray]:
    """Index groups a batch draws from: reals then each method's fakes (balanced), or everything (not)."""
    if not balanced:
        return [np.arange(len(frames))]
    groups = [np.array([i for i, f in enumerate(frames) if f.method == REAL])]
    groups += [np.array([i for i, f in enumerate(frames) if f.method == m]) for m in methods]
    empty = [name for name, g in zip([REAL, *methods], groups, strict=True) if len(g) == 0]
    if empty:
        raise ValueError(f"balanced sampling needs frames of every group; none of: {', '.join(empty)}")
    return groups


def group_shares(batch_size: int, n_groups: int) -> list[int]:
    """Half the batch real, the other half split evenly over the methods (a remainder goes to the reals)."""
    if n_groups == 1:
        return [batch_size]
    fakes = batch_size - batch_size // 2
    per_method = fakes // (n_groups - 1)
    if per_method == 0:
        raise ValueError(f"batch size {batch_size} is too small for reals plus {n_groups - 1} forgery methods")
    return [batch_size - per_method * (n_groups - 1)] + [per_method] * (n_groups - 1)


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


def _loader(dataset: Dataset, workers: int, seed: int, pin: bool, **kwargs: Any) -> DataLoader:
    return DataLoader(
        dataset,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched (exact resume)
        **kwargs,
    )


def train_loader(dataset: FrameDataset, sampler: StepSampler, workers: int, seed: int, pin: bool = False) -> DataLoader:
    return _loader(dataset, workers, seed, pin, batch_sampler=sampler)


def eval_loader(dataset: FrameDataset, batch_size: int, workers: int, pin: bool = False) -> DataLoader:
    return _loader(dataset, workers, 0, pin, batch_size=batch_size, shuffle=False)
